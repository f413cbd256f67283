"""`plvi serve` as an operator runs it: a process tree configured by PLVI_ variables, fed by dcmtk's storescu.

Every instance sent is in the spool and the database, the study is queued exactly once after it settles and a real
worker records it; a broker outage or a SIGKILL between storing and dispatching delays the study, never loses it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from plvi.models import Instance, Study
from plvi.service import settings_environment
from plvi.settings import Settings
from tests.conftest import analyses, free_port, outbox_rows
from tests.dicom_factory import data_set_bytes, write_mr_study
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.redis import run_redis
from tests.serve_process import Serve, process_gone, wait_for

SERIES, INSTANCES_PER_SERIES = 3, 4


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[Serve]:
    service = Serve(tmp_path, database_url)
    yield service
    service.stop()


@pytest.fixture
def study_files(tmp_path: Path) -> list[Path]:
    return write_mr_study(
        tmp_path / "study", series=SERIES, instances_per_series=INSTANCES_PER_SERIES, rows=32, cols=32
    )


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def send(serve: Serve, study_files: list[Path]) -> None:
    sent = storescu(serve.port, [study_files[0].parent.parent])
    assert sent.returncode == 0, sent.stdout + sent.stderr


def assert_recorded_once(engine: Engine, study_files: list[Path]) -> None:
    study_uid = pydicom.dcmread(study_files[0], stop_before_pixels=True).StudyInstanceUID
    wait_for(lambda: analyses(engine), timeout=60, what="the study recorded by a worker")
    [message] = outbox_rows(engine)
    [analysis] = analyses(engine)
    assert message.key.startswith(f"analyze_study:{study_uid}:")
    wait_for(lambda: outbox_rows(engine)[0].state == "done", timeout=10, what="the outbox row marked done")
    assert analysis.study_instance_uid == study_uid
    assert (analysis.status, analysis.reason) == ("not_measurable", "no_sagittal")  # axial images only
    assert [s["instances"] for s in analysis.result["series"]] == [INSTANCES_PER_SERIES] * SERIES
    with Session(engine) as session:
        assert session.exec(select(Study)).one().state == "settled"


def test_serve_stores_a_multi_series_study_and_queues_it_once_after_it_settles(
    serve: Serve, engine: Engine, study_files: list[Path]
) -> None:
    serve.start()
    wait_for(lambda: "storescu -aec" in serve.output(), what="the banner")
    assert f"storescu -aec PLVI +sd +r +sp '*.dcm' localhost {serve.port} path/to/study/" in serve.output()
    assert echoscu(serve.port).returncode == 0

    send(serve, study_files)

    for path in study_files:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        stored = Path(serve.data_dir, "spool", sent.StudyInstanceUID, sent.SeriesInstanceUID,
                      f"{sent.SOPInstanceUID}.dcm")  # fmt: skip
        assert data_set_bytes(stored) == data_set_bytes(path)  # what travelled, byte for byte
    assert count(engine, Instance) == len(study_files)

    assert_recorded_once(engine, study_files)
    assert serve.output().count("study_settled") == 1
    assert "scheduled_job_failed" not in serve.output()


def test_worker_children_read_exactly_the_settings_of_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    given = Settings(
        _env_file=None,
        data_dir=Path("/srv/plvi"),
        allowed_calling_aes=["MRI1", "PACS"],
        allowed_networks=["10.0.0.0/8"],
        pacs=["PACS@pacs:104"],
        tls_cert=Path("/etc/plvi/plvi.crt"),
        settle_seconds=2.5,
        serve_workers=3,
        export_key="a secret",
    )
    for name in [name for name in os.environ if name.startswith("PLVI_")]:
        monkeypatch.delenv(name)
    for name, value in settings_environment(given).items():
        monkeypatch.setenv(name, value)

    assert Settings(_env_file=None) == given


def test_serve_stops_its_workers_on_sigterm(serve: Serve) -> None:
    serve.start()
    workers = wait_for(serve.children, what="a worker child process")
    assert serve.process is not None
    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(timeout=60) == 0
    assert all(wait_for(lambda pid=pid: process_gone(pid), timeout=30, what="worker exit") for pid in workers)


def test_study_stored_before_a_sigkill_is_dispatched_once_after_restart(
    serve: Serve, engine: Engine, study_files: list[Path]
) -> None:
    serve.start(settle_seconds=3600)
    workers = wait_for(serve.children, what="a worker child process")
    send(serve, study_files)
    assert count(engine, Instance) == len(study_files)
    assert outbox_rows(engine) == []

    assert serve.process is not None
    serve.process.kill()
    serve.process.wait()
    assert all(
        wait_for(lambda pid=pid: process_gone(pid), timeout=30, what="orphan worker exit") for pid in workers
    )

    serve.start(settle_seconds=1)
    assert_recorded_once(engine, study_files)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_analysis_the_embedded_queue_lost_is_published_again_when_serve_restarts(
    serve: Serve, engine: Engine, study_files: list[Path]
) -> None:
    serve.start(serve_workers=0)
    send(serve, study_files)
    wait_for(lambda: [m for m in outbox_rows(engine) if m.state == "published"], what="the study published")
    assert serve.process is not None
    serve.process.kill()
    serve.process.wait()
    # What a worker killed mid-task leaves behind: the message gone from the queue, no analysis.
    for path in serve.data_dir.glob("broker.db*"):
        path.unlink()

    serve.start(serve_workers=1)
    assert_recorded_once(engine, study_files)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_study_sent_while_redis_is_down_is_stored_and_queued_when_redis_returns(
    serve: Serve, engine: Engine, study_files: list[Path], tmp_path: Path
) -> None:
    with run_redis(free_port(), tmp_path / "redis") as redis_server:
        redis_server.stop()
        serve.start(broker_url=redis_server.url, publish_retry_max_seconds=1)

        send(serve, study_files)
        assert count(engine, Instance) == len(study_files)
        wait_for(
            lambda: [m for m in outbox_rows(engine) if m.attempts >= 1], what="a failed publication attempt"
        )
        assert outbox_rows(engine)[0].state == "pending"

        redis_server.start()
        assert_recorded_once(engine, study_files)

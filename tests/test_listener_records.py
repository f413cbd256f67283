"""The database side of receiving: rows upserted once, committed in groups, one bad row failing only itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from listener.records import InstanceRecord, RecordWriter
from plvi.models import Instance, Series, Study


def record(number: int, *, study: str = "1.2.3", sha256: str = "a" * 64) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=f"{study}.1",
        sop_instance_uid=f"{study}.1.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"spool/{study}/{study}.1/{study}.1.{number}.dcm",
        size_bytes=100,
        sha256=sha256,
        calling_ae="MODALITY",
        received_at=datetime.now(timezone.utc),
        patient_id="P" * 80,  # longer than the column: clipped, never a failed instance
        series_description="t2_tse_tra",
    )


@pytest.fixture
def writer(engine: Engine) -> Iterator[RecordWriter]:
    writer = RecordWriter(engine)
    writer.start()
    yield writer
    writer.stop()


def all_rows(engine: Engine, model: type) -> list:  # type: ignore[type-arg]
    with Session(engine) as session:
        return list(session.exec(select(model)))


def test_concurrent_rows_are_committed_together(engine: Engine, writer: RecordWriter) -> None:
    commits = []
    event.listen(engine, "commit", lambda _connection: commits.append(1))
    gate = threading.Barrier(32)

    def handler(number: int) -> None:
        gate.wait()
        writer.record(record(number))

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(handler, range(32)))

    assert len(all_rows(engine, Instance)) == 32
    assert len(commits) < 32, "every row paid for its own commit"
    (study,) = all_rows(engine, Study)
    assert len(study.patient_id) == 64 and len(all_rows(engine, Series)) == 1


def test_a_failing_row_fails_alone(engine: Engine, writer: RecordWriter) -> None:
    poisoned = replace(record(1), size_bytes=None)  # type: ignore[arg-type]  # violates NOT NULL
    outcomes: dict[int, str] = {}
    gate = threading.Barrier(8)

    def handler(item: tuple[int, InstanceRecord]) -> None:
        number, row = item
        gate.wait()
        try:
            writer.record(row)
            outcomes[number] = "committed"
        except Exception:
            outcomes[number] = "failed"

    rows = [poisoned] + [record(number) for number in range(2, 9)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(handler, enumerate(rows)))

    assert outcomes[0] == "failed"
    assert all(outcomes[number] == "committed" for number in range(1, 8))
    assert len(all_rows(engine, Instance)) == 7


def test_resend_with_new_bytes_counts_a_replacement_and_identical_resend_does_not(
    engine: Engine, writer: RecordWriter
) -> None:
    writer.record(record(1))
    writer.record(record(1))
    writer.record(record(1, sha256="b" * 64))
    (row,) = all_rows(engine, Instance)
    assert row.replaced_count == 1 and row.sha256 == "b" * 64


def test_rows_queued_before_stop_are_committed_and_later_ones_refused(engine: Engine) -> None:
    writer = RecordWriter(engine)
    writer.start()
    writer.record(record(1))
    writer.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        writer.record(record(2))
    assert [row.sop_instance_uid for row in all_rows(engine, Instance)] == ["1.2.3.1.1"]


def test_database_outage_reaches_the_handler(engine: Engine, writer: RecordWriter) -> None:
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE instance RENAME TO instance_away"))
    with pytest.raises(Exception, match="instance"):
        writer.record(record(1))
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE instance_away RENAME TO instance"))
    writer.record(record(1))
    assert len(all_rows(engine, Instance)) == 1

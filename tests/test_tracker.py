"""The study tracker: a study is complete after a quiet period; then exactly one analysis is queued for exactly
its instance set, and a later instance re-opens it and queues one that supersedes the first."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from listener.records import InstanceRecord, record_instances
from listener.tracker import instance_set_hash, settle_studies
from plvi.models import Analysis, Study, utcnow
from plvi.outbox import analyze_study_key
from plvi.settings import Settings
from tests.conftest import outbox_rows
from tests.dicom_factory import write_mr_study
from workers.processing import process_study

STUDY = "1.2.826.0.1.3680043.8.498.1"
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def instance_record(
    settings: Settings,
    sop_uid: str,
    *,
    at: datetime,
    study_uid: str = STUDY,
    series: str = "1",
    content: str = "",
) -> InstanceRecord:
    """Spool a small MR image with these UIDs where the listener would put it, and describe it as the listener does.

    `content` goes into ImageComments: the same text gives the same bytes, another text replaced bytes."""
    series_uid = f"{study_uid}.{series}"
    path = f"spool/{study_uid}/{series_uid}/{sop_uid}.dcm"
    dataset = _template_image(settings.data_dir.parent / "factory")
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = int(series)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
    dataset.InstanceNumber = int(sop_uid.rsplit(".", 1)[1])
    dataset.ImagePositionPatient = [-5.6, -5.6, 4.0 * dataset.InstanceNumber]
    dataset.ImageComments = content
    (settings.data_dir / path).parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(settings.data_dir / path, enforce_file_format=True)
    stored = (settings.data_dir / path).read_bytes()
    return InstanceRecord(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=dataset.SOPClassUID,
        transfer_syntax_uid=dataset.file_meta.TransferSyntaxUID,
        path=path,
        size_bytes=len(stored),
        sha256=hashlib.sha256(stored).hexdigest(),
        calling_ae="STORESCU",
        received_at=at,
        modality="MR",
        series_number=int(series),
    )


def _template_image(folder: Path) -> pydicom.Dataset:
    """One 16x16 axial T2 image from the test factory (no sagittal series: a study of these is not measurable)."""
    path = folder / "series01" / "0001.dcm"
    if not path.exists():
        write_mr_study(folder, series=1, instances_per_series=1, rows=16, cols=16)
    return pydicom.dcmread(path)


def receive(
    settings: Settings,
    engine: Engine,
    sop_uid: str,
    *,
    at: datetime,
    study_uid: str = STUDY,
    series: str = "1",
    content: str = "",
) -> InstanceRecord:
    """Spool and record one instance exactly as the listener does."""
    record = instance_record(settings, sop_uid, at=at, study_uid=study_uid, series=series, content=content)
    with engine.begin() as connection:
        record_instances(connection, [record])
    return record


def study(engine: Engine, study_uid: str = STUDY) -> Study:
    with Session(engine) as session:
        return session.exec(select(Study).where(Study.study_instance_uid == study_uid)).one()


def test_instance_set_hash_names_the_set_not_the_order_it_arrived_in() -> None:
    pairs = [("1.2.3", "aa"), ("1.2.4", "bb"), ("1.2.10", "cc")]
    assert instance_set_hash(pairs) == instance_set_hash(list(reversed(pairs)))
    assert instance_set_hash(pairs) != instance_set_hash([("1.2.3", "aa"), ("1.2.4", "bX"), ("1.2.10", "cc")])
    assert instance_set_hash(pairs) != instance_set_hash(pairs[:2])
    expected = hashlib.sha256(b"1.2.10\0cc\n1.2.3\0aa\n1.2.4\0bb\n").hexdigest()
    assert instance_set_hash(pairs) == expected


def test_study_settles_only_after_the_quiet_period(settings: Settings, engine: Engine) -> None:
    first = receive(settings, engine, f"{STUDY}.1.1", at=T0)
    second = receive(settings, engine, f"{STUDY}.2.1", at=T0 + timedelta(seconds=0.5), series="2")

    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=1.2)) == []  # 0.7 s since the last one
    assert study(engine).state == "receiving"
    assert outbox_rows(engine) == []

    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=1.6)) == [STUDY]
    settled = study(engine)
    assert settled.state == "settled"
    assert settled.instance_set_hash == instance_set_hash(
        [(f"{STUDY}.1.1", hashlib.sha256((settings.data_dir / first.path).read_bytes()).hexdigest()),
         (f"{STUDY}.2.1", hashlib.sha256((settings.data_dir / second.path).read_bytes()).hexdigest())]
    )  # fmt: skip


def test_settled_study_has_exactly_one_outbox_row_however_often_the_tracker_runs(
    settings: Settings, engine: Engine
) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=T0)
    later = T0 + timedelta(seconds=5)
    assert settle_studies(settings, engine, now=later) == [STUDY]
    assert settle_studies(settings, engine, now=later) == []
    assert settle_studies(settings, engine, now=later + timedelta(minutes=5)) == []

    [message] = outbox_rows(engine)
    set_hash = study(engine).instance_set_hash
    assert message.kind == "analyze_study"
    assert message.key == f"analyze_study:{STUDY}:{set_hash}"
    assert message.payload == {"study_uid": STUDY, "instance_set_hash": set_hash}
    assert message.state == "pending"


def test_late_instance_reopens_the_study_and_queues_an_analysis_that_supersedes_the_first(
    settings: Settings, engine: Engine
) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=T0)
    settle_studies(settings, engine, now=T0 + timedelta(seconds=2))
    first_hash = study(engine).instance_set_hash
    first = process_study(settings, engine, STUDY, first_hash)
    assert (first.status, first.reason) == ("not_measurable", "single_slice")  # one axial image, no sagittal

    receive(settings, engine, f"{STUDY}.3.1", at=T0 + timedelta(seconds=30), series="3")
    assert study(engine).state == "receiving"
    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=30.5)) == []
    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=32)) == [STUDY]

    second_hash = study(engine).instance_set_hash
    assert second_hash != first_hash
    assert [m.key for m in outbox_rows(engine)] == [
        analyze_study_key(STUDY, first_hash),
        analyze_study_key(STUDY, second_hash),
    ]
    process_study(settings, engine, STUDY, second_hash)
    with Session(engine) as session:
        analyses = {a.instance_set_hash: a for a in session.exec(select(Analysis)).all()}
    assert analyses[first_hash].superseded is True
    assert analyses[second_hash].superseded is False
    assert [s["instances"] for s in analyses[second_hash].result["series"]] == [1, 1]


def test_an_older_analysis_not_yet_handed_to_the_broker_is_superseded_instead_of_sent(
    settings: Settings, engine: Engine
) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=T0)
    settle_studies(settings, engine, now=T0 + timedelta(seconds=2))
    receive(settings, engine, f"{STUDY}.1.2", at=T0 + timedelta(seconds=3))
    settle_studies(settings, engine, now=T0 + timedelta(seconds=5))

    assert [m.state for m in outbox_rows(engine)] == ["superseded", "pending"]


def test_resending_identical_instances_queues_nothing_new(settings: Settings, engine: Engine) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=T0)
    settle_studies(settings, engine, now=T0 + timedelta(seconds=2))
    first_hash = study(engine).instance_set_hash
    receive(settings, engine, f"{STUDY}.1.1", at=T0 + timedelta(seconds=10))  # the same bytes again

    settle_studies(settings, engine, now=T0 + timedelta(seconds=20))
    assert study(engine).state == "settled"
    assert study(engine).instance_set_hash == first_hash
    assert len(outbox_rows(engine)) == 1


def test_replaced_instance_bytes_queue_a_new_analysis(settings: Settings, engine: Engine) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=T0, content="first")
    settle_studies(settings, engine, now=T0 + timedelta(seconds=2))
    receive(settings, engine, f"{STUDY}.1.1", at=T0 + timedelta(seconds=10), content="corrected")

    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=20)) == [STUDY]
    assert len({m.key for m in outbox_rows(engine)}) == 2


def test_processing_the_same_instance_set_twice_stores_one_analysis(
    settings: Settings, engine: Engine
) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=T0)
    receive(settings, engine, f"{STUDY}.2.1", at=T0, series="2")
    receive(settings, engine, f"{STUDY}.2.2", at=T0, series="2")
    settle_studies(settings, engine, now=T0 + timedelta(seconds=2))
    set_hash = study(engine).instance_set_hash

    first = process_study(settings, engine, STUDY, set_hash)
    second = process_study(settings, engine, STUDY, set_hash)

    assert first.id == second.id
    # Axial T2 images only: no sagittal series to find L4 on, so no number, and the reason says what to send.
    assert (first.status, first.reason, first.plvi) == ("not_measurable", "no_sagittal", None)
    assert [(s["series_number"], s["instances"]) for s in first.result["series"]] == [(1, 1), (2, 2)]
    with Session(engine) as session:
        assert len(session.exec(select(Analysis)).all()) == 1
    assert [m.state for m in outbox_rows(engine)] == ["done"]


def test_each_study_settles_on_its_own_clock(settings: Settings, engine: Engine) -> None:
    other = "1.2.826.0.1.3680043.8.498.2"
    receive(settings, engine, f"{STUDY}.1.1", at=T0)
    receive(settings, engine, f"{other}.1.1", at=T0 + timedelta(seconds=5), study_uid=other)

    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=3)) == [STUDY]
    assert settle_studies(settings, engine, now=T0 + timedelta(seconds=7)) == [other]
    assert len(outbox_rows(engine)) == 2


def test_instance_recorded_while_the_tracker_settles_keeps_the_study_open(
    settings: Settings, engine: Engine
) -> None:
    receive(settings, engine, f"{STUDY}.1.1", at=utcnow() - timedelta(minutes=5))
    settled: list[list[str]] = []
    with engine.connect() as listener_connection:
        # The listener's transaction for a second instance: rows written, not yet committed, locks held.
        transaction = listener_connection.begin()
        record_instances(listener_connection, [instance_record(settings, f"{STUDY}.1.2", at=utcnow())])
        tracker = threading.Thread(target=lambda: settled.append(settle_studies(settings, engine)))
        tracker.start()
        tracker.join(timeout=0.5)  # the tracker now waits for the listener's lock
        transaction.commit()
    tracker.join(timeout=30)

    assert settled == [[]]
    assert study(engine).state == "receiving"
    assert outbox_rows(engine) == []

"""The listener stores what real dcmtk peers send: byte for byte, durably, once, and records it in the database."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import text
from sqlmodel import Session, select

from listener.scp import Listener, start_listener
from listener.spool import sha256_of
from plvi.db import make_engine
from plvi.models import Instance, Series, Study
from plvi.settings import Settings
from tests.dicom_factory import data_set_bytes, write_mr_study
from tests.peers.dcmtk import echoscu, storescu
from tests.peers.orthanc import run_orthanc

# storescu proposes only uncompressed syntaxes unless told; -R limits the proposal to what the files need.
PROPOSE = {
    ExplicitVRLittleEndian: [],
    ImplicitVRLittleEndian: ["-xi"],
    DeflatedExplicitVRLittleEndian: ["-xd"],
    RLELossless: ["-xr"],
    JPEG2000Lossless: ["-xv"],
    JPEG2000: ["-xw"],
    JPEGBaseline8Bit: ["-xy"],
}


@contextmanager
def running_listener(settings: Settings, database_url: str) -> Iterator[Listener]:
    engine = make_engine(database_url)
    listener = start_listener(settings, engine)
    try:
        yield listener
    finally:
        listener.shutdown()
        engine.dispose()


def spooled_path(settings: Settings, sent: Path) -> Path:
    header = dcmread(sent, stop_before_pixels=True)
    return settings.spool_dir / header.StudyInstanceUID / header.SeriesInstanceUID / f"{header.SOPInstanceUID}.dcm"


def rows(database_url: str, model: type) -> list:  # type: ignore[type-arg]
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(model)))
    finally:
        engine.dispose()


def assert_sent(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_echoscu_is_answered(settings: Settings, sqlite_url: str) -> None:
    with running_listener(settings, sqlite_url):
        assert_sent(echoscu(settings.port))


def test_multi_series_study_is_spooled_byte_identical_and_recorded(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    sent = write_mr_study(tmp_path / "study", series=3, instances_per_series=4, rows=96, cols=80)
    with running_listener(settings, database_url):
        assert_sent(storescu(settings.port, [tmp_path / "study"]))

    for path in sent:
        stored = spooled_path(settings, path)
        assert data_set_bytes(stored) == data_set_bytes(path), f"{stored} differs from what was sent"
    instances = {row.sop_instance_uid: row for row in rows(database_url, Instance)}
    assert len(instances) == len(sent)
    for path in sent:
        row = instances[spooled_path(settings, path).stem]
        on_disk = (settings.data_dir / row.path).read_bytes()
        assert row.sha256 == sha256_of([on_disk]) and row.size_bytes == len(on_disk)
        assert row.calling_ae == "STORESCU" and row.replaced_count == 0
    (study,) = rows(database_url, Study)
    assert study.state == "receiving" and study.patient_id.startswith("LISTENER-")
    assert len(rows(database_url, Series)) == 3
    assert not list(settings.spool_dir.joinpath(".incoming").iterdir()), "temporary files left behind"


def test_traffic_is_logged_once_per_association_not_per_instance(
    settings: Settings, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_mr_study(tmp_path / "study", series=1, instances_per_series=3)
    caplog.set_level("INFO", logger="listener.scp")
    with running_listener(settings, sqlite_url):
        assert_sent(storescu(settings.port, [tmp_path / "study"]))

    (ended,) = [line for line in caplog.messages if line.startswith("association_released")]
    assert "calling_ae=STORESCU" in ended and "instances=3" in ended and "refused=0 failed=0" in ended
    assert not any(line.startswith("instance_stored") for line in caplog.messages), "a line per instance at INFO"


@pytest.mark.parametrize("transfer_syntax", list(PROPOSE), ids=lambda uid: uid.keyword)
def test_every_accepted_transfer_syntax_is_stored_as_received(
    settings: Settings, sqlite_url: str, tmp_path: Path, transfer_syntax: str
) -> None:
    sent = write_mr_study(
        tmp_path / "study", series=1, instances_per_series=2, rows=32, cols=32, transfer_syntax=transfer_syntax
    )
    with running_listener(settings, sqlite_url):
        assert_sent(storescu(settings.port, sent, extra_args=["-R", *PROPOSE[transfer_syntax]]))

    for path in sent:
        stored = spooled_path(settings, path)
        assert data_set_bytes(stored) == data_set_bytes(path)
        assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    assert {row.transfer_syntax_uid for row in rows(sqlite_url, Instance)} == {transfer_syntax}


def test_identical_duplicate_is_a_no_op(settings: Settings, database_url: str, tmp_path: Path) -> None:
    sent = write_mr_study(tmp_path / "study", series=1, instances_per_series=3)
    with running_listener(settings, database_url):
        assert_sent(storescu(settings.port, sent))
        first = {row.sop_instance_uid: row for row in rows(database_url, Instance)}
        (study_before,) = rows(database_url, Study)
        modified_before = {path: spooled_path(settings, path).stat().st_mtime_ns for path in sent}
        assert_sent(storescu(settings.port, sent))

    again = {row.sop_instance_uid: row for row in rows(database_url, Instance)}
    assert again == first, "an identical resend changed instance rows"
    assert [study.last_received_at for study in rows(database_url, Study)] == [study_before.last_received_at]
    assert {path: spooled_path(settings, path).stat().st_mtime_ns for path in sent} == modified_before
    assert len(list(settings.spool_dir.rglob("*.dcm"))) == len(sent)


def test_changed_duplicate_replaces_the_file_and_is_counted(
    settings: Settings, sqlite_url: str, tmp_path: Path
) -> None:
    (sent,) = write_mr_study(tmp_path / "study", series=1, instances_per_series=1)
    with running_listener(settings, sqlite_url):
        assert_sent(storescu(settings.port, [sent]))
        (before,) = rows(sqlite_url, Instance)
        corrected = dcmread(sent)
        corrected.SeriesDescription = "t2_tse_tra corrected"
        corrected.save_as(sent)
        assert_sent(storescu(settings.port, [sent]))

    (after,) = rows(sqlite_url, Instance)
    stored = spooled_path(settings, sent)
    assert data_set_bytes(stored) == data_set_bytes(sent)
    assert after.replaced_count == 1 and after.sha256 != before.sha256
    assert after.sha256 == sha256_of([stored.read_bytes()])
    assert len(list(settings.spool_dir.rglob("*.dcm"))) == 1


def test_sixteen_concurrent_associations_all_succeed(settings: Settings, sqlite_url: str, tmp_path: Path) -> None:
    studies = [
        write_mr_study(tmp_path / f"study{seed}", series=1, instances_per_series=3, seed=seed) for seed in range(16)
    ]
    with running_listener(settings, sqlite_url):
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(
                pool.map(lambda item: storescu(settings.port, item[1], calling_ae=f"MODALITY{item[0]}"), enumerate(studies))
            )
    for result in results:
        assert_sent(result)
    assert len(rows(sqlite_url, Instance)) == 16 * 3
    assert len(rows(sqlite_url, Study)) == 16


def test_database_failure_answers_out_of_resources_and_recovers(
    settings: Settings, sqlite_url: str, tmp_path: Path
) -> None:
    first, second = write_mr_study(tmp_path / "study", series=1, instances_per_series=2)
    engine = make_engine(sqlite_url)
    with running_listener(settings, sqlite_url):
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE instance RENAME TO instance_away"))
        refused = storescu(settings.port, [first], extra_args=["-v"])
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE instance_away RENAME TO instance"))
        assert_sent(storescu(settings.port, [second]))
    engine.dispose()

    assert refused.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in refused.stderr  # dcmtk's words for 0xA700
    assert [row.sop_instance_uid for row in rows(sqlite_url, Instance)] == [spooled_path(settings, second).stem]
    assert not spooled_path(settings, first).exists(), "a file without its row stayed in the spool"


def test_accepted_sockets_have_nagle_disabled(settings: Settings, sqlite_url: str) -> None:
    """Without TCP_NODELAY each C-STORE response waits for the peer's delayed ACK (~40 ms): about 22 instances/s."""
    scu = AE(ae_title="HOLDER")
    scu.add_requested_context(Verification)
    with running_listener(settings, sqlite_url) as listener:
        association = scu.associate("127.0.0.1", settings.port, ae_title="PLVI")
        try:
            assert association.is_established
            (accepted,) = listener.ae.active_associations
            sock = accepted.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            association.release()


def test_a_pacs_forwarding_a_study_is_received_whole(settings: Settings, sqlite_url: str, tmp_path: Path) -> None:
    """Orthanc plays the PACS that autoroutes a study to us; only its AE title is allowed."""
    settings = settings.model_copy(update={"allowed_calling_aes": ["ORTHANC"]})
    sent = write_mr_study(tmp_path / "study", series=2, instances_per_series=3, rows=48, cols=48)
    with running_listener(settings, sqlite_url), run_orthanc(
        tmp_path / "orthanc", modalities={"PLVI": ("PLVI", "127.0.0.1", settings.port)}
    ) as pacs:
        for path in sent:
            pacs.post("/instances", path.read_bytes())
        (study_id,) = pacs.get("/studies")
        pacs.post("/modalities/PLVI/store", {"Resources": [study_id], "Synchronous": True})

    for path in sent:
        assert data_set_bytes(spooled_path(settings, path)) == data_set_bytes(path)
    assert {row.calling_ae for row in rows(sqlite_url, Instance)} == {"ORTHANC"}
    assert len(rows(sqlite_url, Instance)) == len(sent)


@pytest.mark.parametrize(
    "sop_class, modality",
    [(MRImageStorage, "MR"), (EnhancedMRImageStorage, "MR"), (CTImageStorage, "CT"), (EnhancedCTImageStorage, "CT")],
    ids=["MR", "EnhancedMR", "CT", "EnhancedCT"],
)
def test_each_accepted_sop_class_is_stored(
    settings: Settings, sqlite_url: str, tmp_path: Path, sop_class: str, modality: str
) -> None:
    (path,) = write_mr_study(tmp_path / "study", series=1, instances_per_series=1)
    dataset = dcmread(path)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.Modality = modality
    dataset.save_as(path)
    with running_listener(settings, sqlite_url):
        assert_sent(storescu(settings.port, [path], extra_args=["-R"]))
    assert data_set_bytes(spooled_path(settings, path)) == data_set_bytes(path)
    assert [(row.sop_class_uid, row.calling_ae) for row in rows(sqlite_url, Instance)] == [(sop_class, "STORESCU")]

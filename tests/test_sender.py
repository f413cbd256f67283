"""Store-and-forward to PACS with real peers: Orthanc as the PACS, and a pynetdicom SCP of our own that answers
with a chosen status. Nothing is sent twice, nothing is lost during an outage, and a failure is never 'sent'."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pynetdicom import AE, evt
from sqlmodel import select

from plvi.db import make_engine, session_scope
from plvi.models import OutboxMessage
from plvi.settings import Settings
from reports.objects import ResultObjects, build_result_objects, write_result_objects
from reports.sender import (
    STORE,
    Destination,
    deliver_pending,
    enqueue_delivery,
    open_association,
    queue_result_objects,
)
from tests.conftest import free_port
from tests.peers.orthanc import run_orthanc
from tests.plvi_result_case import CASE, INSTANCE, real_slice_case

RESULT_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
)


@pytest.fixture
def sender_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "var",
        database_url=database_url,
        pacs_max_attempts=3,
        pacs_retry_base_seconds=0.3,
        pacs_retry_max_seconds=1.0,
        pacs_timeout_seconds=5.0,
    )


@pytest.fixture(scope="module")
def case():
    return real_slice_case()


def result_objects(case, instance_set_hash: str = "e" * 64) -> ResultObjects:
    source, masks, result = case
    return build_result_objects(
        result, masks, source, algorithm_version="0.1.0", instance_set_hash=instance_set_hash,
        analysed_at=datetime(2026, 12, 1, 18, 0, 0),
    )


def result_files(case, settings: Settings, instance_set_hash: str = "e" * 64) -> list[Path]:
    return write_result_objects(result_objects(case, instance_set_hash), settings.results_dir)


def store_rows(engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(session.exec(select(OutboxMessage).where(OutboxMessage.kind == STORE)).all())


def deliver_until_settled(settings: Settings, engine, timeout: float = 20.0) -> int:
    """Call the sender as the scheduler would until no row is pending; returns objects sent."""
    sent = 0
    deadline = time.monotonic() + timeout
    while any(row.state == "pending" for row in store_rows(engine)):
        assert time.monotonic() < deadline, "deliveries still pending"
        sent += deliver_pending(settings, engine)
        time.sleep(0.05)
    return sent


@contextmanager
def answering_scp(status: int) -> Iterator[tuple[str, list[str]]]:
    """A real pynetdicom Storage SCP on a free loopback port that answers every C-STORE with `status`;
    yields its destination and the SOP Instance UIDs it was asked to store."""
    received: list[str] = []

    def handle_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return status

    ae = AE(ae_title="STATUSSCP")
    for sop_class in RESULT_SOP_CLASSES:
        ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        yield f"STATUSSCP@127.0.0.1:{port}", received
    finally:
        server.shutdown()


def orthanc_destination(orthanc) -> str:
    return f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"


def orthanc_sop_uids(orthanc) -> list[str]:
    return [orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")]


def test_results_arrive_once_in_the_source_study_with_their_numbers(case, sender_settings, engine, tmp_path):
    source, _, result = case
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        orthanc.post("/instances", (CASE / "dicom" / f"IM-0001-{INSTANCE:04d}.dcm").read_bytes())
        settings = sender_settings.model_copy(update={"pacs": [orthanc_destination(orthanc)]})
        with session_scope(engine) as session:
            paths = queue_result_objects(session, settings, result_objects(case))
        assert [p.parent for p in paths] == [settings.results_dir / source.StudyInstanceUID] * 3
        assert deliver_pending(sender_settings, engine) == 3
        assert deliver_pending(sender_settings, engine) == 0

        (study,) = orthanc.get("/studies")
        assert orthanc.get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
        stored = orthanc_sop_uids(orthanc)
        assert sorted(stored) == sorted([source.SOPInstanceUID] + [p.stem for p in paths])
        assert len(orthanc.get(f"/studies/{study}/series")) == 4
        sr_id = orthanc.post("/tools/lookup", pydicom.dcmread(paths[0]).SOPInstanceUID.encode())[0]["ID"]
        sr_file = tmp_path / "sr-from-orthanc.dcm"
        sr_file.write_bytes(orthanc.get_bytes(f"/instances/{sr_id}/file"))
    (outcome,) = hd.sr.srread(sr_file).content.get_image_measurement_groups()
    numbers = {m.name.value: m.value for m in outcome.get_measurements()}
    assert numbers["PLVI"] == result["plvi"]
    areas = sorted(
        m.value for g in hd.sr.srread(sr_file).content.get_planar_roi_measurement_groups() for m in g.get_measurements()
    )
    assert areas == sorted([result["psoas_left_mm2"], result["psoas_right_mm2"], result["vertebra_mm2"]])
    assert {row.state for row in store_rows(engine)} == {"done"}


def test_pacs_outage_loses_nothing_and_each_object_arrives_once_after(case, sender_settings, engine, tmp_path):
    paths = result_files(case, sender_settings)
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        orthanc.stop()
        with session_scope(engine) as session:
            enqueue_delivery(session, paths, [orthanc_destination(orthanc)])
        assert deliver_pending(sender_settings, engine) == 0
        rows = store_rows(engine)
        assert [(row.state, row.attempts) for row in rows] == [("pending", 1)] * 3
        assert all(row.last_error for row in rows)
        assert deliver_pending(sender_settings, engine) == 0  # backing off: no second attempt yet
        assert [row.attempts for row in store_rows(engine)] == [1, 1, 1]

        orthanc.start()
        restarted = make_engine(sender_settings.effective_database_url)  # the service restarted meanwhile
        try:
            assert deliver_until_settled(sender_settings, restarted) == 3
        finally:
            restarted.dispose()
        assert sorted(orthanc_sop_uids(orthanc)) == sorted(p.stem for p in paths)
        assert deliver_pending(sender_settings, engine) == 0
        assert len(orthanc.get("/instances")) == 3
    assert [(row.state, row.attempts) for row in store_rows(engine)] == [("done", 2)] * 3


def test_a_failure_status_is_retried_then_failed_never_sent(case, sender_settings, engine, tmp_path, caplog):
    paths = result_files(case, sender_settings)
    caplog.set_level(logging.INFO, logger="reports.sender")
    with answering_scp(0xA700) as (failing, received), run_orthanc(tmp_path / "orthanc") as orthanc:
        with session_scope(engine) as session:
            enqueue_delivery(session, paths, [failing, orthanc_destination(orthanc)])
        sent = deliver_until_settled(sender_settings, engine)
        assert len(orthanc.get("/instances")) == 3
    assert sent == 3  # Orthanc's three, none of the failing destination's
    assert sorted(received) == sorted([p.stem for p in paths] * 3)  # three attempts each
    rows = {(row.payload["destination"], row.payload["sop_instance_uid"]): row for row in store_rows(engine)}
    for path in paths:
        failed = rows[(failing, path.stem)]
        assert (failed.state, failed.attempts, failed.published_at) == ("failed", 3, None)
        assert "failure status 0xA700" in failed.last_error
    failures = [r for r in caplog.records if r.getMessage().startswith("result_send_failed")]
    assert len(failures) == 3 and all(r.levelno == logging.ERROR for r in failures)
    sent_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("result_sent")]
    assert not any(failing in line for line in sent_lines)


def test_a_warning_status_counts_as_stored_and_is_logged(case, sender_settings, engine, caplog):
    paths = result_files(case, sender_settings)
    caplog.set_level(logging.INFO, logger="reports.sender")
    with answering_scp(0xB000) as (warning_peer, received):
        with session_scope(engine) as session:
            enqueue_delivery(session, paths, [warning_peer])
        assert deliver_pending(sender_settings, engine) == 3
    assert len(received) == 3
    assert {row.state for row in store_rows(engine)} == {"done"}
    assert sum("result_stored_with_warning" in r.getMessage() for r in caplog.records) == 3


def test_enqueueing_again_adds_nothing_and_a_reanalysis_supersedes_what_is_still_pending(case, sender_settings, engine):
    first = result_files(case, sender_settings)
    destinations = ["PACS@127.0.0.1:104", "ARCHIVE@127.0.0.2:11112"]
    with session_scope(engine) as session:
        assert enqueue_delivery(session, first, destinations) == 6
    with session_scope(engine) as session:
        assert enqueue_delivery(session, first, destinations) == 0
    second = result_files(case, sender_settings, instance_set_hash="f" * 64)
    with session_scope(engine) as session:
        assert enqueue_delivery(session, second, destinations) == 6
    states = {}
    for row in store_rows(engine):
        states.setdefault(row.state, set()).add(row.payload["sop_instance_uid"])
    assert states == {"superseded": {p.stem for p in first}, "pending": {p.stem for p in second}}


def test_our_scu_socket_has_nagle_disabled(sender_settings):
    with answering_scp(0x0000) as (destination, _):
        assoc = open_association(Destination.parse(destination), set(RESULT_SOP_CLASSES), sender_settings)
        try:
            assert assoc.is_established
            sock = assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            assoc.release()


@pytest.mark.parametrize("text", ["PACS@host", "PACS:104", "@host:104", "THIS_AE_TITLE_IS_TOO_LONG@h:104", "A@h:0x68"])
def test_a_malformed_destination_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="must be AE@host:port"):
        Destination.parse(text)


def test_a_destination_parses_into_ae_host_and_port():
    assert Destination.parse(" PACS@10.0.0.5:104 ") == Destination("PACS", "10.0.0.5", 104)
    assert str(Destination.parse("PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"


def test_a_destination_that_refuses_the_sop_class_is_a_failure(case, sender_settings, engine, caplog):
    """Our SCP supports only the SR class here: the SEG and key image cannot even be offered (and once they are
    alone, the SCP accepts no context at all, so later attempts get no association)."""
    paths = result_files(case, sender_settings)
    caplog.set_level(logging.INFO, logger="reports.sender")
    ae = AE(ae_title="SRONLY")
    ae.add_supported_context(RESULT_SOP_CLASSES[0], ["1.2.840.10008.1.2.1"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0)])
    try:
        with session_scope(engine) as session:
            enqueue_delivery(session, paths, [f"SRONLY@127.0.0.1:{port}"])
        assert deliver_until_settled(sender_settings, engine) == 1
    finally:
        server.shutdown()
    states = {row.payload["sop_class_uid"]: row.state for row in store_rows(engine)}
    assert states == {RESULT_SOP_CLASSES[0]: "done", RESULT_SOP_CLASSES[1]: "failed", RESULT_SOP_CLASSES[2]: "failed"}
    retries = " ".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("result_send_retry"))
    for sop_class in RESULT_SOP_CLASSES[1:]:
        assert f"did not accept SOP class {sop_class}" in retries

"""Worklist flags to the RIS: ORU^R01 over MLLP to a real MLLP listener (python-hl7's asyncio server)."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import hl7
import pytest
from hl7.mllp import start_hl7_server
from sqlmodel import select

from plvi.db import session_scope
from plvi.models import Analysis, Hl7Message, Study, utcnow
from plvi.settings import Settings
from reports.hl7 import deliver_hl7, sync_worklist_flags
from reports.web.worklist import record_review
from tests.conftest import free_port
from tests.seed_results import seed_study


class MllpRis:
    """A RIS interface engine stand-in: an MLLP listener on loopback that parses every message it receives with
    python-hl7 and answers with an ACK of the configured code ("silent": no answer at all)."""

    def __init__(self, port: int) -> None:
        self.port, self.ack_code = port, "AA"
        self.received: list[hl7.Message] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader, writer) -> None:  # type: ignore[no-untyped-def]
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                self.received.append(message)
                if self.ack_code != "silent":
                    writer.writemessage(message.create_ack(ack_code=self.ack_code))
                    await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def start(self) -> None:
        async def _start() -> asyncio.AbstractServer:
            return await start_hl7_server(self._handle, "127.0.0.1", self.port, encoding="utf-8")

        self._server = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(10)

    def stop(self) -> None:
        async def _stop() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def ris():  # type: ignore[no-untyped-def]
    peer = MllpRis(free_port())
    peer.start()
    yield peer
    if peer._server is not None and peer._server.is_serving():
        peer.stop()
    peer.close()


@pytest.fixture
def hl7_settings(settings: Settings, database_url: str, ris: MllpRis) -> Settings:
    return settings.model_copy(update={"database_url": database_url, "hl7_host": "127.0.0.1", "hl7_port": ris.port,
                                       "hl7_timeout_seconds": 2.0, "hl7_receiving_facility": "RADIOLOGY"})


def _obx(message: hl7.Message) -> dict[str, hl7.Segment]:
    return {str(segment[3][0][0]): segment for segment in message.segments("OBX")}


def _messages(engine) -> list[Hl7Message]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return list(session.exec(select(Hl7Message).order_by(Hl7Message.id)).all())


def test_flagged_study_reaches_the_ris_as_a_well_formed_oru_and_the_ack_is_booked(hl7_settings, engine, ris):
    study = seed_study(hl7_settings, engine, index=1, psoas_radius=9)
    assert study.plvi < hl7_settings.cutoff

    assert sync_worklist_flags(hl7_settings, engine) == 1
    assert deliver_hl7(hl7_settings, engine) == 1

    [message] = ris.received
    msh = message.segment("MSH")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1" and str(msh[6]) == "RADIOLOGY"
    assert str(message.segment("PID")[3][0][0]) == study.patient_id
    obr = message.segment("OBR")
    assert str(obr[3][0][0]) == study.accession and str(obr[25]) == "F"
    obx = _obx(message)
    assert float(str(obx["PLVI"][5])) == pytest.approx(study.plvi, abs=1e-4)
    assert str(obx["PLVI"][8]) == "L" and str(obx["PLVI"][7]) == f">={hl7_settings.cutoff}"
    assert str(obx["LOWPSOAS"][5][0][0]) == "Y" and str(obx["LOWPSOAS"][8]) == "A"
    assert str(obx["STATUS"][5]) == "ok"
    assert {str(segment[11]) for segment in obx.values()} == {"F"}
    assert "Testpatient" not in str(message)  # the RIS matches on accession and patient ID; no name is sent
    [row] = _messages(engine)
    assert row.state == "sent" and row.ack_code == "AA" and row.control_id == str(msh[10])

    assert sync_worklist_flags(hl7_settings, engine) == 0  # nothing new to say
    assert deliver_hl7(hl7_settings, engine) == 0 and len(ris.received) == 1


def test_review_and_reanalysis_send_corrections_for_the_same_accession(hl7_settings, engine, ris):
    study = seed_study(hl7_settings, engine, index=2, psoas_radius=12, status="needs_review")
    sync_worklist_flags(hl7_settings, engine)
    deliver_hl7(hl7_settings, engine)
    assert str(_obx(ris.received[0])["PLVI"][8]) == "N"
    assert str(ris.received[0].segment("OBR")[25]) == "P"  # a number awaiting review is preliminary

    with session_scope(engine) as session:
        record_review(session, study.study_uid, "confirmed", "", "reader1")
    assert sync_worklist_flags(hl7_settings, engine) == 1 and deliver_hl7(hl7_settings, engine) == 1
    confirmed = ris.received[1]
    assert str(confirmed.segment("OBR")[25]) == "C" and str(_obx(confirmed)["PLVI"][11]) == "C"
    assert "confirmed by reader1" in str(confirmed.segment("NTE"))

    with session_scope(engine) as session:
        record_review(session, study.study_uid, "rejected", "psoas outline includes the aorta", "reader2")
    sync_worklist_flags(hl7_settings, engine)
    deliver_hl7(hl7_settings, engine)
    rejected = ris.received[2]
    assert str(_obx(rejected)["PLVI"][11]) == "W"
    assert "psoas outline includes the aorta" in str(rejected.segment("NTE"))

    with session_scope(engine) as session:  # new instances arrived: a new analysis supersedes the old one
        old = session.get(Analysis, study.analysis_id)
        old.superseded = True
        session.add(old)
        result = dict(old.result, plvi=0.61, low_psoas_mass=True, status="ok", reason=None)
        session.add(Analysis(study_instance_uid=study.study_uid, instance_set_hash="b" * 64, status="ok",
                             plvi=0.61, low_psoas_mass=True, result=result, algorithm_version="0.1.0"))
    sync_worklist_flags(hl7_settings, engine)
    deliver_hl7(hl7_settings, engine)
    reanalysed = _obx(ris.received[3])
    assert str(reanalysed["PLVI"][5]) == "0.6100" and str(reanalysed["PLVI"][8]) == "L"
    assert str(reanalysed["PLVI"][11]) == "C" and str(reanalysed["LOWPSOAS"][5][0][0]) == "Y"
    assert len(ris.received) == 4
    assert {str(m.segment("OBR")[3][0][0]) for m in ris.received} == {study.accession}


def test_messages_sent_while_the_ris_is_down_arrive_once_it_is_back(hl7_settings, engine, ris):
    seed_study(hl7_settings, engine, index=3, psoas_radius=9)
    seed_study(hl7_settings, engine, index=7, psoas_radius=12)
    ris.stop()
    sync_worklist_flags(hl7_settings, engine)

    assert deliver_hl7(hl7_settings, engine) == 0
    first, second = _messages(engine)
    assert first.state == "pending" and first.attempts == 1 and "Connection" in first.last_error
    assert first.next_attempt_at > utcnow()
    assert second.attempts == 0  # the RIS is down: one refused attempt per pass, not one per message
    assert deliver_hl7(hl7_settings, engine) == 0  # the first is not due yet; the second is tried and refused
    assert [m.attempts for m in _messages(engine)] == [1, 1]

    ris.start()
    later = max(m.next_attempt_at for m in _messages(engine)) + timedelta(seconds=1)
    assert deliver_hl7(hl7_settings, engine, now=later) == 2
    assert deliver_hl7(hl7_settings, engine, now=later + timedelta(hours=1)) == 0
    assert sorted(str(m.segment("OBR")[3][0][0]) for m in ris.received) == ["ACC00003", "ACC00007"]
    assert [(m.state, m.ack_code) for m in _messages(engine)] == [("sent", "AA"), ("sent", "AA")]


def test_negative_or_missing_ack_is_retried_and_a_reject_marks_the_message_failed(hl7_settings, engine, ris):
    seed_study(hl7_settings, engine, index=4, psoas_radius=9)
    sync_worklist_flags(hl7_settings, engine)
    now = utcnow()

    ris.ack_code = "AE"
    assert deliver_hl7(hl7_settings, engine, now=now) == 0
    ris.ack_code = "silent"
    assert deliver_hl7(hl7_settings, engine, now=now + timedelta(minutes=1)) == 0
    [row] = _messages(engine)
    assert row.state == "pending" and row.attempts == 2 and "timed out" in row.last_error

    ris.ack_code = "AR"
    assert deliver_hl7(hl7_settings, engine, now=now + timedelta(minutes=5)) == 0
    [row] = _messages(engine)
    assert row.state == "failed" and row.ack_code == "AR" and row.attempts == 3
    assert len(ris.received) == 3


def test_nothing_is_sent_without_a_configured_ris_or_an_accession(hl7_settings, engine, ris):
    seed_study(hl7_settings, engine, index=5, psoas_radius=9)
    assert sync_worklist_flags(hl7_settings.model_copy(update={"hl7_host": ""}), engine) == 0
    with session_scope(engine) as session:
        for study in session.exec(select(Study)).all():
            study.accession_number = ""
            session.add(study)
    assert sync_worklist_flags(hl7_settings, engine) == 0
    assert ris.received == []


def test_a_reanalysis_with_the_same_result_sends_nothing_and_is_not_looked_at_again(hl7_settings, engine, ris):
    study = seed_study(hl7_settings, engine, index=6, psoas_radius=9)
    sync_worklist_flags(hl7_settings, engine)
    deliver_hl7(hl7_settings, engine)
    with session_scope(engine) as session:
        old = session.get(Analysis, study.analysis_id)
        old.superseded = True
        session.add(old)
        session.add(Analysis(study_instance_uid=study.study_uid, instance_set_hash="c" * 64, status="ok",
                             plvi=old.plvi, low_psoas_mass=True, result=old.result, algorithm_version="0.1.0"))
    assert sync_worklist_flags(hl7_settings, engine) == 0
    assert [m.state for m in _messages(engine)] == ["sent", "unchanged"]
    assert sync_worklist_flags(hl7_settings, engine) == 0 and len(_messages(engine)) == 2
    assert deliver_hl7(hl7_settings, engine) == 0 and len(ris.received) == 1

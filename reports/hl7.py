"""The worklist flag to the RIS: HL7 v2.5.1 ORU^R01 over MLLP, through a store-and-forward outbox.

One accession gets one result message; whenever what it says changes (a re-analysis, a review that confirms or
rejects it) a correction follows. Every message waits in the `hl7message` table until the RIS acknowledges it
with AA/CA; refusals, timeouts and AE are retried with exponential backoff, an AR (the RIS will never accept this
message) or too many attempts marks it failed, and the log says so."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import hl7
from sqlalchemy import exists, func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import Analysis, Hl7Message, Review, Study, utcnow
from plvi.outbox import retry_delay_seconds
from plvi.settings import Settings

log = logging.getLogger(__name__)

# MLLP framing (HL7 v2 Implementation Guide, Appendix C: Lower Layer Protocol).
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
CODING = "L"  # HL7 table 0396: local codes; no LOINC code exists for the PLVI or its parts
OBSERVATIONS = (  # key in the result object, OBX-3 identifier, text, UCUM unit
    ("psoas_left_mm2", "PSOASL", "Left psoas cross-sectional area", "mm2^square millimeter^UCUM"),
    ("psoas_right_mm2", "PSOASR", "Right psoas cross-sectional area", "mm2^square millimeter^UCUM"),
    ("vertebra_mm2", "L4VB", "L4 vertebral body cross-sectional area", "mm2^square millimeter^UCUM"),
)
MAX_BACKOFF_SECONDS = 3600
CONTENT_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def escape(text: object) -> str:
    """HL7 escape sequences (v2.5.1 section 2.7) for free text inside a field."""
    value = "" if text is None else str(text)
    for char, sequence in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        value = value.replace(char, sequence)
    return value.replace("\r", " ").replace("\n", " ")


def _hl7_time(moment: datetime) -> str:
    """DTM with an explicit UTC offset, so a RIS in another time zone reads the right moment."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def observation_status(analysis: Analysis, review: Review | None, correction: bool) -> str:
    """HL7 table 0085: W wrong (a reader rejected it), P preliminary (needs review, not yet confirmed), else F
    final, or C when it corrects an earlier message."""
    if review is not None and review.decision == "rejected":
        return "W"
    if analysis.status == "needs_review" and (review is None or review.decision != "confirmed"):
        return "P"
    return "C" if correction else "F"


def result_segments(
    study: Study, analysis: Analysis, review: Review | None, correction: bool, analysed_at: datetime | None = None
) -> list[str]:
    """PID, ORC, OBR, OBX and NTE segments: the clinical content, without the MSH header."""
    result = analysis.result or {}
    status = observation_status(analysis, review, correction)
    order_status = "C" if status == "W" else status  # OBR-25 (table 0123) has no W; a rejection corrects
    accession = escape(study.accession_number)
    analysed = _hl7_time(analysed_at or analysis.created_at)
    obr = ["OBR", "1", "", f"{accession}^PLVI", f"PLVI^Psoas to L4 vertebral index^{CODING}", "", "", analysed]
    obr += [""] * 14 + [analysed, "", "", order_status]  # OBR-22 status change time, OBR-25 result status
    segments = [
        f"PID|1||{escape(study.patient_id)}^^^^MR",
        f"ORC|RE||{accession}^PLVI|||CM",
        "|".join(obr),
    ]
    observations: list[list[str]] = []
    plvi, cutoff = result.get("plvi"), result.get("cutoff")
    if plvi is not None:
        flag = "L" if result.get("low_psoas_mass") else "N"  # table 0078: L below the low normal
        observations.append(["NM", f"PLVI^Psoas to L4 vertebral index^{CODING}", f"{plvi:.4f}",
                             "{ratio}^ratio^UCUM", f">={cutoff}", flag])
        for key, code, text, unit in OBSERVATIONS:
            if result.get(key) is not None:
                observations.append(["NM", f"{code}^{text}^{CODING}", f"{result[key]:.1f}", unit, "", ""])
        low = bool(result.get("low_psoas_mass"))
        observations.append(["CWE", f"LOWPSOAS^Low psoas mass (PLVI below {cutoff})^{CODING}",
                             "Y^Yes^HL70136" if low else "N^No^HL70136", "", "", "A" if low else "N"])
    verdict = analysis.status + (f": {analysis.reason}" if analysis.reason else "")
    observations.append(["ST", f"STATUS^Measurement status^{CODING}", escape(verdict), "", "", ""])
    for number, (value_type, identifier, value, unit, reference, abnormal) in enumerate(observations, start=1):
        segments.append("|".join(["OBX", str(number), value_type, identifier, "", value, unit, reference, abnormal,
                                  "", "", status]))
    if review is not None:
        segments.append(f"NTE|1|L|{escape(review.decision)} by {escape(review.reviewer)}"
                        + (f": {escape(review.reason)}" if review.reason else ""))
    return segments


def content_digest(study: Study, analysis: Analysis, review: Review | None) -> str:
    """What the RIS is told, whichever message tells it and whenever it was measured: final and correction, or
    a re-analysis that found the same, carry the same content."""
    segments = result_segments(study, analysis, review, correction=False, analysed_at=CONTENT_EPOCH)
    return hashlib.sha256(json.dumps(segments).encode("utf-8")).hexdigest()


def build_message(settings: Settings, segments: list[str], control_id: str, now: datetime) -> str:
    msh = "|".join([
        "MSH", "^~\\&", escape(settings.hl7_sending_application), escape(settings.hl7_sending_facility),
        escape(settings.hl7_receiving_application), escape(settings.hl7_receiving_facility), _hl7_time(now), "",
        "ORU^R01^ORU_R01", control_id, "P", "2.5.1", "", "", "AL", "NE", "", "UNICODE UTF-8",
    ])
    return "\r".join([msh, *segments]) + "\r"


def announce_result(settings: Settings, session: Session, study: Study, analysis: Analysis) -> Hl7Message | None:
    """Queue an ORU for the study's current analysis and newest review when it tells the RIS something new.

    Idempotent: the same analysis and review give the same key. Content the RIS already has is booked as
    `unchanged` (so it is not looked at again) and not sent."""
    if not study.accession_number:
        return None
    review = session.exec(
        select(Review).where(Review.analysis_id == analysis.id).order_by(Review.id.desc())  # type: ignore[union-attr]
    ).first()
    key = f"oru:{analysis.id}:{review.id if review else 0}"
    if session.exec(select(Hl7Message.id).where(Hl7Message.key == key)).first() is not None:
        return None
    earlier = session.exec(
        select(Hl7Message).where(Hl7Message.accession_number == study.accession_number,
                                 Hl7Message.state != "unchanged")
        .order_by(Hl7Message.id.desc())  # type: ignore[union-attr]
    ).all()
    sent_before = any(message.state == "sent" for message in earlier)
    digest = content_digest(study, analysis, review)
    unchanged = bool(earlier) and earlier[0].content_sha256 == digest
    assert analysis.id is not None
    message = Hl7Message(key=key, accession_number=study.accession_number, study_instance_uid=study.study_instance_uid,
                         analysis_id=analysis.id, review_id=review.id if review else None, control_id=key,
                         result_status="C" if sent_before else "F", message="", content_sha256=digest,
                         state="unchanged" if unchanged else "pending")
    session.add(message)
    session.flush()
    message.control_id = f"PLVI{message.id:016d}"
    if unchanged:
        session.add(message)
        return None
    for stale in earlier:
        if stale.state == "pending":  # the RIS needs only the newest word; an unsent older one is dropped
            stale.state, stale.last_error = "superseded", f"replaced by {message.control_id}"
            session.add(stale)
    segments = result_segments(study, analysis, review, correction=sent_before)
    message.message = build_message(settings, segments, message.control_id, utcnow())
    session.add(message)
    return message


def _unreported():  # type: ignore[no-untyped-def]
    """Current analyses the RIS has not heard about, or whose newest review came after their last message."""
    booked = select(Hl7Message.id).where(Hl7Message.analysis_id == Analysis.id)
    last_review = (
        select(func.coalesce(func.max(Hl7Message.review_id), 0))
        .where(Hl7Message.analysis_id == Analysis.id)
        .scalar_subquery()
    )
    newer_review = select(Review.id).where(Review.analysis_id == Analysis.id, Review.id > last_review)
    return or_(~exists(booked), exists(newer_review))


def sync_worklist_flags(settings: Settings, engine: Engine) -> int:
    """Periodic job: queue an ORU for every current result whose message to the RIS is missing or out of date."""
    if not settings.hl7_host:
        return 0
    queued = 0
    with session_scope(engine) as session:
        rows = session.exec(
            select(Study, Analysis)
            .join(Analysis, Analysis.study_instance_uid == Study.study_instance_uid)  # type: ignore[arg-type]
            .where(Analysis.superseded.is_(False), Analysis.status != "pending", Study.accession_number != "",  # type: ignore[attr-defined]
                   _unreported())
            .order_by(Analysis.id)
        ).all()
        for study, analysis in rows:
            message = announce_result(settings, session, study, analysis)
            if message is not None:
                queued += 1
                log.info(kv("hl7_queued", study_uid=study.study_instance_uid, control_id=message.control_id,
                            result_status=message.result_status))
    return queued


def send_mllp(host: str, port: int, message: str, timeout: float) -> str:
    """Send one framed message and return the framed answer's text. OSError on any network trouble."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.settimeout(timeout)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sendall(START_BLOCK + message.encode("utf-8") + END_BLOCK)
        answer = b""
        while END_BLOCK not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError("the RIS closed the connection without a complete ACK")
            answer += chunk
    return answer[answer.find(START_BLOCK) + 1: answer.find(END_BLOCK)].decode("utf-8", errors="replace")


def check_ack(answer: str, control_id: str) -> str:
    """The MSA-1 code of an ACK for `control_id`; ValueError when the answer is no such ACK."""
    try:
        parsed = hl7.parse(answer)
        msa = parsed.segment("MSA")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"the answer is not an HL7 ACK: {answer[:80]!r}") from error
    code, acknowledged = str(msa[1]), str(msa[2])
    if acknowledged != control_id:
        raise ValueError(f"the ACK is for message {acknowledged!r}, not {control_id!r}")
    return code


def deliver_hl7(settings: Settings, engine: Engine, now: datetime | None = None) -> int:
    """Periodic job: send every due message in order; returns how many the RIS accepted."""
    if not settings.hl7_host:
        return 0
    now = now or utcnow()
    with session_scope(engine) as session:
        due = session.exec(
            select(Hl7Message).where(Hl7Message.state == "pending", Hl7Message.next_attempt_at <= now)
            .order_by(Hl7Message.id)  # type: ignore[arg-type]
        ).all()
    accepted = 0
    for message in due:
        outcome, reachable = _attempt(settings, message)
        with session_scope(engine) as session:
            row = session.get(Hl7Message, message.id)
            if row is None or row.state != "pending":
                continue
            _book(settings, row, outcome, now)
            session.add(row)
        accepted += row.state == "sent"
        if not reachable:
            break  # the RIS is down: the rest wait for the next pass instead of each waiting for a timeout here
    return accepted


def _attempt(settings: Settings, message: Hl7Message) -> tuple[tuple[str, str], bool]:
    """((ack code or "", error text or ""), whether the RIS could be reached at all)."""
    try:
        answer = send_mllp(settings.hl7_host, settings.hl7_port, message.message, settings.hl7_timeout_seconds)
    except OSError as error:
        return ("", f"{type(error).__name__}: {error}"), False
    try:
        return (check_ack(answer, message.control_id), ""), True
    except ValueError as error:
        return ("", f"{type(error).__name__}: {error}"), True


def _book(settings: Settings, row: Hl7Message, outcome: tuple[str, str], now: datetime) -> None:
    code, error = outcome
    fields: dict[str, Any] = {"study_uid": row.study_instance_uid, "control_id": row.control_id}
    if code in ("AA", "CA"):
        row.state, row.ack_code, row.sent_at, row.last_error = "sent", code, utcnow(), ""
        log.info(kv("hl7_acknowledged", ack=code, result_status=row.result_status, **fields))
        return
    row.attempts += 1
    row.ack_code = code
    row.last_error = (error or f"the RIS answered {code}")[:2000]
    if code == "AR" or row.attempts >= settings.hl7_max_attempts:
        row.state = "failed"
        log.error(kv("hl7_failed", attempts=row.attempts, error=row.last_error,
                     action="check the RIS interface, then set the message's state back to pending", **fields))
        return
    delay = retry_delay_seconds(row.attempts, MAX_BACKOFF_SECONDS, base_seconds=5)
    row.next_attempt_at = now + timedelta(seconds=delay)
    log.warning(kv("hl7_retry", attempts=row.attempts, error=row.last_error, next_attempt_at=row.next_attempt_at,
                   **fields))

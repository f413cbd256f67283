"""Store-and-forward of result objects to PACS: an outbox row per (object, destination), C-STORE with every status
checked, retries with exponential backoff that live in the database and so survive restarts.

Rows are `OutboxMessage(kind="store")` with the key `store:<SOPInstanceUID>:<AE@host:port>`; the payload names the
file under `<data_dir>/results`. States: `pending` (waiting for its next attempt at `next_attempt_at`), `done`
(the destination answered success or a warning), `failed` (no success after `PLVI_PACS_MAX_ATTEMPTS`; shown as
failed in the database and logged as an error, never as sent), `superseded` (a newer analysis of the study was
enqueued before this object went out).

One scheduler calls `deliver_pending` (the `plvi serve` scheduler thread); it is not meant to run concurrently with
itself.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import OutboxMessage, utcnow
from plvi.outbox import retry_delay_seconds
from plvi.settings import Settings
from reports.objects import ResultObjects, write_result_objects

log = logging.getLogger(__name__)

STORE = "store"
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit, implicit VR little endian
# PS3.4 Annex B.2.3: warnings mean the instance was stored (coerced, elements discarded, SOP class mismatch).
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}
BATCH_LIMIT = 200


@dataclass(frozen=True)
class Destination:
    """A C-STORE destination written as `AE@host:port` in `PLVI_PACS`."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae_title, at, address = text.strip().partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and host and port.isdigit() and 0 < len(ae_title) <= 16 and 0 < int(port) < 65536):
            raise ValueError(f"PLVI_PACS entry {text!r} must be AE@host:port, e.g. PACS@10.0.0.5:104")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Outcome:
    """What one C-STORE came to: sent (success or warning) or not, and why."""

    sent: bool
    detail: str


def delivery_key(sop_instance_uid: str, destination: Destination) -> str:
    return f"{STORE}:{sop_instance_uid}:{destination}"


def enqueue_delivery(session: Session, objects: Sequence[Path], destinations: Sequence[str]) -> int:
    """Add one pending row per (object file, destination) in the caller's transaction; returns rows added.

    Enqueueing the same objects again adds nothing (the key is the SOP Instance UID and the destination). Pending
    rows of the same study whose objects are not among `objects` belong to an older analysis: they are marked
    `superseded` and not sent (see reports/objects.py for the supersede policy)."""
    parsed = [Destination.parse(text) for text in destinations]
    headers = [(Path(path), pydicom.dcmread(path, stop_before_pixels=True)) for path in objects]
    studies = {str(ds.StudyInstanceUID) for _, ds in headers}
    current = {str(ds.SOPInstanceUID) for _, ds in headers}
    pending = session.exec(
        select(OutboxMessage).where(OutboxMessage.kind == STORE, OutboxMessage.state == "pending")
    ).all()
    for row in pending:
        if row.payload.get("study_instance_uid") in studies and row.payload.get("sop_instance_uid") not in current:
            row.state = "superseded"
            row.last_error = "superseded by a newer analysis of the study"
            session.add(row)
            log.info(kv("result_delivery_superseded", study_uid=row.payload["study_instance_uid"],
                        sop_uid=row.payload["sop_instance_uid"], destination=row.payload["destination"]))
    added = 0
    for path, ds in headers:
        for destination in parsed:
            key = delivery_key(str(ds.SOPInstanceUID), destination)
            if session.exec(select(OutboxMessage.id).where(OutboxMessage.key == key)).first() is not None:
                continue
            session.add(
                OutboxMessage(
                    key=key,
                    kind=STORE,
                    payload={
                        "path": str(path.resolve()),
                        "study_instance_uid": str(ds.StudyInstanceUID),
                        "sop_instance_uid": str(ds.SOPInstanceUID),
                        "sop_class_uid": str(ds.SOPClassUID),
                        "destination": str(destination),
                    },
                )
            )
            added += 1
    session.flush()
    return added


def queue_result_objects(session: Session, settings: Settings, objects: ResultObjects) -> list[Path]:
    """Write an analysis' objects under `<data_dir>/results` and queue them for every `PLVI_PACS` destination in
    the caller's transaction (the worker's, which also stores the analysis); returns the files."""
    paths = write_result_objects(objects, settings.results_dir)
    enqueue_delivery(session, paths, settings.pacs)
    return paths


def deliver_pending(settings: Settings, engine: Engine) -> int:
    """Send every due row, one association per destination; returns how many objects were sent.

    Called periodically by the service scheduler; a row's attempt count and next attempt time are in the database,
    so a restart resumes the backoff where it was."""
    now = utcnow()
    with session_scope(engine) as session:
        due = session.exec(
            select(OutboxMessage)
            .where(
                OutboxMessage.kind == STORE,
                OutboxMessage.state == "pending",
                OutboxMessage.next_attempt_at <= now,
            )
            .order_by(OutboxMessage.id)
            .limit(BATCH_LIMIT)
        ).all()
        batches: dict[str, list[tuple[int, dict]]] = {}
        for row in due:
            batches.setdefault(row.payload["destination"], []).append((row.id, dict(row.payload)))
    sent = 0
    for destination, items in batches.items():
        outcomes = send_batch(Destination.parse(destination), [payload for _, payload in items], settings)
        with session_scope(engine) as session:
            for (row_id, payload), outcome in zip(items, outcomes, strict=True):
                row = session.get(OutboxMessage, row_id)
                if row is None or row.state != "pending":
                    continue
                _record(row, payload, outcome, settings)
                session.add(row)
                sent += outcome.sent
    return sent


def _record(row: OutboxMessage, payload: dict, outcome: Outcome, settings: Settings) -> None:
    row.attempts += 1
    row.last_error = "" if outcome.sent else outcome.detail[:2000]
    fields = dict(study_uid=payload["study_instance_uid"], sop_uid=payload["sop_instance_uid"],
                  destination=payload["destination"], attempts=row.attempts, detail=outcome.detail)
    if outcome.sent:
        row.state = "done"
        row.published_at = utcnow()
        log.info(kv("result_sent", **fields))
    elif row.attempts >= settings.pacs_max_attempts:
        row.state = "failed"
        log.error(kv("result_send_failed", **fields, path=payload["path"],
                     action="check that the destination accepts this object; its file stays at path"))
    else:
        delay = retry_delay_seconds(
            row.attempts, settings.pacs_retry_max_seconds, base_seconds=settings.pacs_retry_base_seconds
        )
        row.next_attempt_at = utcnow() + timedelta(seconds=delay)
        log.warning(kv("result_send_retry", **fields, retry_in_s=round(delay, 3)))


def send_batch(destination: Destination, payloads: Sequence[dict], settings: Settings) -> list[Outcome]:
    """C-STORE each payload's file over one association; an outcome per payload, in order."""
    assoc = open_association(destination, {p["sop_class_uid"] for p in payloads}, settings)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (unreachable, aborted or timed out)"
        return [Outcome(False, reason)] * len(payloads)
    try:
        return [_store_one_safely(assoc, payload) for payload in payloads]
    finally:
        if assoc.is_established:
            assoc.release()


def open_association(destination: Destination, sop_classes: set[str], settings: Settings) -> Association:
    """Request an association proposing each SOP class with explicit and implicit little endian."""
    ae = AE(ae_title=settings.ae_title)
    for sop_class in sorted(sop_classes):
        ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.pacs_timeout_seconds
    return ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _disable_nagle)],
    )


def _disable_nagle(event: Event) -> None:
    """TCP_NODELAY on our SCU socket: otherwise each small PDU can wait ~40 ms for the peer's delayed ACK."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_one_safely(assoc: Association, payload: dict) -> Outcome:
    """Any unexpected error is this object's failed attempt (recorded, backed off), never a silent retry loop."""
    try:
        return _store_one(assoc, payload)
    except Exception as error:  # the boundary between one object and the rest of the batch
        log.exception(kv("result_send_error", sop_uid=payload["sop_instance_uid"], destination=payload["destination"]))
        return Outcome(False, f"error while sending: {error!r}")


def _store_one(assoc: Association, payload: dict) -> Outcome:
    if not assoc.is_established:
        return Outcome(False, "association ended before this object was sent")
    try:
        dataset = pydicom.dcmread(payload["path"])
    except (OSError, InvalidDicomError) as error:
        return Outcome(False, f"cannot read {payload['path']}: {error}")
    accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
    if payload["sop_class_uid"] not in accepted:
        return Outcome(False, f"destination did not accept SOP class {payload['sop_class_uid']}")
    response = assoc.send_c_store(dataset)
    if "Status" not in response:
        return Outcome(False, "no C-STORE response (connection lost, aborted or timed out)")
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "")).strip()
    if status == 0x0000:
        return Outcome(True, "status 0x0000")
    if status in WARNING_STATUSES:
        log.warning(kv("result_stored_with_warning", sop_uid=payload["sop_instance_uid"],
                       destination=payload["destination"], status=f"0x{status:04X}", comment=comment))
        return Outcome(True, f"warning status 0x{status:04X} {comment}".strip())
    return Outcome(False, f"failure status 0x{status:04X} {comment}".strip())

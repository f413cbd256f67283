"""The study tracker: when is a study complete?

Studies arrive series by series, minutes apart, and DICOM has no "end of study" message. A study is taken as
complete when no instance of it has arrived for `settle_seconds`. It is then marked settled with the hash of its
exact instance set, and an outbox row asking for its analysis is written in the same transaction. An instance that
arrives later sets the study back to "receiving" (the listener does that); when it settles again, the new instance
set gives a new key, hence a new analysis that supersedes the old one. The same set never gives a second one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import Instance, OutboxMessage, Study, utcnow
from plvi.outbox import ANALYZE_STUDY, analyze_study_key
from plvi.settings import Settings

log = logging.getLogger(__name__)


def instance_set_hash(instances: Iterable[tuple[str, str]]) -> str:
    """sha256 over the sorted (SOP Instance UID, file sha256) pairs: names exactly which bytes were analysed."""
    digest = hashlib.sha256()
    for sop_instance_uid, file_sha256 in sorted(instances):
        digest.update(f"{sop_instance_uid}\0{file_sha256}\n".encode())
    return digest.hexdigest()


def settle_studies(settings: Settings, engine: Engine, now: datetime | None = None) -> list[str]:
    """Settle every study quiet for `settle_seconds`; return the UIDs of those settled by this call."""
    now = now or utcnow()
    quiet_since = now - timedelta(seconds=settings.settle_seconds)
    with Session(engine) as session:
        candidates = session.exec(
            select(Study.study_instance_uid).where(
                Study.state == "receiving", Study.last_received_at <= quiet_since
            )
        ).all()
    return [uid for uid in candidates if _settle(engine, uid, quiet_since, now)]


def _settle(engine: Engine, study_uid: str, quiet_since: datetime, now: datetime) -> bool:
    with session_scope(engine) as session:
        # The guarded update comes first: it takes the study's row lock (PostgreSQL) or the write lock (SQLite)
        # before anything is read, so an instance recorded meanwhile either re-opened the study already (and the
        # guard fails) or waits for this transaction and re-opens it after.
        claimed = session.execute(
            update(Study)
            .where(
                Study.study_instance_uid == study_uid,
                Study.state == "receiving",
                Study.last_received_at <= quiet_since,
            )
            .values(state="settled")
        )
        if claimed.rowcount != 1:
            return False
        instances = session.exec(
            select(Instance.sop_instance_uid, Instance.sha256).where(Instance.study_instance_uid == study_uid)
        ).all()
        set_hash = instance_set_hash(instances)
        key = analyze_study_key(study_uid, set_hash)
        already_queued = (
            session.exec(select(OutboxMessage.id).where(OutboxMessage.key == key)).first() is not None
        )
        if not already_queued:
            # An older analysis of this study not yet handed to the broker would only be superseded: skip it.
            session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.kind == ANALYZE_STUDY,
                    OutboxMessage.key.startswith(f"{ANALYZE_STUDY}:{study_uid}:"),
                    OutboxMessage.state == "pending",
                )
                .values(state="superseded")
            )
            session.add(
                OutboxMessage(
                    key=key,
                    kind=ANALYZE_STUDY,
                    payload={"study_uid": study_uid, "instance_set_hash": set_hash},
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == study_uid)
            .values(instance_set_hash=set_hash, **({} if already_queued else {"queued_at": now}))
        )
    log.info(
        kv(
            "study_settled",
            study_uid=study_uid,
            instances=len(instances),
            instance_set_hash=set_hash[:12],
            queued=not already_queued,
        )
    )
    return True

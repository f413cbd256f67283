"""The outbox publisher: database rows announcing work become Celery tasks, at least once, never lost.

A row is written in the same transaction as the state it announces (listener/tracker.py). Here it is sent to the
broker and marked published; a broker error leaves it pending with exponential backoff, so an outage only delays
work. The task marks its row done when it has finished (workers/processing.py); rows published but never finished
(a message lost with a killed worker) are published again after `redeliver_after_seconds`. Receivers are
idempotent by the row's key, so publishing twice is harmless.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import OutboxMessage, utcnow
from plvi.settings import Settings

log = logging.getLogger(__name__)

ANALYZE_STUDY = "analyze_study"
# Outbox kinds this publisher sends, and the Celery task each becomes (payload = the task's keyword arguments).
TASK_FOR_KIND = {ANALYZE_STUDY: "plvi.analyze_study"}
BATCH_SIZE = 100
# kombu retries a failing publish this way before we give up on the row until its next attempt: short, so a
# broker outage never stalls the scheduler thread for long.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 0.5}


def analyze_study_key(study_uid: str, instance_set_hash: str) -> str:
    """The outbox key of one analysis: the same study and instance set always give the same key."""
    return f"{ANALYZE_STUDY}:{study_uid}:{instance_set_hash}"


def retry_delay_seconds(attempts: int, max_seconds: float, *, base_seconds: float = 1.0) -> float:
    """`base_seconds` times 1, 2, 4, ... after the 1st, 2nd, 3rd failed attempt, never more than `max_seconds`; the
    backoff of every outbox (tasks, PACS deliveries, HL7 messages)."""
    return min(max_seconds, base_seconds * 2.0 ** min(attempts - 1, 30))


def publish_pending(
    settings: Settings, engine: Engine, celery_app: Celery, now: datetime | None = None
) -> int:
    """Send the pending rows that are due to the broker; return how many were published.

    On a broker error the failed row and the rest of the batch stay pending with a later `next_attempt_at`."""
    now = now or utcnow()
    published = 0
    with session_scope(engine) as session:
        rows = session.exec(
            select(OutboxMessage)
            .where(
                OutboxMessage.state == "pending",
                OutboxMessage.kind.in_(TASK_FOR_KIND),
                OutboxMessage.next_attempt_at <= now,
            )
            .order_by(OutboxMessage.id)
            .limit(BATCH_SIZE)
            .with_for_update(skip_locked=True)
        ).all()
        broker_error: Exception | None = None
        for row in rows:
            row.attempts += 1
            if broker_error is None:
                try:
                    celery_app.send_task(
                        TASK_FOR_KIND[row.kind],
                        kwargs=row.payload,
                        task_id=str(uuid.uuid5(uuid.NAMESPACE_URL, row.key)),
                        retry=True,
                        retry_policy=PUBLISH_RETRY_POLICY,
                    )
                except Exception as error:  # noqa: BLE001 - any broker failure: keep the row, try again later
                    broker_error = error
                else:
                    row.state = "published"
                    row.published_at = now
                    row.last_error = ""
                    published += 1
                    log.info(kv("outbox_published", key=row.key, attempts=row.attempts))
                    continue
            row.next_attempt_at = now + timedelta(
                seconds=retry_delay_seconds(row.attempts, settings.publish_retry_max_seconds)
            )
            row.last_error = f"broker unreachable: {broker_error!r}"[:2000]
            log.warning(
                kv(
                    "outbox_publish_failed",
                    key=row.key,
                    attempts=row.attempts,
                    next_attempt_at=row.next_attempt_at.isoformat(),
                    error=repr(broker_error),
                )
            )
        session.add_all(rows)
    return published


def redeliver_unfinished(
    settings: Settings,
    engine: Engine,
    now: datetime | None = None,
    *,
    older_than_seconds: float | None = None,
) -> int:
    """Make rows published longer than `older_than_seconds` (default `redeliver_after_seconds`) ago, and not done,
    pending again."""
    now = now or utcnow()
    if older_than_seconds is None:
        older_than_seconds = settings.redeliver_after_seconds
    with session_scope(engine) as session:
        result = session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.state == "published",
                OutboxMessage.kind.in_(TASK_FOR_KIND),
                OutboxMessage.published_at <= now - timedelta(seconds=older_than_seconds),
            )
            .values(state="pending", next_attempt_at=now, last_error="published but not finished; sent again")
        )
    if result.rowcount:
        log.warning(kv("outbox_redelivered", rows=result.rowcount))
    return result.rowcount


def mark_failed(engine: Engine, key: str, error: str) -> None:
    """A task gave up after its retries: keep the row, with the error, for the operator to see and re-queue."""
    with session_scope(engine) as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.key == key)
            .values(state="failed", last_error=error[:2000])
        )
    log.error(kv("outbox_task_failed", key=key, error=error))

"""Database rows for received instances: Study, Series and Instance upserted in one transaction.

Committing once per instance with synchronous=FULL (SQLite) or a WAL flush (PostgreSQL) caps ingest at a few hundred
instances per second however many peers send. `RecordWriter` commits the rows of concurrent C-STORE handlers together
(group commit); each handler still waits until its own row is committed before it answers the peer, so "success"
keeps meaning "on disk and in the database".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import Column, Connection, Executable, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from plvi.logs import kv
from plvi.models import Instance, Series, Study

log = logging.getLogger(__name__)

STUDY = Study.__table__  # type: ignore[attr-defined]
SERIES = Series.__table__  # type: ignore[attr-defined]
INSTANCE = Instance.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InstanceRecord:
    """What the database learns about one stored instance (no patient names: only identifiers the tracker and the
    worklist need)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    sha256: str
    calling_ae: str
    received_at: datetime
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""


def _fit(column: Column, value: str) -> str:  # type: ignore[type-arg]
    """Clip a descriptive value to its column: a peer's over-long SeriesDescription must not cost the instance."""
    return value[: column.type.length] if column.type.length else value


@dataclass(frozen=True)
class _Upserts:
    instance: Executable
    study: Executable
    series: Executable


@lru_cache(maxsize=None)
def _upserts(dialect_name: str) -> _Upserts:
    """Built once per dialect and executed with plain parameters: building SQLAlchemy statements per instance costs
    about a millisecond of CPU, under the GIL, on the hot path."""
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    instance = insert(INSTANCE)
    new = instance.excluded
    instance_upsert = instance.on_conflict_do_update(
        index_elements=[INSTANCE.c.sop_instance_uid],
        set_={
            **{
                name: new[name]
                for name in (
                    "series_instance_uid", "study_instance_uid", "sop_class_uid", "transfer_syntax_uid", "path",
                    "size_bytes", "sha256", "calling_ae", "received_at",
                )
            },  # fmt: skip
            "replaced_count": INSTANCE.c.replaced_count + case((INSTANCE.c.sha256 != new.sha256, 1), else_=0),
        },
        # New bytes, or the same SOP Instance UID filed under another series, update the row; an identical resend
        # changes nothing.
        where=(INSTANCE.c.sha256 != new.sha256) | (INSTANCE.c.path != new.path),
    ).returning(INSTANCE.c.sop_instance_uid)  # only rows written come back (rowcount is -1 on psycopg)
    study = insert(STUDY)
    study_upsert = study.on_conflict_do_update(
        index_elements=[STUDY.c.study_instance_uid],
        set_={"last_received_at": study.excluded.last_received_at, "state": "receiving"},
    )
    series_upsert = insert(SERIES).on_conflict_do_nothing(index_elements=[SERIES.c.series_instance_uid])
    return _Upserts(instance_upsert, study_upsert, series_upsert)


def record_instances(connection: Connection, records: Sequence[InstanceRecord]) -> None:
    """Upsert the rows of `records` inside the caller's transaction, three statements for the whole batch.

    An identical duplicate (same SOP Instance UID and sha256) changes nothing, not even the study's receive time;
    different bytes update the instance row, count the replacement and re-open the study. The records must have
    distinct SOP Instance UIDs (PostgreSQL refuses to upsert one row twice in a statement)."""
    if not records:
        return
    upserts = _upserts(connection.dialect.name)
    written_uids = set(
        connection.execute(
            upserts.instance,
            [
                {
                    "sop_instance_uid": record.sop_instance_uid,
                    "series_instance_uid": record.series_instance_uid,
                    "study_instance_uid": record.study_instance_uid,
                    "sop_class_uid": record.sop_class_uid,
                    "transfer_syntax_uid": record.transfer_syntax_uid,
                    "path": record.path,
                    "size_bytes": record.size_bytes,
                    "sha256": record.sha256,
                    "calling_ae": record.calling_ae,
                    "received_at": record.received_at,
                    "replaced_count": 0,
                }
                for record in records
            ],
        ).scalars()
    )
    written = [record for record in records if record.sop_instance_uid in written_uids]
    if not written:
        return
    # One row per study and series (the same upsert twice in one statement is an error on PostgreSQL), in key
    # order so that concurrent writers lock them in the same order.
    studies: dict[str, dict[str, object]] = {}
    series: dict[str, dict[str, object]] = {}
    for record in written:
        study = studies.setdefault(
            record.study_instance_uid,
            {
                "study_instance_uid": record.study_instance_uid,
                "patient_id": _fit(STUDY.c.patient_id, record.patient_id),
                "accession_number": _fit(STUDY.c.accession_number, record.accession_number),
                "study_date": _fit(STUDY.c.study_date, record.study_date),
                "first_received_at": record.received_at,
                "last_received_at": record.received_at,
                "state": "receiving",
            },
        )
        study["first_received_at"] = min(study["first_received_at"], record.received_at)  # type: ignore[type-var]
        study["last_received_at"] = max(study["last_received_at"], record.received_at)  # type: ignore[type-var]
        series.setdefault(
            record.series_instance_uid,
            {
                "series_instance_uid": record.series_instance_uid,
                "study_instance_uid": record.study_instance_uid,
                "modality": _fit(SERIES.c.modality, record.modality),
                "series_number": record.series_number,
                "series_description": _fit(SERIES.c.series_description, record.series_description),
            },
        )
    connection.execute(upserts.study, [studies[uid] for uid in sorted(studies)])
    connection.execute(upserts.series, [series[uid] for uid in sorted(series)])


@dataclass
class _Pending:
    record: InstanceRecord
    committed: bool = False
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.committed or self.error is not None


class RecordWriter:
    """Group commit without a writer thread: a handler that finds no commit in progress commits every row queued
    so far (its own included) while the others wait for that commit; a lone sender pays no thread hand-off.

    The leaders share one database connection, kept open between commits: checking a connection out of the pool
    (with PostgreSQL's pre-ping) for every instance cost more CPU than the upserts themselves."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: list[_Pending] = []
        self._changed = threading.Condition()
        self._committing = False
        self._stopping = False
        self._connection: Connection | None = None  # used by the current leader only

    def start(self) -> None:
        self._stopping = False

    def stop(self) -> None:
        """Refuse new rows; rows already queued are committed by the handlers waiting for them (the last leader
        then closes the connection)."""
        with self._changed:
            self._stopping = True
            if not self._committing:
                self._disconnect()

    def record(self, record: InstanceRecord, timeout: float = 60.0) -> None:
        """Return once the row is committed; raise the database's error (or TimeoutError) if it is not."""
        if self._stopping:
            raise RuntimeError("the listener is shutting down; the peer should send this instance again")
        pending = _Pending(record)
        deadline = time.monotonic() + timeout
        with self._changed:
            self._queue.append(pending)
            while not pending.finished:
                if not self._committing:
                    self._commit_queue()
                elif not self._changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"the database did not commit within {timeout} s")
        if pending.error is not None:
            raise pending.error

    def _commit_queue(self) -> None:
        """Called with the lock held; releases it while the database works."""
        batch, self._queue = self._queue, []
        self._committing = True
        self._changed.release()
        try:
            self._commit(batch)
        except BaseException as error:  # never leave a waiter whose row is in no queue and no commit
            for pending in batch:
                if not pending.finished:
                    pending.error = error
            raise
        finally:
            self._changed.acquire()
            self._committing = False
            if self._stopping and not self._queue:
                self._disconnect()
            self._changed.notify_all()

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self._commit_once(batch)
        except Exception as batch_error:  # one bad row must not fail its neighbours: retry them one by one
            if len(batch) == 1:
                batch[0].error = batch_error
                return
            log.warning(kv("record_batch_failed", size=len(batch), error=batch_error.__class__.__name__))
            for pending in batch:
                self._commit([pending])
            return
        for pending in batch:
            pending.committed = True

    def _commit_once(self, batch: list[_Pending]) -> None:
        """One transaction for the batch; a connection the database dropped (restart, idle timeout) is replaced
        once, as the pool's pre-ping would have done."""
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self.engine.connect()
            try:
                with self._connection.begin():
                    record_instances(self._connection, [pending.record for pending in batch])
                return
            except DBAPIError as error:
                self._disconnect()
                if attempt == 2 or not error.connection_invalidated:
                    raise
            except Exception:
                self._disconnect()
                raise

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

"""The database tables, in one place. Every schema change comes with an Alembic migration (plvi/migrations)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Study(SQLModel, table=True):
    """A study as received. `last_received_at` drives the settle timer; `instance_set_hash` names the exact set of
    instances the latest analysis was queued for, so a retry cannot queue a second, different analysis."""

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(unique=True, index=True, max_length=64)
    patient_id: str = Field(default="", max_length=64)
    accession_number: str = Field(default="", max_length=16)
    study_date: str = Field(default="", max_length=8)
    first_received_at: datetime = Field(default_factory=utcnow)
    last_received_at: datetime = Field(default_factory=utcnow, index=True)
    state: str = Field(default="receiving", index=True, max_length=16)  # receiving | settled
    instance_set_hash: str | None = Field(default=None, max_length=64)
    queued_at: datetime | None = None


class Series(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    series_instance_uid: str = Field(unique=True, index=True, max_length=64)
    study_instance_uid: str = Field(index=True, max_length=64)
    modality: str = Field(default="", max_length=16)
    series_number: int | None = None
    series_description: str = Field(default="", max_length=64)


class Instance(SQLModel, table=True):
    """One stored SOP instance. The file at `path` (relative to the data folder) holds exactly `sha256`."""

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(unique=True, index=True, max_length=64)
    series_instance_uid: str = Field(index=True, max_length=64)
    study_instance_uid: str = Field(index=True, max_length=64)
    sop_class_uid: str = Field(max_length=64)
    transfer_syntax_uid: str = Field(max_length=64)
    path: str = Field(max_length=512)
    size_bytes: int
    sha256: str = Field(max_length=64)
    calling_ae: str = Field(default="", max_length=16)
    received_at: datetime = Field(default_factory=utcnow)
    replaced_count: int = 0


class OutboxMessage(SQLModel, table=True):
    """A hand-off between processes, written in the same transaction as the state it announces.

    `key` is derived from DICOM UIDs and content hashes, so writing the same hand-off twice is a no-op."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, index=True, max_length=255)
    kind: str = Field(index=True, max_length=32)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", index=True, max_length=16)  # pending | published | done | failed | superseded
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    published_at: datetime | None = None
    last_error: str = Field(default="", max_length=2000)


class Analysis(SQLModel, table=True):
    """The result of analysing one exact set of instances; a newer set supersedes it."""

    __table_args__ = (UniqueConstraint("study_instance_uid", "instance_set_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(index=True, max_length=64)
    instance_set_hash: str = Field(max_length=64)
    status: str = Field(index=True, max_length=16)  # ok | needs_review | not_measurable | pending
    reason: str | None = Field(default=None, max_length=64)
    plvi: float | None = None
    low_psoas_mass: bool | None = None
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    algorithm_version: str = Field(default="", max_length=32)
    settings_used: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    superseded: bool = Field(default=False, index=True)


class User(SQLModel, table=True):
    """A person who may use the dashboard and the API. Only an Argon2 hash of the password is kept."""

    __tablename__ = "users"  # type: ignore[assignment]  # "user" is reserved in PostgreSQL

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True, max_length=64)
    password_hash: str = Field(max_length=255)
    full_name: str = Field(default="", max_length=128)
    is_active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class AuthToken(SQLModel, table=True):
    """A bearer credential: a long-lived API token or a browser session. Only its SHA-256 is stored, so a copy of
    the database does not let anyone log in."""

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    token_sha256: str = Field(unique=True, index=True, max_length=64)
    kind: str = Field(default="api", max_length=16)  # api | session
    name: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


class Review(SQLModel, table=True):
    """A reader's decision on one analysis; the newest review of the current analysis is the study's outcome."""

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(index=True, max_length=64)
    analysis_id: int = Field(foreign_key="analysis.id", index=True)
    decision: str = Field(max_length=16)  # confirmed | rejected | remeasure
    reason: str = Field(default="", max_length=500)
    reviewer: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """Who looked at or did what, and when: every dashboard view, review, login and export."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    username: str = Field(max_length=64)
    action: str = Field(index=True, max_length=32)
    study_instance_uid: str | None = Field(default=None, index=True, max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ExportRun(SQLModel, table=True):
    """One cohort export. `until` is the newest analysis time it included: the next export starts after it."""

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    out_dir: str = Field(max_length=512)
    since: datetime | None = None
    until: datetime | None = None
    rows: int = 0
    state: str = Field(default="running", max_length=16)  # running | done | failed
    error: str = Field(default="", max_length=2000)


class Hl7Message(SQLModel, table=True):
    """Store-and-forward outbox of ORU^R01 results to the RIS. `key` names the analysis and review it reports, so
    announcing the same result twice is a no-op; a later message for the same accession is a correction."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, index=True, max_length=128)
    accession_number: str = Field(index=True, max_length=16)
    study_instance_uid: str = Field(index=True, max_length=64)
    analysis_id: int = Field(foreign_key="analysis.id", index=True)
    review_id: int | None = Field(default=None, foreign_key="review.id")
    control_id: str = Field(unique=True, max_length=20)
    result_status: str = Field(max_length=1)  # F final | C correction
    message: str = Field(sa_column=Column(Text, nullable=False))
    content_sha256: str = Field(max_length=64)  # the clinical content, so an unchanged result is not sent again
    # pending | sent | failed | superseded (a newer one replaced it unsent) | unchanged (nothing new to tell)
    state: str = Field(default="pending", index=True, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    ack_code: str = Field(default="", max_length=2)
    last_error: str = Field(default="", max_length=2000)

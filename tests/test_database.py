"""The schema comes from the migrations and matches the models, on SQLite and on PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel, select

from plvi.db import make_engine, session_scope
from plvi.models import OutboxMessage


def test_migrations_produce_exactly_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == [], "models changed without a migration: add one under plvi/migrations/versions"


def test_outbox_payload_round_trips_as_json(database_url: str) -> None:
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        session.add(OutboxMessage(key="analyze:1.2.3:abc", kind="analyze_study", payload={"study_uid": "1.2.3"}))
    with session_scope(engine) as session:
        message = session.exec(select(OutboxMessage)).one()
    assert message.payload == {"study_uid": "1.2.3"}
    assert message.state == "pending"

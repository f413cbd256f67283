"""Fixtures shared by the suite: free loopback ports, settings under a temporary folder, real databases and the
rows a test reads back from them."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.db import make_engine, upgrade_database
from plvi.models import Analysis, OutboxMessage
from plvi.settings import Settings

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test: data under tmp_path, a private port, a short settle time."""
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "var",
        port=free_port(),
        http_port=free_port(),
        settle_seconds=1.0,
        tracker_interval_seconds=0.2,
        free_space_reserve_mb=0,
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite file, for tests whose subject does not depend on the kind of database."""
    url = f"sqlite:///{tmp_path / 'listener.db'}"
    upgrade_database(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a private database on the local PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'plvi.db'}"
        upgrade_database(url)
        yield url
        return
    name = f"plvi_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # the suite needs the real server; say how to get it
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is needed for the database tests: {error}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade_database(url)
    yield url
    make_engine(url).dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on `database_url`, disposed after the test."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def outbox_rows(engine: Engine) -> list[OutboxMessage]:
    """The outbox in the order the messages were written."""
    with Session(engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all())


def analyses(engine: Engine) -> list[Analysis]:
    with Session(engine) as session:
        return list(session.exec(select(Analysis)).all())

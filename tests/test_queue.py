"""The queue: outbox rows become Celery tasks that real workers run, through Redis or the embedded queue, and a
broker outage delays the hand-off without losing it or sending it twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from listener.tracker import settle_studies
from plvi.models import OutboxMessage, utcnow
from plvi.outbox import analyze_study_key, publish_pending, redeliver_unfinished, retry_delay_seconds
from plvi.service import WorkerProcess
from plvi.settings import Settings
from tests.conftest import analyses, free_port, outbox_rows
from tests.peers.redis import RedisServer, run_redis
from tests.serve_process import wait_for
from tests.test_tracker import STUDY, receive
from workers.celery_app import make_celery


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis(free_port(), tmp_path / "redis") as server:
        yield server


@contextmanager
def real_worker(settings: Settings) -> Iterator[WorkerProcess]:
    """A `plvi worker` process with one pool process, consuming the settings' broker."""
    worker = WorkerProcess(settings.model_copy(update={"serve_workers": 1}))
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def settled_study(settings: Settings, engine: Engine) -> None:
    at = utcnow() - timedelta(seconds=settings.settle_seconds + 1)
    receive(settings, engine, f"{STUDY}.1.1", at=at)
    receive(settings, engine, f"{STUDY}.2.1", at=at, series="2")
    assert settle_studies(settings, engine) == [STUDY]


def test_publication_retries_wait_twice_as_long_each_time_up_to_the_cap() -> None:
    assert [retry_delay_seconds(attempts, 300) for attempts in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay_seconds(10, 300) == 300
    assert retry_delay_seconds(10_000, 300) == 300


def test_study_settled_while_redis_is_down_is_published_once_when_it_returns_and_a_worker_runs_it(
    settings: Settings, database_url: str, engine: Engine, redis_server: RedisServer
) -> None:
    settings = settings.model_copy(
        update={
            "database_url": database_url,
            "broker_url": redis_server.url,
            "publish_retry_max_seconds": 1.0,
        }
    )
    celery_app = make_celery(settings)
    redis_server.stop()
    settled_study(settings, engine)

    started = time.monotonic()
    assert publish_pending(settings, engine, celery_app) == 0
    assert time.monotonic() - started < 10, "a broker outage must not stall the scheduler"
    [row] = outbox_rows(engine)
    assert (row.state, row.attempts) == ("pending", 1)
    assert "broker unreachable" in row.last_error
    assert row.next_attempt_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)
    assert publish_pending(settings, engine, celery_app) == 0  # not due yet: no second attempt
    assert outbox_rows(engine)[0].attempts == 1

    redis_server.start()
    wait_for(lambda: publish_pending(settings, engine, celery_app), what="publication after Redis returned")
    assert publish_pending(settings, engine, celery_app) == 0
    [row] = outbox_rows(engine)
    assert row.state == "published"
    with redis_server.client() as client:
        assert client.llen("plvi") == 1  # exactly one message in the queue

    with real_worker(settings):
        wait_for(lambda: outbox_rows(engine)[0].state == "done", what="the worker finishing the task")
    [analysis] = analyses(engine)
    assert analysis.study_instance_uid == STUDY
    assert (analysis.status, analysis.reason) == ("not_measurable", "no_sagittal")  # axial images only
    assert [s["instances"] for s in analysis.result["series"]] == [1, 1]


def test_embedded_queue_carries_a_study_to_a_real_worker_in_another_process(
    settings: Settings, database_url: str, engine: Engine
) -> None:
    settings = settings.model_copy(update={"database_url": database_url})
    assert settings.broker_is_embedded
    celery_app = make_celery(settings)
    settled_study(settings, engine)
    assert publish_pending(settings, engine, celery_app) == 1
    # A message lost with a killed worker is published again after redeliver_after_seconds; the duplicate this
    # makes when nothing was lost must not make a second analysis.
    later = utcnow() + timedelta(seconds=settings.redeliver_after_seconds + 1)
    assert redeliver_unfinished(settings, engine, now=later) == 1
    assert publish_pending(settings, engine, celery_app, now=later) == 1

    with real_worker(settings):
        wait_for(lambda: outbox_rows(engine)[0].state == "done", what="the worker finishing the task")
        wait_for(lambda: _embedded_queue_is_empty(settings, celery_app), what="both messages consumed")
    [analysis] = analyses(engine)
    assert (analysis.study_instance_uid, analysis.superseded) == (STUDY, False)
    assert redeliver_unfinished(settings, engine, now=later + timedelta(days=1)) == 0  # done rows stay done


def _embedded_queue_is_empty(settings: Settings, celery_app) -> bool:  # type: ignore[no-untyped-def]
    with celery_app.connection_for_write() as connection:
        return connection.default_channel.queue_declare("plvi", passive=True).message_count == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_task_that_cannot_succeed_leaves_its_outbox_row_failed_with_the_reason(
    settings: Settings, database_url: str, engine: Engine
) -> None:
    settings = settings.model_copy(update={"database_url": database_url})
    unknown_study = "1.2.826.0.1.3680043.8.498.999"
    with Session(engine) as session:
        session.add(
            OutboxMessage(
                key=analyze_study_key(unknown_study, "0" * 64),
                kind="analyze_study",
                payload={"study_uid": unknown_study, "instance_set_hash": "0" * 64},
            )
        )
        session.commit()
    assert publish_pending(settings, engine, make_celery(settings)) == 1

    with real_worker(settings):
        wait_for(lambda: outbox_rows(engine)[0].state == "failed", what="the row marked failed")
    [row] = outbox_rows(engine)
    assert "is not in the database" in row.last_error
    assert analyses(engine) == []

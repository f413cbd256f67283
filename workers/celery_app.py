"""The Celery application: one broker (Redis in production, an embedded SQLite queue by default), late acks.

Durability does not rest on the broker alone: every task is announced in the database outbox first
(plvi/outbox.py), a finished task marks its outbox row done, and published rows that never finish are published
again. So a broker that loses an unacknowledged message (kombu's SQL transport does when a worker is killed with
SIGKILL) delays an analysis but cannot lose it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sqlite3
import sys
import time
from functools import cached_property
from pathlib import Path

import sqlalchemy.exc
from celery import Celery
from sqlalchemy.engine import Engine

from plvi.db import make_engine
from plvi.logs import configure_logging
from plvi.settings import Settings, load_settings
from reports.export.schedule import install_nightly_export

QUEUE_NAME = "plvi"
# Redis hides a delivered, unacknowledged message for this long before handing it to another worker; it must
# exceed the longest analysis, or a slow task would run twice (harmless, results are idempotent, but wasteful).
REDIS_VISIBILITY_TIMEOUT_SECONDS = 2 * 3600
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class PlviCelery(Celery):
    """A Celery app that carries the service settings, so tasks never read the environment themselves."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("plvi", include=["workers.tasks"])
        self.plvi_settings = settings

    @cached_property
    def plvi_engine(self) -> Engine:
        """Created on first use, i.e. inside the pool process that runs the task, never inherited across fork."""
        return make_engine(self.plvi_settings.effective_database_url)


def make_celery(settings: Settings) -> PlviCelery:
    """The app every process of the service uses: the `plvi serve` publisher, `plvi worker`, the tests."""
    app = PlviCelery(settings)
    app.conf.update(
        broker_url=settings.effective_broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        task_default_queue=QUEUE_NAME,
        task_serializer="json",
        accept_content=["json"],
        # Results live in our database; no result backend.
        task_ignore_result=True,
        # A task is acknowledged when it has finished, and given back if its worker dies, so a crash mid-analysis
        # reruns it; one message at a time per process keeps long analyses from starving behind each other.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    if settings.broker_is_embedded:
        prepare_embedded_broker(app)
    install_nightly_export(app, settings)  # the cohort export task and its beat entry (PLVI_EXPORT_CRON)
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker_is_embedded:
        # kombu's SQL transport hands these to sqlalchemy.create_engine: wait for the lock instead of failing
        # when the publisher and several workers touch the queue file at once.
        return {"connect_args": {"timeout": 30}}
    return {
        "visibility_timeout": REDIS_VISIBILITY_TIMEOUT_SECONDS,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
    }


def embedded_broker_path(settings: Settings) -> Path:
    return Path(settings.effective_broker_url.removeprefix("sqla+sqlite:///"))


def prepare_embedded_broker(app: PlviCelery) -> None:
    """Create the embedded queue's SQLite file in WAL mode (a property of the file, kept across connections), so
    workers polling the queue do not block the publisher, and create its tables now: kombu creates them on first
    use without a lock, and two processes doing that at once make one of them fail."""
    path = embedded_broker_path(app.plvi_settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    for attempt in range(3):
        try:
            with app.connection_for_write() as broker:
                broker.default_channel.queue_declare(queue=QUEUE_NAME, durable=True, auto_delete=False)
            return
        except sqlalchemy.exc.DatabaseError:  # table or queue row created meanwhile: another process won the race
            if attempt == 2:
                raise
            time.sleep(0.2)


def run_worker(settings: Settings, concurrency: int, *, beat: bool = False) -> None:
    """Run a Celery worker in this process until SIGTERM (warm shutdown: running tasks finish first).

    `beat` embeds the scheduler of the nightly export: `plvi serve` asks for it, a site with separate workers runs
    one `plvi beat` instead."""
    app = make_celery(settings)
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--queues={QUEUE_NAME}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *(["--beat"] if beat else []),
        ]
    )


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies, even by SIGKILL, so a worker of `plvi serve` never
    outlives it and keeps consuming the queue. Done in the child itself: a pre-exec hook is unsafe in a threaded
    parent."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit(f"parent process {parent_pid} is gone; not starting a worker")


if __name__ == "__main__":
    # How `plvi serve` starts its worker (plvi/service.py): python -m workers.celery_app PARENT_PID CONCURRENCY
    parent, concurrency = map(int, sys.argv[1:3])
    die_with_parent(parent)
    configure_logging()
    run_worker(load_settings(), concurrency, beat=True)

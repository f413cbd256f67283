"""`plvi serve`: the whole service as one process tree, for a single machine with embedded defaults.

The main process runs the DICOM listener, the HTTP API and dashboard, a scheduler thread (study tracker, outbox
publisher) and a delivery thread (results to PACS, flags to the RIS), so a slow destination never holds up the
tracker. Celery workers run as child processes that consume the same broker, exactly as separate `plvi worker`
processes would in production; the one child also runs beat, the nightly export's clock. Children get the settings as `PLVI_*` variables, stop on SIGTERM/SIGINT with the parent, and
get SIGTERM from the kernel if the parent is killed outright (workers.celery_app.die_with_parent).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from celery import Celery
from pydantic import SecretStr
from pydantic_settings import NoDecode
from sqlalchemy.engine import Engine

from listener.scp import Listener, start_listener
from listener.tracker import settle_studies
from plvi.db import make_engine, upgrade_database
from plvi.logs import kv
from plvi.outbox import publish_pending, redeliver_unfinished
from plvi.settings import Settings
from reports.hl7 import deliver_hl7, sync_worklist_flags
from reports.sender import deliver_pending
from reports.web.server import ApiServer, start_api
from workers.celery_app import make_celery

log = logging.getLogger(__name__)

PeriodicJob = Callable[[Settings, Engine], int]
# Jobs run every `tracker_interval_seconds`, each returning how much it did: local bookkeeping in the scheduler
# thread (after the tracker and the publisher), network deliveries in their own thread.
PERIODIC_JOBS: list[PeriodicJob] = [redeliver_unfinished]
DELIVERY_JOBS: list[PeriodicJob] = [deliver_pending, sync_worklist_flags, deliver_hl7]

WORKER_STOP_TIMEOUT_SECONDS = 60
WORKER_RESTART_DELAY_SECONDS = 5


def run_service(settings: Settings) -> None:
    """Run listener, scheduler and workers until SIGTERM or SIGINT; then stop them all and return."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())

    url = settings.effective_database_url
    upgrade_database(url)
    engine = make_engine(url)
    celery_app = make_celery(settings)
    if settings.broker_is_embedded:
        # The embedded queue forgets a message its worker had taken when that worker is killed outright (kombu's
        # SQL transport has no visibility timeout), and its workers are our children, killed with us: so at start,
        # publish every unfinished analysis again rather than wait `redeliver_after_seconds` (a repeat is
        # idempotent).
        redeliver_unfinished(settings, engine, older_than_seconds=0)
    workers = WorkerProcess(settings) if settings.serve_workers > 0 else None
    listener: Listener | None = None
    api: ApiServer | None = None
    threads = [
        threading.Thread(target=_every_interval, args=(settings, stop, lambda: run_scheduled_jobs(
            settings, engine, celery_app)), name="plvi-scheduler", daemon=True),
        threading.Thread(target=_every_interval, args=(settings, stop, lambda: _run_jobs(
            settings, engine, DELIVERY_JOBS)), name="plvi-delivery", daemon=True),
    ]
    try:
        # Workers first: forking before the listener and scheduler start threads keeps the children clean.
        if workers is not None:
            workers.start()
        listener = start_listener(settings, engine)
        api = start_api(settings, engine)
        for thread in threads:
            thread.start()
        _announce(settings, api)
        while not stop.wait(1.0):
            if workers is not None:
                workers.restart_if_exited()
    finally:
        log.info(kv("service_stopping"))
        stop.set()
        if listener is not None:
            listener.shutdown()
        if api is not None:
            api.shutdown()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=30)
        if workers is not None:
            workers.stop()
        engine.dispose()
        log.info(kv("service_stopped"))


def run_scheduled_jobs(settings: Settings, engine: Engine, celery_app: Celery) -> None:
    """One pass: settle quiet studies, publish what is due, run the periodic jobs."""
    _run_jobs(settings, engine, [
        settle_studies,
        lambda settings, engine: publish_pending(settings, engine, celery_app),
        *PERIODIC_JOBS,
    ])


def _run_jobs(settings: Settings, engine: Engine, jobs: list[PeriodicJob]) -> None:
    """Run each job once; a failing one is logged and the others still run; the next pass tries again."""
    for job in jobs:
        try:
            job(settings, engine)
        except Exception:
            log.exception(kv("scheduled_job_failed", job=getattr(job, "__name__", repr(job))))


def _every_interval(settings: Settings, stop: threading.Event, one_pass: Callable[[], None]) -> None:
    while not stop.is_set():
        one_pass()
        stop.wait(settings.tracker_interval_seconds)


def _announce(settings: Settings, api: ApiServer) -> None:
    shown_host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    print(
        f"PLVI listening: AE title {settings.ae_title} on {settings.host}:{settings.port}\n"
        f"  data in {settings.data_dir.resolve()}; database {settings.effective_database_url.split('@')[-1]}; "
        f"queue {'embedded ' if settings.broker_is_embedded else ''}{settings.effective_broker_url.split('@')[-1]}; "
        f"{settings.serve_workers} worker process(es); a study is complete after {settings.settle_seconds:g} s quiet\n"
        f"Send a study with:\n"
        f"  storescu -aec {settings.ae_title} +sd +r +sp '*.dcm' {shown_host} {settings.port} path/to/study/\n"
        f"Dashboard and API: {api.url}/ "
        f"(create a user with `plvi user-add`)",
        flush=True,
    )


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as `PLVI_*` variables, so a child process reads exactly what this process was given."""
    environment = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list) and any(meta is NoDecode for meta in field.metadata):
            text = ",".join(map(str, value))
        elif isinstance(value, (list, dict)):
            text = json.dumps(value)
        else:
            text = str(value)
        environment[f"PLVI_{name.upper()}"] = text
    return environment


class WorkerProcess:
    """One Celery worker child with `serve_workers` pool processes, as `plvi worker` runs it; restarted if it dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.exited_at: float | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "workers.celery_app",
            str(os.getpid()),
            str(self.settings.serve_workers),
        ]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **settings_environment(self.settings)},
            start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop the worker ourselves
        )
        self.exited_at = None
        log.info(kv("worker_started", pid=self.process.pid, concurrency=self.settings.serve_workers))

    def restart_if_exited(self) -> None:
        if self.process is None or self.process.poll() is None:
            return
        if self.exited_at is None:
            self.exited_at = time.monotonic()
            log.error(kv("worker_exited", pid=self.process.pid, returncode=self.process.returncode))
        elif time.monotonic() - self.exited_at >= WORKER_RESTART_DELAY_SECONDS:
            self.start()

    def stop(self) -> None:
        """Warm shutdown (running tasks finish); killed if it takes longer than WORKER_STOP_TIMEOUT_SECONDS."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=WORKER_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error(kv("worker_killed", pid=self.process.pid, after_seconds=WORKER_STOP_TIMEOUT_SECONDS))
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

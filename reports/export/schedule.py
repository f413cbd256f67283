"""The nightly export as a Celery beat entry: PLVI_EXPORT_CRON decides when, the task exports what changed."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.schedules import crontab

from plvi.settings import Settings

TASK_NAME = "plvi.cohort_export"
BEAT_ENTRY = "nightly-cohort-export"


def export_crontab(expression: str) -> crontab:
    """`minute hour day-of-month month day-of-week`, as in crontab(5)."""
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                   day_of_week=day_of_week)


def install_nightly_export(app: Celery, settings: Settings) -> None:
    """Register the export task on `app` and add its beat entry. The task takes the settings and engine the app
    carries (workers/celery_app.PlviCelery), so it runs with the worker's configuration."""

    # shared=False: the task belongs to this app only, never to other apps created in the same process.
    @app.task(name=TASK_NAME, acks_late=True, bind=True, shared=False)
    def cohort_export(task: Task) -> int:
        from reports.export.run import nightly_export  # pandas and matplotlib only where the export runs

        return nightly_export(task.app.plvi_settings, task.app.plvi_engine)  # type: ignore[attr-defined]

    schedule: dict[str, Any] = dict(app.conf.beat_schedule or {})
    schedule[BEAT_ENTRY] = {"task": TASK_NAME, "schedule": export_crontab(settings.export_cron)}
    app.conf.beat_schedule = schedule
    # beat remembers when it last ran each entry; keep that with the service's data, not in the working folder
    app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")

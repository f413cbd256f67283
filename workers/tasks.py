"""Celery tasks: thin adapters that take a hand-off from the queue and call the processing code."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from plvi.outbox import analyze_study_key, mark_failed
from workers.processing import process_study


class StudyTask(Task):
    """Retries with exponential backoff; when the retries are spent, the outbox row says why, for the operator."""

    autoretry_for = (Exception,)
    dont_autoretry_for = (LookupError,)
    retry_backoff = 5
    retry_backoff_max = 600
    retry_jitter = True
    max_retries = 8

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        study_uid, instance_set_hash = _arguments(args, kwargs)
        mark_failed(self.app.plvi_engine, analyze_study_key(study_uid, instance_set_hash), repr(exc))


def _arguments(args: Any, kwargs: Any) -> tuple[str, str]:
    values = dict(zip(("study_uid", "instance_set_hash"), args)) | dict(kwargs)
    return values["study_uid"], values["instance_set_hash"]


@shared_task(name="plvi.analyze_study", bind=True, base=StudyTask)
def analyze_study(self: StudyTask, study_uid: str, instance_set_hash: str) -> None:
    """Analyse one settled study for exactly the instance set the tracker saw."""
    process_study(self.app.plvi_settings, self.app.plvi_engine, study_uid, instance_set_hash)

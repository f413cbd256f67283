"""What a worker does with a settled study: analyse the exact instance set the tracker saw, store, hand on.

Idempotent by construction: the analysis row is keyed by (study UID, instance set hash), the result objects' UIDs
and dates derive from that key and from when the study was queued, so a retry after a crash rebuilds byte-identical
objects and stores nothing twice. A task for an instance set that is no longer the study's current one does no work:
a newer analysis supersedes it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import Analysis, Instance, OutboxMessage, Series, Study
from plvi.outbox import analyze_study_key
from plvi.settings import Settings
from reports.masks import store_masks
from reports.objects import build_result_objects
from reports.sender import queue_result_objects
from workers.pipeline import ALGORITHM_VERSION, StudyAnalysis, analyze_paths, result_json
from workers.study_files import read_dataset

log = logging.getLogger(__name__)


def process_study(settings: Settings, engine: Engine, study_uid: str, instance_set_hash: str) -> Analysis | None:
    """Analyse one instance set of a study and store the result, its masks and its report objects.

    Returns the stored analysis, or None when the instance set is no longer the study's current one."""
    key = analyze_study_key(study_uid, instance_set_hash)
    with session_scope(engine) as session:
        study = session.exec(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            raise LookupError(f"study {study_uid} is not in the database; was the database reset under the queue?")
        existing = _analysis_of(session, study_uid, instance_set_hash)
        if existing is not None or study.instance_set_hash != instance_set_hash:
            _mark_done(session, key)
            log.info(kv("analysis_skipped", study_uid=study_uid, instance_set_hash=instance_set_hash[:12],
                        why="already_stored" if existing is not None else "superseded"))
            return existing
        paths = [settings.data_dir / path for path in session.exec(
            select(Instance.path).where(Instance.study_instance_uid == study_uid)).all()]
        series = _series_of(session, study_uid)
        queued_at = _queued_at(session, key)

    analysis = analyze_paths(paths, settings.cutoff)
    analysis.result["instance_set_hash"] = instance_set_hash
    analysis.result["analysed_at"] = queued_at.isoformat()
    analysis.result["series"] = series
    if analysis.masks:
        store_masks(settings, study_uid, instance_set_hash, analysis.masks)

    try:
        return _store(settings, engine, analysis, instance_set_hash, queued_at, key)
    except IntegrityError:
        # Another worker stored the same (study, instance set) between our look-up and our insert: keep its row.
        with session_scope(engine) as session:
            return _analysis_of(session, study_uid, instance_set_hash)


def _store(
    settings: Settings, engine: Engine, analysis: StudyAnalysis, instance_set_hash: str, queued_at: datetime, key: str
) -> Analysis:
    result = analysis.result
    study_uid = result["study_instance_uid"]
    objects = None
    source_path = analysis.source_path or analysis.study_image_path
    if source_path is not None:
        objects = build_result_objects(
            result, analysis.masks, read_dataset(source_path), algorithm_version=ALGORITHM_VERSION,
            instance_set_hash=instance_set_hash, analysed_at=queued_at,
        )
    with session_scope(engine) as session:
        row = Analysis(
            study_instance_uid=study_uid,
            instance_set_hash=instance_set_hash,
            status=result["status"],
            reason=result["reason"],
            plvi=result["plvi"],
            low_psoas_mass=result["low_psoas_mass"],
            result=json.loads(result_json(result)),
            algorithm_version=ALGORITHM_VERSION,
            settings_used={"cutoff": settings.cutoff},
            created_at=queued_at,
        )
        session.add(row)
        session.execute(
            update(Analysis)
            .where(Analysis.study_instance_uid == study_uid, Analysis.instance_set_hash != instance_set_hash)
            .values(superseded=True)
        )
        if objects is not None:
            queue_result_objects(session, settings, objects)
        _mark_done(session, key)
        session.flush()
        session.refresh(row)
    log.info(kv("study_analysed", study_uid=study_uid, instance_set_hash=instance_set_hash[:12],
                status=result["status"], reason=result["reason"] or "", plvi=result["plvi"],
                low_psoas_mass=result["low_psoas_mass"]))
    return row


def _analysis_of(session: Session, study_uid: str, instance_set_hash: str) -> Analysis | None:
    return session.exec(
        select(Analysis).where(
            Analysis.study_instance_uid == study_uid, Analysis.instance_set_hash == instance_set_hash
        )
    ).first()


def _series_of(session: Session, study_uid: str) -> list[dict[str, object]]:
    """Every series the study held when it was analysed, with its instance count, in series-number order."""
    counts = dict(
        session.exec(
            select(Instance.series_instance_uid, func.count())
            .where(Instance.study_instance_uid == study_uid)
            .group_by(Instance.series_instance_uid)
        ).all()
    )
    rows = session.exec(select(Series).where(Series.study_instance_uid == study_uid)).all()
    rows = sorted(rows, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid))
    return [
        {
            "series_instance_uid": s.series_instance_uid,
            "series_number": s.series_number,
            "modality": s.modality,
            "series_description": s.series_description,
            "instances": counts.get(s.series_instance_uid, 0),
        }
        for s in rows
    ]


def _queued_at(session: Session, key: str) -> datetime:
    """When the tracker queued this instance set: a stable analysis time for every retry of it."""
    message = session.exec(select(OutboxMessage).where(OutboxMessage.key == key)).first()
    if message is None:
        raise LookupError(f"no outbox row {key}; the task was not queued by this service's tracker")
    return message.created_at


def _mark_done(session: Session, key: str) -> None:
    session.execute(update(OutboxMessage).where(OutboxMessage.key == key).values(state="done"))

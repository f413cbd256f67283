"""What a worker does with a settled study: load from the database, analyse, store, idempotently.

Until the analysis pipeline is wired in, this records that the study is complete and which series it holds, as an
Analysis row with status "pending". It never invents a measurement.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import Analysis, Instance, OutboxMessage, Series, Study
from plvi.outbox import analyze_study_key
from plvi.settings import Settings

log = logging.getLogger(__name__)


def process_study(settings: Settings, engine: Engine, study_uid: str, instance_set_hash: str) -> Analysis:
    """Record the analysis of one exact instance set of a study; running it twice stores one row.

    Analyses of the study made for any other instance set than the study's current one are marked superseded,
    whatever order the tasks run in."""
    try:
        return _record_analysis(settings, engine, study_uid, instance_set_hash)
    except IntegrityError:
        # Another worker stored the same (study, instance set) between our look-up and our insert: use its row.
        return _record_analysis(settings, engine, study_uid, instance_set_hash)


def _record_analysis(settings: Settings, engine: Engine, study_uid: str, instance_set_hash: str) -> Analysis:
    with session_scope(engine) as session:
        study = session.exec(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            raise LookupError(
                f"study {study_uid} is not in the database; was the database reset under the queue?"
            )
        analysis = session.exec(
            select(Analysis).where(
                Analysis.study_instance_uid == study_uid, Analysis.instance_set_hash == instance_set_hash
            )
        ).first()
        created = analysis is None
        if analysis is None:
            analysis = Analysis(
                study_instance_uid=study_uid,
                instance_set_hash=instance_set_hash,
                status="pending",
                result={"study_instance_uid": study_uid, "series": _series_of(session, study_uid)},
                settings_used={"cutoff": settings.cutoff},
            )
            session.add(analysis)
            session.flush()
        if study.instance_set_hash is not None:
            session.execute(
                update(Analysis)
                .where(
                    Analysis.study_instance_uid == study_uid,
                    Analysis.instance_set_hash != study.instance_set_hash,
                    Analysis.superseded.is_(False),
                )
                .values(superseded=True)
            )
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.key == analyze_study_key(study_uid, instance_set_hash))
            .values(state="done")
        )
        session.flush()
        session.refresh(analysis)
    log.info(
        kv(
            "study_recorded" if created else "study_already_recorded",
            study_uid=study_uid,
            instance_set_hash=instance_set_hash[:12],
            series=len(analysis.result["series"]),
            superseded=analysis.superseded,
        )
    )
    return analysis


def _series_of(session: Session, study_uid: str) -> list[dict[str, object]]:
    """The series of the study with their instance counts, in series-number order."""
    counts = dict(
        session.exec(
            select(Instance.series_instance_uid, func.count())
            .where(Instance.study_instance_uid == study_uid)
            .group_by(Instance.series_instance_uid)
        ).all()
    )
    series = session.exec(select(Series).where(Series.study_instance_uid == study_uid)).all()
    series = sorted(
        series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)
    )
    return [
        {
            "series_instance_uid": s.series_instance_uid,
            "series_number": s.series_number,
            "modality": s.modality,
            "series_description": s.series_description,
            "instances": counts.get(s.series_instance_uid, 0),
        }
        for s in series
    ]

"""What the dashboard shows and records, as plain functions over a session: the worklist, one study, reviews,
the audit log. The API and the pages are thin over these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import func, nulls_last
from sqlmodel import Session, select

from plvi.models import Analysis, AuditEvent, Instance, Review, Series, Study

DECISIONS = ("confirmed", "rejected", "remeasure")
STATUSES = ("ok", "needs_review", "not_measurable", "pending")


def day_start(day: date) -> datetime:
    """Midnight UTC of `day`: the worklist's date filters are whole UTC days."""
    return datetime.combine(day, time.min, tzinfo=UTC)


@dataclass(frozen=True)
class WorklistFilter:
    low_psoas_mass: bool | None = None
    statuses: tuple[str, ...] = ()
    received_from: datetime | None = None
    received_before: datetime | None = None
    limit: int = 100
    offset: int = 0


def _current_analysis_ids():  # type: ignore[no-untyped-def]
    """(study UID, id of its newest analysis that no newer instance set has superseded), one row per study."""
    return (
        select(Analysis.study_instance_uid.label("study_uid"), func.max(Analysis.id).label("id"))
        .where(Analysis.superseded.is_(False))  # type: ignore[attr-defined]
        .group_by(Analysis.study_instance_uid)
        .subquery()
    )


def worklist(session: Session, flt: WorklistFilter) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, one page of rows): low psoas mass first, then the newest arrivals."""
    current = _current_analysis_ids()
    # Joined through the grouped subquery (not `IN (...)` per row), so the database builds it once.
    query = (
        select(Study, Analysis)
        .outerjoin(current, current.c.study_uid == Study.study_instance_uid)
        .outerjoin(Analysis, Analysis.id == current.c.id)  # type: ignore[arg-type]
    )
    if flt.low_psoas_mass is not None:
        query = query.where(Analysis.low_psoas_mass.is_(flt.low_psoas_mass))  # type: ignore[union-attr]
    if flt.statuses:
        wanted = [s for s in flt.statuses if s != "pending"]
        condition = Analysis.status.in_(wanted)  # type: ignore[attr-defined]
        if "pending" in flt.statuses:
            condition = condition | Analysis.id.is_(None) | (Analysis.status == "pending")  # type: ignore[union-attr]
        query = query.where(condition)
    if flt.received_from is not None:
        query = query.where(Study.first_received_at >= flt.received_from)
    if flt.received_before is not None:
        query = query.where(Study.first_received_at < flt.received_before)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    page = session.exec(
        query.order_by(
            nulls_last(Analysis.low_psoas_mass.desc()),  # type: ignore[union-attr]
            Study.first_received_at.desc(),  # type: ignore[attr-defined]
            Study.id.desc(),  # type: ignore[union-attr]
        ).offset(flt.offset).limit(flt.limit)
    ).all()
    reviews = latest_reviews(session, [a.id for _, a in page if a is not None])
    return total, [_worklist_row(study, analysis, reviews.get(analysis.id) if analysis else None)
                   for study, analysis in page]


def latest_reviews(session: Session, analysis_ids: list[int | None]) -> dict[int, Review]:
    ids = [i for i in analysis_ids if i is not None]
    if not ids:
        return {}
    newest: dict[int, Review] = {}
    for review in session.exec(
        select(Review).where(Review.analysis_id.in_(ids)).order_by(Review.created_at, Review.id)  # type: ignore[attr-defined]
    ).all():
        newest[review.analysis_id] = review
    return newest


def _study_fields(study: Study) -> dict[str, Any]:
    """What the worklist and the study page both say about a study."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "received_at": study.first_received_at,
    }


def _worklist_row(study: Study, analysis: Analysis | None, review: Review | None) -> dict[str, Any]:
    return _study_fields(study) | {
        "status": analysis.status if analysis else "pending",
        "reason": analysis.reason if analysis else None,
        "plvi": analysis.plvi if analysis else None,
        "low_psoas_mass": analysis.low_psoas_mass if analysis else None,
        "review": review_dict(review) if review else None,
    }


def review_dict(review: Review) -> dict[str, Any]:
    return {
        "decision": review.decision,
        "reason": review.reason,
        "reviewer": review.reviewer,
        "created_at": review.created_at,
        "analysis_id": review.analysis_id,
    }


def current_analysis(session: Session, study_uid: str) -> Analysis | None:
    return session.exec(
        select(Analysis)
        .where(Analysis.study_instance_uid == study_uid, Analysis.superseded.is_(False))  # type: ignore[attr-defined]
        .order_by(Analysis.id.desc())  # type: ignore[union-attr]
    ).first()


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    """Everything the study page shows; None when the study is unknown."""
    study = session.exec(select(Study).where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        return None
    analysis = current_analysis(session, study_uid)
    counts = dict(session.exec(
        select(Instance.series_instance_uid, func.count())
        .where(Instance.study_instance_uid == study_uid).group_by(Instance.series_instance_uid)
    ).all())
    result = analysis.result if analysis else {}
    used = {(result.get("slice") or {}).get("series_instance_uid"), (result.get("level") or {}).get("series_instance_uid")}
    classified = (result.get("qc") or {}).get("series") or {}
    series = [
        {"series_instance_uid": s.series_instance_uid, "series_number": s.series_number, "modality": s.modality,
         "series_description": s.series_description, "instances": counts.get(s.series_instance_uid, 0),
         "used_for": _used_for(s.series_instance_uid, result) if s.series_instance_uid in used else None,
         "classified_as": _classification(classified.get(s.series_instance_uid))}
        for s in sorted(session.exec(select(Series).where(Series.study_instance_uid == study_uid)).all(),
                        key=lambda s: (s.series_number is None, s.series_number or 0))
    ]
    reviews = session.exec(
        select(Review).where(Review.study_instance_uid == study_uid).order_by(Review.created_at.desc(), Review.id.desc())  # type: ignore[attr-defined]
    ).all()
    return _study_fields(study) | {
        "state": study.state,
        "analysis": None if analysis is None else {
            "id": analysis.id, "status": analysis.status, "reason": analysis.reason, "plvi": analysis.plvi,
            "low_psoas_mass": analysis.low_psoas_mass, "algorithm_version": analysis.algorithm_version,
            "created_at": analysis.created_at, "result": analysis.result,
        },
        "series": series,
        "reviews": [review_dict(r) | {"current": analysis is not None and r.analysis_id == analysis.id}
                    for r in reviews],
    }


def _classification(found: dict[str, Any] | None) -> str | None:
    """How the analysis saw a series (orientation, weighting, why it was skipped), as one phrase."""
    if not found:
        return None
    words = [str(found.get(key)) for key in ("orientation", "weighting") if found.get(key) not in (None, "")]
    if found.get("skipped"):
        words.append(f"skipped: {found['skipped']}")
    return ", ".join(words)


def quality_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality gate's checks as rows (name, value, limit, passed), failed ones first."""
    checks = (result.get("qc") or {}).get("checks") or {}
    rows = [
        {"name": name, "value": check.get("value"), "limit": check.get("limit"), "passed": bool(check.get("pass"))}
        for name, check in checks.items()
        if isinstance(check, dict)
    ]
    return sorted(rows, key=lambda row: row["passed"])


def _used_for(series_uid: str, result: dict[str, Any]) -> str:
    roles = []
    if (result.get("slice") or {}).get("series_instance_uid") == series_uid:
        roles.append("measurement (axial)")
    if (result.get("level") or {}).get("series_instance_uid") == series_uid:
        roles.append("level finding (sagittal)")
    return ", ".join(roles)


def record_review(session: Session, study_uid: str, decision: str, reason: str, reviewer: str) -> Review:
    """Store a decision on the study's current analysis. LookupError: nothing to review; ValueError: bad input."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    reason = reason.strip()
    if decision != "confirmed" and not reason:
        raise ValueError(f"a {decision} decision needs a reason, for the next reader and the audit log")
    analysis = current_analysis(session, study_uid)
    if analysis is None or analysis.status == "pending":
        raise LookupError(f"study {study_uid} has no finished analysis to review yet")
    assert analysis.id is not None
    review = Review(study_instance_uid=study_uid, analysis_id=analysis.id, decision=decision, reason=reason[:500],
                    reviewer=reviewer)
    session.add(review)
    session.flush()
    return review


def audit(session: Session, username: str, action: str, study_uid: str | None = None, **detail: Any) -> None:
    session.add(AuditEvent(username=username, action=action, study_instance_uid=study_uid, detail=detail))


def audit_events(session: Session, study_uid: str | None, limit: int) -> list[AuditEvent]:
    query = select(AuditEvent)
    if study_uid:
        query = query.where(AuditEvent.study_instance_uid == study_uid)
    return list(session.exec(query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)).all())  # type: ignore[attr-defined]

"""Recording a review from either door (API or page): one transaction with its audit event, HTTP errors that say
what was wrong."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException
from sqlalchemy.engine import Engine

from plvi.db import session_scope
from plvi.logs import kv
from plvi.models import User
from reports.web.worklist import audit, record_review, review_dict, study_detail

log = logging.getLogger(__name__)


def submit_review(engine: Engine, study_uid: str, decision: str, reason: str, user: User, *, via: str) -> dict[str, Any]:
    """Record a review and its audit event in one transaction; HTTP errors say what was wrong."""
    with session_scope(engine) as session:
        if study_detail(session, study_uid) is None:
            raise HTTPException(404, detail=f"no study {study_uid} has been received")
        try:
            review = record_review(session, study_uid, decision, reason, user.username)
        except ValueError as error:
            raise HTTPException(400, detail=str(error)) from error
        except LookupError as error:
            raise HTTPException(409, detail=str(error)) from error
        audit(session, user.username, "review", study_uid, decision=decision, analysis_id=review.analysis_id, via=via)
        result = review_dict(review)
    log.info(kv("study_reviewed", study_uid=study_uid, decision=decision, reviewer=user.username))
    return result

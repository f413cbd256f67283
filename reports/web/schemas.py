"""The JSON shapes of the API, so the OpenAPI schema says exactly what the routes return."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Decision = Literal["confirmed", "rejected", "remeasure"]
Status = Literal["ok", "needs_review", "not_measurable", "pending"]


class Problem(BaseModel):
    detail: Any = Field(description="what was wrong and how to fix it")


class ReviewIn(BaseModel):
    decision: Decision
    reason: str = Field(default="", max_length=500, description="required unless the decision is confirmed")


class ReviewOut(BaseModel):
    decision: Decision
    reason: str
    reviewer: str
    created_at: datetime
    analysis_id: int
    current: bool | None = None


class WorklistItem(BaseModel):
    study_instance_uid: str
    patient_id: str
    accession_number: str
    study_date: str
    received_at: datetime
    status: Status
    reason: str | None
    plvi: float | None
    low_psoas_mass: bool | None
    review: ReviewOut | None


class Worklist(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[WorklistItem]


class AnalysisOut(BaseModel):
    id: int
    status: Status
    reason: str | None
    plvi: float | None
    low_psoas_mass: bool | None
    algorithm_version: str
    created_at: datetime
    result: dict[str, Any] = Field(description="the result object of DESIGN.md")


class SeriesOut(BaseModel):
    series_instance_uid: str
    series_number: int | None
    modality: str
    series_description: str
    instances: int
    used_for: str | None
    classified_as: str | None = Field(description="orientation, weighting and skip reason the analysis found")


class StudyDetail(BaseModel):
    study_instance_uid: str
    patient_id: str
    accession_number: str
    study_date: str
    received_at: datetime
    state: str
    analysis: AnalysisOut | None
    series: list[SeriesOut]
    reviews: list[ReviewOut]


class AuditOut(BaseModel):
    at: datetime
    username: str
    action: str
    study_instance_uid: str | None
    detail: dict[str, Any]


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="what the token is for, e.g. 'research-notebook'")


class TokenOut(BaseModel):
    name: str
    token: str = Field(description="shown once; send as 'Authorization: Bearer <token>'")


class Me(BaseModel):
    username: str
    full_name: str


class Health(BaseModel):
    status: Literal["ok", "failing"]
    checks: dict[str, str]

"""Collect the cohort from the database and the stored DICOM headers, pseudonymised on the way in: the patient ID,
names and full dates never enter the table that is written."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pydicom
from sqlalchemy import or_
from sqlmodel import Session, select

from plvi.logs import kv
from plvi.models import Analysis, Instance, Review, Study
from reports.export.pseudonym import age_band, age_in_years, pseudonym, sex_code, year_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype of the written column
    unit: str
    description: str


# The one definition of the export's columns: their order in the files and the data dictionary.
COLUMNS: tuple[Column, ...] = (
    Column("pseudonym", "string", "", "keyed HMAC-SHA256 of the patient ID (PLVI_EXPORT_KEY); stable across exports"),
    Column("study_key", "string", "", "keyed HMAC-SHA256 of the Study Instance UID; tells studies apart"),
    Column("study_year", "Int64", "year", "year of the study date (dates are reduced to the year)"),
    Column("age_years", "Int64", "years", "age at the study from PatientAge or birth date; ages over 89 are 90"),
    Column("age_band", "string", "", "ten-year age band: <50, 50-59, 60-69, 70-79, 80-89, 90+, unknown"),
    Column("sex", "string", "", "PatientSex: F, M, O (other) or U (unknown)"),
    Column("status", "string", "", "ok, needs_review or not_measurable"),
    Column("reason", "string", "", "machine-readable reason when status is not ok"),
    Column("plvi", "Float64", "ratio", "(left + right psoas area) / L4 vertebral body area"),
    Column("psoas_left_mm2", "Float64", "mm2", "left psoas cross-sectional area below the L4 upper endplate"),
    Column("psoas_right_mm2", "Float64", "mm2", "right psoas cross-sectional area"),
    Column("vertebra_mm2", "Float64", "mm2", "L4 vertebral body cross-sectional area"),
    Column("low_psoas_mass", "boolean", "", "PLVI below the cut-off"),
    Column("cutoff", "Float64", "ratio", "the cut-off the flag used"),
    Column("level_method", "string", "", "sagittal (L4 found on a sagittal series) or axial_only"),
    Column("review_decision", "string", "", "newest reader decision: confirmed, rejected, remeasure, or empty"),
    Column("algorithm_version", "string", "", "version of the measuring algorithm"),
    Column("analysis_year", "Int64", "year", "year the analysis was made"),
)
COLUMN_NAMES = [column.name for column in COLUMNS]


@dataclass(frozen=True)
class Demographics:
    age_years: int | None
    sex: str
    study_year: int | None


def read_demographics(path: Path, fallback_study_date: str) -> Demographics:
    """Age, sex and study year from one stored instance's header (pixels are not read)."""
    try:
        header = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["PatientAge", "PatientBirthDate", "PatientSex", "StudyDate"]
        )
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        log.warning(kv("export_header_unreadable", path=path.name, error=type(error).__name__))
        return Demographics(None, "U", year_of(fallback_study_date))
    study_date = str(header.get("StudyDate", "") or fallback_study_date)
    return Demographics(
        age_in_years(str(header.get("PatientAge", "")), str(header.get("PatientBirthDate", "")), study_date),
        sex_code(str(header.get("PatientSex", ""))),
        year_of(study_date),
    )


def current_analyses(session: Session, since: datetime | None, until: datetime) -> list[Analysis]:
    """The current (not superseded, finished) analysis of every study analysed or reviewed in (since, until]."""
    query = select(Analysis).where(
        Analysis.superseded.is_(False), Analysis.status != "pending", Analysis.created_at <= until
    )
    if since is not None:
        reviewed = select(Review.analysis_id).where(Review.created_at > since, Review.created_at <= until)
        query = query.where(or_(Analysis.created_at > since, Analysis.id.in_(reviewed)))  # type: ignore[union-attr]
    return list(session.exec(query.order_by(Analysis.created_at, Analysis.id)).all())


def collect_cohort(
    session: Session,
    data_dir: Path,
    key: str,
    *,
    since: datetime | None,
    until: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One pseudonymised row per study, in the order and types of COLUMNS."""
    analyses = current_analyses(session, since, until)
    rows = []
    for done, analysis in enumerate(analyses, start=1):
        study = session.exec(select(Study).where(Study.study_instance_uid == analysis.study_instance_uid)).first()
        if study is None:
            continue
        rows.append(_row(session, data_dir, key, study, analysis))
        if progress:
            progress(done, len(analyses))
    frame = pd.DataFrame(rows, columns=COLUMN_NAMES)
    return frame.astype({column.name: column.dtype for column in COLUMNS})


def _row(session: Session, data_dir: Path, key: str, study: Study, analysis: Analysis) -> dict[str, object]:
    result = analysis.result or {}
    instance = _header_instance(session, study.study_instance_uid, result)
    demographics = (
        read_demographics(data_dir / instance.path, study.study_date)
        if instance is not None
        else Demographics(None, "U", year_of(study.study_date))
    )
    review = session.exec(
        select(Review).where(Review.analysis_id == analysis.id).order_by(Review.created_at.desc(), Review.id.desc())  # type: ignore[union-attr]
    ).first()
    return {
        "pseudonym": pseudonym(study.patient_id, key),
        "study_key": pseudonym(study.study_instance_uid, key, prefix="S"),
        "study_year": demographics.study_year,
        "age_years": demographics.age_years,
        "age_band": age_band(demographics.age_years),
        "sex": demographics.sex,
        "status": analysis.status,
        "reason": analysis.reason,
        "plvi": result.get("plvi"),
        "psoas_left_mm2": result.get("psoas_left_mm2"),
        "psoas_right_mm2": result.get("psoas_right_mm2"),
        "vertebra_mm2": result.get("vertebra_mm2"),
        "low_psoas_mass": result.get("low_psoas_mass"),
        "cutoff": result.get("cutoff", (analysis.settings_used or {}).get("cutoff")),
        "level_method": result.get("level_method"),
        "review_decision": review.decision if review else None,
        "algorithm_version": analysis.algorithm_version,
        "analysis_year": analysis.created_at.year,
    }


def _header_instance(session: Session, study_uid: str, result: dict[str, object]) -> Instance | None:
    """The measured slice when known (its header is the one the number came from), else any instance."""
    slice_ref = result.get("slice") or {}
    sop_uid = slice_ref.get("sop_instance_uid") if isinstance(slice_ref, dict) else None
    if sop_uid:
        instance = session.exec(select(Instance).where(Instance.sop_instance_uid == sop_uid)).first()
        if instance is not None:
            return instance
    return session.exec(select(Instance).where(Instance.study_instance_uid == study_uid)).first()

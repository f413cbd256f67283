"""Pure pseudonymisation: keyed hashes instead of identifiers, years instead of dates, age bands instead of ages.

A keyed HMAC (not a plain hash) because patient IDs are short and guessable: without the key nobody can hash
candidate IDs and match them. The same key gives the same pseudonym in every export, so a researcher can link
exports and an outcome table keyed by pseudonym; another key gives unrelated pseudonyms."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date

# HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(C)): ages over 89 are aggregated into one category.
OLDEST_REPORTED_AGE = 90
AGE_BANDS = ("<50", "50-59", "60-69", "70-79", "80-89", "90+", "unknown")


def pseudonym(identifier: str, key: str, *, prefix: str = "P") -> str:
    """`prefix` + the first 20 hex digits (80 bits) of HMAC-SHA256(key, identifier)."""
    if not key:
        raise ValueError("the pseudonym key is empty: set PLVI_EXPORT_KEY to a long random secret and keep it")
    digest = hmac.new(key.encode("utf-8"), identifier.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return prefix + digest[:20]


def year_of(dicom_date: str) -> int | None:
    """The year of a DICOM DA value (YYYYMMDD); None when absent or malformed."""
    match = re.fullmatch(r"\s*(\d{4})\d{4}\s*", dicom_date or "")
    return int(match.group(1)) if match else None


def _parse_da(value: str) -> date | None:
    match = re.fullmatch(r"\s*(\d{4})(\d{2})(\d{2})\s*", value or "")
    if not match:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def age_in_years(patient_age: str, birth_date: str, study_date: str) -> int | None:
    """Age at the study from PatientAge (AS, e.g. `067Y`), else from PatientBirthDate and StudyDate; capped at 90."""
    match = re.fullmatch(r"\s*(\d{3})([DWMY])\s*", patient_age or "")
    age: int | None = None
    if match:
        number, unit = int(match.group(1)), match.group(2)
        age = number if unit == "Y" else number // {"M": 12, "W": 52, "D": 365}[unit]
    else:
        born, studied = _parse_da(birth_date), _parse_da(study_date)
        if born and studied and studied >= born:
            age = studied.year - born.year - ((studied.month, studied.day) < (born.month, born.day))
    return None if age is None else min(age, OLDEST_REPORTED_AGE)


def age_band(age: int | None) -> str:
    """Ten-year bands as the summary reports them: `<50`, `50-59`, ..., `80-89`, `90+`."""
    if age is None:
        return "unknown"
    if age < 50:
        return "<50"
    if age >= OLDEST_REPORTED_AGE:
        return "90+"
    low = age // 10 * 10
    return f"{low}-{low + 9}"


def sex_code(patient_sex: str) -> str:
    """PatientSex as F, M, O, or U for unknown."""
    value = (patient_sex or "").strip().upper()
    return value if value in {"F", "M", "O"} else "U"

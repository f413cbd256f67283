"""Where the real DICOM cases are (../shared/data/real beside the checkout, as the README of that folder says).

A fresh clone may sit anywhere, so the folder is looked for beside the checkout, then at the workplace's fixed
path; PLVI_REAL_DATA names it explicitly."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real",
    Path("/work/shared/data/real"),
]


def real_data_dir() -> Path:
    """The folder of real cases; a path that does not exist when none is found (tests that need it then skip)."""
    explicit = os.environ.get("PLVI_REAL_DATA")
    if explicit:
        return Path(explicit)
    return next((path for path in _CANDIDATES if path.is_dir()), _CANDIDATES[0])


REAL_DATA = real_data_dir()

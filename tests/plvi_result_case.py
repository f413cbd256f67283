"""A measured result on a real axial T2 slice, filled by hand in the shape of DESIGN.md's result object, for the
report tests: MuscleMap instance 16 with its psoas labels (model output) and a hand-placed L4 vertebral body."""

from __future__ import annotations

import copy
import gzip
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from tests.real_data import REAL_DATA

CASE = REAL_DATA / "musclemap-t2ax"
INSTANCE = 16
NIFTI_TYPES = {2: "u1", 4: "<i2", 8: "<i4", 16: "<f4", 256: "i1", 512: "<u2"}


def read_labels(path: Path) -> np.ndarray:
    """A NIfTI-1 label volume as (i, j, k); the case's README maps i = column, j = row, k = instance - 1."""
    raw = gzip.decompress(path.read_bytes())
    shape = tuple(int(n) for n in np.frombuffer(raw, "<i2", 3, 42))
    dtype = NIFTI_TYPES[int(np.frombuffer(raw, "<i2", 1, 70)[0])]
    offset = int(np.frombuffer(raw, "<f4", 1, 108)[0])
    return np.frombuffer(raw, dtype, int(np.prod(shape)), offset).reshape(shape, order="F")


def real_slice_case() -> tuple[pydicom.Dataset, dict[str, np.ndarray], dict[str, Any]]:
    """(source slice, masks, result) with areas computed from the masks and PixelSpacing."""
    source = pydicom.dcmread(CASE / "dicom" / f"IM-0001-{INSTANCE:04d}.dcm")
    labels = read_labels(CASE / "labels.nii.gz")[:, :, INSTANCE - 1].T  # (row, column)
    rows, columns = np.mgrid[: source.Rows, : source.Columns]
    masks = {
        "psoas_right": labels == 5,
        "psoas_left": labels == 6,
        "vertebra": ((rows - 80) / 20.0) ** 2 + ((columns - 127) / 21.0) ** 2 <= 1.0,
    }
    pixel_mm2 = float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
    areas = {key: round(float(mask.sum()) * pixel_mm2, 1) for key, mask in masks.items()}
    plvi = round((areas["psoas_left"] + areas["psoas_right"]) / areas["vertebra"], 3)
    result = {
        "study_instance_uid": str(source.StudyInstanceUID),
        "status": "ok",
        "reason": None,
        "plvi": plvi,
        "psoas_left_mm2": areas["psoas_left"],
        "psoas_right_mm2": areas["psoas_right"],
        "vertebra_mm2": areas["vertebra"],
        "cutoff": 0.79,
        "low_psoas_mass": plvi < 0.79,
        "slice": {
            "series_instance_uid": str(source.SeriesInstanceUID),
            "sop_instance_uid": str(source.SOPInstanceUID),
            "instance_number": INSTANCE,
        },
        "level_method": "axial_only",
        "level": None,
        "qc": {},
        "timings_ms": {},
    }
    return source, masks, result


def not_measurable(result: dict[str, Any]) -> dict[str, Any]:
    """The same study, not measurable: no numbers, a reason word and its sentence."""
    unmeasured = copy.deepcopy(result)
    unmeasured.update(
        status="not_measurable",
        reason="l4_not_covered",
        reason_text="The axial stack does not reach the upper endplate of L4.",
        plvi=None,
        psoas_left_mm2=None,
        psoas_right_mm2=None,
        vertebra_mm2=None,
        low_psoas_mass=None,
        slice=None,
    )
    return unmeasured


# Warnings dciodvfy gives on our objects that are expected, each explained:
EXPLAINED_WARNINGS = (
    # The private coding scheme 99PLVI (reports/codes.py) is declared in each object's Coding Scheme
    # Identification Sequence; dciodvfy only knows the standard's designators.
    "Unrecognized defined term <99PLVI>",
    # The real source slice has empty Study Date, Study Time and Study ID (its README: not invented); we copy the
    # study as it is rather than invent values, so a DICOMDIR builder would lack them.
    "needed to build DICOMDIR - Study Date",
    "needed to build DICOMDIR - Study Time",
    "needed to build DICOMDIR - Study ID",
    # Key image: General Series Laterality (Type 2C) is present and empty for the unpaired lumbar spine; absent,
    # dciodvfy reports a missing Type 2C element as an error (see reports/keyimage.py).
    "should be absent (not empty) if an unpaired body part",
)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, unexplained warnings) that dicom3tools' dciodvfy reports for the file."""
    completed = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (completed.stdout + completed.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [
        line for line in lines
        if line.startswith("Warning") and not any(explained in line for explained in EXPLAINED_WARNINGS)
    ]
    return errors, warnings

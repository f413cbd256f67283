"""Areas and PLVI from a slice segmentation: PLVI = (left + right psoas area) / L4 vertebral body area."""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.analysis.segmentation import SliceSegmentation


@dataclass(frozen=True)
class Measurement:
    """Areas in mm2 in the slice plane; ``plvi`` is None when the vertebral body area is zero (nothing to divide by).

    ``low_psoas_mass`` is ``plvi < cutoff`` (None without a PLVI); the cut-off travels with the number so every
    report can state which one it used.
    """

    psoas_left_mm2: float
    psoas_right_mm2: float
    vertebra_mm2: float
    plvi: float | None
    cutoff: float
    low_psoas_mass: bool | None


def measure_plvi(
    segmentation: SliceSegmentation, pixel_spacing_mm: tuple[float, float], cutoff: float
) -> Measurement:
    """Areas as pixel count x row spacing x column spacing (DICOM PixelSpacing, mm), and PLVI against ``cutoff``."""
    row_mm, column_mm = (float(value) for value in pixel_spacing_mm)
    if not (math.isfinite(row_mm) and math.isfinite(column_mm) and row_mm > 0 and column_mm > 0):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers (row, column), got {pixel_spacing_mm}")
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive number (the PLVI threshold, e.g. 0.79), got {cutoff}")
    pixel_mm2 = row_mm * column_mm
    psoas_left = float(segmentation.psoas_left.sum()) * pixel_mm2
    psoas_right = float(segmentation.psoas_right.sum()) * pixel_mm2
    vertebra = float(segmentation.vertebra.sum()) * pixel_mm2
    plvi = (psoas_left + psoas_right) / vertebra if vertebra > 0 else None
    return Measurement(
        psoas_left_mm2=psoas_left,
        psoas_right_mm2=psoas_right,
        vertebra_mm2=vertebra,
        plvi=plvi,
        cutoff=float(cutoff),
        low_psoas_mass=None if plvi is None else plvi < cutoff,
    )

"""One study from files to the result object: series choice, L4, slice choice, segmentation, PLVI, quality gate.

The same code serves the Celery worker and `plvi analyze`. Expected outcomes (no axial T2, L4 not covered, ...) are
results with a reason, never exceptions; exceptions are faults (unreadable input, a bug).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plvi import __version__
from workers.analysis.geometry import (
    PATIENT_LEFT,
    PATIENT_POSTERIOR,
    position_along,
    slice_geometry,
    slice_normal,
    volume_geometry,
)
from workers.analysis.levels import LevelFinding, find_l4_upper_endplate
from workers.analysis.measure import measure_plvi
from workers.analysis.quality import assess_next_slice, assess_quality
from workers.analysis.segmentation import SliceSegmentation, segment_slice
from workers.analysis.series import AxialSlice, InstanceHeader, SeriesChoice, SeriesHeader, choose_series
from workers.analysis.slices import choose_axial_slice
from workers.study_files import load_image, load_volume, read_study_headers

ALGORITHM_VERSION = __version__
# Below this the level is reported but the number goes to a human: an off-by-one level is the costliest error.
MIN_LEVEL_CONFIDENCE = 0.6
# BodyPartExamined values (PS3.16 CID 4031 and vendor habits) that say the study is not of the lumbar spine.
NOT_LUMBAR_BODY_PARTS = {"CSPINE", "TSPINE", "HEAD", "BRAIN", "NECK", "CHEST", "KNEE", "SHOULDER", "HIP", "ANKLE"}

REASON_TEXT = {
    "not_mri": "The study is not MRI; PLVI is defined on axial T2-weighted MRI of the lumbar spine.",
    "not_lumbar_spine": "The study is not of the lumbar spine (BodyPartExamined says {body_part}).",
    "no_axial_t2": "No axial T2-weighted series was found; send the lumbar axial T2 with the study.",
    "no_pixel_spacing": "The axial images carry no PixelSpacing, so areas in mm2 cannot be given.",
    "single_slice": "The axial series holds a single image and no sagittal series places it; its level is unknown.",
    "no_sagittal": "There is no sagittal series to find L4 on, and the axial series alone cannot place L4; "
    "send the sagittal T2 or T1 with the study.",
    "l4_not_found": "L4 could not be identified on the sagittal series (fewer than three discs seen above the sacrum).",
    "frame_of_reference_mismatch": "The sagittal and axial series have different frames of reference, so the L4 "
    "level found on the sagittal cannot be placed on the axial images.",
    "l4_not_covered": "No axial slice lies within 10 mm below the L4 upper endplate; the axial series does not "
    "cover the top of L4.",
    "level_uncertain": "The vertebrae were counted from the sacrum with low confidence; check that the measured "
    "slice is at L4.",
}


@dataclass
class StudyAnalysis:
    """The result object (DESIGN.md, every key), the masks on the chosen slice, and that slice's file and pixels.

    `study_image_path` is some image of the study, the source for an SR that says a study was not measurable."""

    result: dict[str, Any]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    source_path: Path | None = None
    image: np.ndarray | None = None
    study_image_path: Path | None = None


def empty_result(study_uid: str, cutoff: float) -> dict[str, Any]:
    """Every key of the result object, with nothing measured yet."""
    return {
        "study_instance_uid": study_uid,
        "status": "not_measurable",
        "reason": None,
        "reason_text": None,
        "plvi": None,
        "psoas_left_mm2": None,
        "psoas_right_mm2": None,
        "vertebra_mm2": None,
        "cutoff": cutoff,
        "low_psoas_mass": None,
        "slice": None,
        "level_method": None,
        "level": None,
        "qc": {},
        "timings_ms": {},
        "algorithm_version": ALGORITHM_VERSION,
    }


class _Timer:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round((time.perf_counter() - start) * 1000, 1)


def _refuse(analysis: StudyAnalysis, reason: str, **details: str) -> StudyAnalysis:
    analysis.result["status"] = "not_measurable"
    analysis.result["reason"] = reason
    analysis.result["reason_text"] = REASON_TEXT[reason].format(**details)
    return analysis


def _sorted_stack(series: SeriesHeader) -> list[InstanceHeader]:
    """The series' largest stack of like images (same size, same orientation), one per position, sorted along its
    normal: patient geometry decides the order, never instance numbers."""
    stacks: dict[tuple, list[InstanceHeader]] = {}
    for instance in series.instances:
        if instance.position and instance.orientation and instance.pixel_spacing:
            key = (instance.rows, instance.columns, tuple(round(v, 3) for v in instance.orientation))
            stacks.setdefault(key, []).append(instance)
    if not stacks:
        return []
    by_position = {tuple(round(v, 1) for v in i.position): i for i in max(stacks.values(), key=len)}  # type: ignore[union-attr]
    normal = slice_normal(next(iter(by_position.values())).orientation)  # type: ignore[arg-type]
    return sorted(by_position.values(), key=lambda i: position_along(i.position, normal))  # type: ignore[arg-type]


def _find_level(series: SeriesHeader) -> LevelFinding:
    stack = _sorted_stack(series)
    if len(stack) < 3:
        return LevelFinding(None, None, 0.0, "l4_not_found", {"slices": float(len(stack))})
    geometry = volume_geometry(
        [slice_geometry(i.position, i.orientation, i.pixel_spacing, i.rows, i.columns) for i in stack]
    )
    return find_l4_upper_endplate(load_volume(stack), geometry)


def analyze_paths(paths: Sequence[Path], cutoff: float) -> StudyAnalysis:
    """Analyse one study given as DICOM files and/or folders."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    timer = _Timer(timings)
    with timer.step("read_headers"):
        study = read_study_headers(paths)
    analysis = StudyAnalysis(
        result=empty_result(study.study_instance_uid, cutoff), study_image_path=study.series[0].instances[0].path
    )
    try:
        _analyze(study.series, analysis, timer, cutoff)
    finally:
        qc = analysis.result["qc"]
        qc["unreadable_files"] = len(study.unreadable)
        timings["total"] = round((time.perf_counter() - started) * 1000, 1)
        analysis.result["timings_ms"] = timings
    return analysis


def _analyze(series_list: list[SeriesHeader], analysis: StudyAnalysis, timer: _Timer, cutoff: float) -> None:
    result = analysis.result
    qc = result["qc"]
    with timer.step("choose_series"):
        choice = choose_series(series_list)
    qc["series"] = choice.classified
    qc["axial_series"] = choice.axial_series_uids
    qc["axial_weighting"] = choice.axial_weighting
    qc["sagittal_series"] = choice.sagittal.series_instance_uid if choice.sagittal else None
    qc["duplicate_positions_dropped"] = choice.duplicate_positions_dropped

    if choice.modality != "MR":
        _refuse(analysis, "not_mri")
        return
    not_lumbar = [part for part in choice.body_parts if part in NOT_LUMBAR_BODY_PARTS]
    if not_lumbar:
        _refuse(analysis, "not_lumbar_spine", body_part=", ".join(not_lumbar))
        return

    level = _level_of(choice, analysis, timer)
    if not choice.axial_slices:
        _refuse(analysis, "no_axial_t2")
        return
    if any(s.header.pixel_spacing is None for s in choice.axial_slices):
        _refuse(analysis, "no_pixel_spacing")
        return
    if choice.sagittal is None:
        result["level_method"] = "axial_only"
        _refuse(analysis, "single_slice" if len(choice.axial_slices) == 1 else "no_sagittal")
        return
    if level is None or level.upper_endplate_l4 is None:
        _refuse(analysis, "l4_not_found")
        return
    sagittal_frame = choice.sagittal.frame_of_reference_uid
    axial_frames = {s.frame_of_reference_uid for s in series_list if s.series_instance_uid in choice.axial_series_uids}
    if sagittal_frame and any(frame and frame != sagittal_frame for frame in axial_frames):
        _refuse(analysis, "frame_of_reference_mismatch")
        return

    with timer.step("choose_slice"):
        slice_choice = choose_axial_slice(
            [s.geometry for s in choice.axial_slices],
            level.upper_endplate_l4,
            [s.header.slice_thickness for s in choice.axial_slices],
        )
    if slice_choice.index is None:
        _refuse(analysis, "l4_not_covered")
        return
    chosen = choice.axial_slices[slice_choice.index]
    result["slice"] = {
        "series_instance_uid": chosen.series_instance_uid,
        "sop_instance_uid": chosen.header.sop_instance_uid,
        "instance_number": chosen.header.instance_number,
        "slice_to_endplate_mm": slice_choice.slice_to_endplate_mm,
    }
    analysis.source_path = chosen.header.path
    alternative = slice_choice.cranial_alternative
    next_up = None if alternative is None else choice.axial_slices[alternative]
    _measure(analysis, chosen, next_up, level, slice_choice.slice_to_endplate_mm, timer, cutoff)


def _level_of(choice: SeriesChoice, analysis: StudyAnalysis, timer: _Timer) -> LevelFinding | None:
    """Find L4 on the sagittal series, if any, and record it in the result whatever happens next."""
    if choice.sagittal is None:
        return None
    result = analysis.result
    with timer.step("find_level"):
        level = _find_level(choice.sagittal)
    result["level_method"] = "sagittal"
    result["qc"]["level"] = {"confidence": level.confidence, "reason": level.reason, **level.evidence}
    if level.upper_endplate_l4 is not None:
        result["level"] = {
            "series_instance_uid": choice.sagittal.series_instance_uid,
            "l4_upper_endplate": level.upper_endplate_l4.as_dict(),
            "lumbar_vertebrae_counted": level.lumbar_vertebrae_counted,
            "confidence": level.confidence,
        }
    return level


def _segment(axial: AxialSlice) -> tuple[np.ndarray, SliceSegmentation]:
    geometry = axial.geometry
    image = load_image(axial.header)
    return image, segment_slice(
        image,
        geometry.pixel_spacing,
        patient_left=geometry.in_plane_direction(PATIENT_LEFT),
        patient_anterior=geometry.in_plane_direction(-PATIENT_POSTERIOR),
    )


def _measure(
    analysis: StudyAnalysis,
    chosen: AxialSlice,
    next_up: AxialSlice | None,
    level: LevelFinding,
    slice_to_endplate_mm: float | None,
    timer: _Timer,
    cutoff: float,
) -> None:
    """Measure the chosen slice; when the slice next up may as well be the one just below the endplate and all
    else is ok, measure it too, so that a number that depends on which of the two is right goes to review."""
    result = analysis.result
    spacing = chosen.geometry.pixel_spacing
    with timer.step("segment"):
        analysis.image, segmentation = _segment(chosen)
    with timer.step("measure"):
        measurement = measure_plvi(segmentation, spacing, cutoff)
        verdict = assess_quality(
            measurement,
            segmentation,
            slice_to_endplate_mm=slice_to_endplate_mm,
            lumbar_vertebrae_counted=level.lumbar_vertebrae_counted,
            level_method="sagittal",
        )
    if verdict.status == "ok" and level.confidence >= MIN_LEVEL_CONFIDENCE and next_up is not None:
        with timer.step("segment_next_slice"):
            next_measurement = measure_plvi(_segment(next_up)[1], next_up.geometry.pixel_spacing, cutoff)
        verdict = assess_next_slice(verdict, measurement.plvi, next_measurement.plvi)
    analysis.masks = {
        "psoas_left": segmentation.psoas_left.astype(bool),
        "psoas_right": segmentation.psoas_right.astype(bool),
        "vertebra": segmentation.vertebra.astype(bool),
    }
    result["qc"]["checks"] = verdict.checks
    result["qc"]["segmentation"] = {
        "confidence": round(float(segmentation.confidence), 3),
        **{key: round(float(value), 4) for key, value in segmentation.evidence.items()},
    }
    result.update(
        status=verdict.status,
        reason=verdict.reason,
        reason_text=verdict.reason_text,
        cutoff=measurement.cutoff,
    )
    if verdict.status != "not_measurable":
        result.update(
            plvi=_round(measurement.plvi, 4),
            psoas_left_mm2=_round(measurement.psoas_left_mm2, 1),
            psoas_right_mm2=_round(measurement.psoas_right_mm2, 1),
            vertebra_mm2=_round(measurement.vertebra_mm2, 1),
            low_psoas_mass=measurement.low_psoas_mass,
        )
    if verdict.status == "ok" and level.confidence < MIN_LEVEL_CONFIDENCE:
        result.update(status="needs_review", reason="level_uncertain", reason_text=REASON_TEXT["level_uncertain"])


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def result_json(result: dict[str, Any], *, indent: int | None = None) -> str:
    """The result object as JSON, numpy scalars and arrays as plain numbers and lists; NaN is refused, not written."""
    return json.dumps(result, indent=indent, allow_nan=False, default=_json_value)


def _json_value(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"result value of type {type(value).__name__} is not JSON")

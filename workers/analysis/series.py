"""Which series of a study to use: the axial T2 set to measure on, the sagittal series to find L4 on.

Pure: header values in, a choice out. Orientation comes from ImageOrientationPatient, weighting from EchoTime,
RepetitionTime, InversionTime and ScanningSequence; SeriesDescription is only a hint used when those are missing,
because vendors name series freely (`t2_tse_tra`, `AX T2 FSE`, `T2W_TSE`) and technologists rename them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.analysis.geometry import (
    PATIENT_LEFT,
    PATIENT_POSTERIOR,
    PATIENT_SUPERIOR,
    SliceGeometry,
    angle_between_degrees,
    position_along,
    slice_geometry,
    slice_normal,
)

# An axial stack angled along a disc is still axial; 20 degrees covers the usual per-disc tilt of lumbar stacks.
MAX_OBLIQUE_DEGREES = 20.0
# ImageType values (PS3.3 C.7.6.1.1.2 and vendor practice) of images that are not primary acquisitions to measure on.
SKIPPED_IMAGE_TYPES = {"DERIVED", "SECONDARY", "LOCALIZER", "SCOUT", "REFORMATTED", "MPR", "PROJECTION IMAGE", "MIP"}
LOCALIZER_WORDS = re.compile(r"\b(loc|locali[sz]er|scout|survey|3.?plane|tri.?pilot|plan)\b", re.IGNORECASE)
# Per-disc blocks follow each disc's tilt; L5-S1 may be tilted 40 degrees or more from the table's axial plane.
MAX_PER_DISC_TILT_DEGREES = 50.0
# Stacks with at most this many slices, sharing a frame of reference, are taken as per-disc stacks of one set.
PER_DISC_STACK_MAX_SLICES = 8


@dataclass(frozen=True)
class InstanceHeader:
    """What the analysis needs from one image's header."""

    path: Path
    sop_instance_uid: str
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    image_type: tuple[str, ...] = ()
    number_of_frames: int = 1
    echo_time: float | None = None
    acquisition_number: int | None = None
    slice_thickness: float | None = None


@dataclass(frozen=True)
class SeriesHeader:
    """Series-level header values plus its instances' headers."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str
    body_part: str
    echo_time: float | None
    repetition_time: float | None
    inversion_time: float | None
    scanning_sequence: str
    frame_of_reference_uid: str
    instances: tuple[InstanceHeader, ...]
    series_number: int | None = None


@dataclass(frozen=True)
class AxialSlice:
    """One image of the logical axial set, with its own geometry (per-disc stacks differ in tilt)."""

    header: InstanceHeader
    series_instance_uid: str
    geometry: SliceGeometry


@dataclass(frozen=True)
class SeriesClass:
    orientation: str  # axial | sagittal | coronal | oblique | mixed | unknown
    weighting: str  # T1 | T2 | PD | STIR | unknown
    skip_reason: str | None  # localizer | derived | not_image | no_geometry | None when usable
    weighting_from: str  # headers | description | none


@dataclass
class SeriesChoice:
    """The series the analysis will use, and what was seen so a reviewer can follow the choice."""

    modality: str
    axial_slices: list[AxialSlice] = field(default_factory=list)
    axial_series_uids: list[str] = field(default_factory=list)
    axial_weighting: str = "unknown"
    sagittal: SeriesHeader | None = None
    sagittal_weighting: str = "unknown"
    duplicate_positions_dropped: int = 0
    body_parts: list[str] = field(default_factory=list)
    classified: dict[str, dict[str, str]] = field(default_factory=dict)


def orientation_class(orientation: Sequence[float]) -> str:
    """axial, sagittal or coronal from the image normal; more than MAX_OBLIQUE_DEGREES off any axis is oblique."""
    normal = slice_normal(orientation)
    for name, axis in (("axial", PATIENT_SUPERIOR), ("sagittal", PATIENT_LEFT), ("coronal", PATIENT_POSTERIOR)):
        if angle_between_degrees(normal, axis) <= MAX_OBLIQUE_DEGREES:
            return name
    return "oblique"


def weighting_from_headers(
    echo_time: float | None, repetition_time: float | None, inversion_time: float | None, scanning_sequence: str
) -> str:
    """Contrast weighting from timing: the physics decides, not the name (thresholds typical at 1.5 T and 3 T)."""
    if inversion_time is not None and 80 <= inversion_time <= 250 and "IR" in scanning_sequence.upper():
        return "STIR"
    if echo_time is None or repetition_time is None:
        return "unknown"
    if echo_time >= 60 and repetition_time >= 1500:
        return "T2"
    if echo_time <= 30 and repetition_time <= 1000:
        return "T1"
    if echo_time <= 40 and repetition_time > 1500:
        return "PD"
    if "GR" in scanning_sequence.upper() and echo_time <= 15:
        return "T1"
    return "unknown"


def weighting_from_description(description: str) -> str:
    text = description.upper().replace("_", " ")
    if re.search(r"\bSTIR\b|\bTIRM\b", text):
        return "STIR"
    if re.search(r"T2", text):
        return "T2"
    if re.search(r"T1", text):
        return "T1"
    if re.search(r"\bPD\b", text):
        return "PD"
    return "unknown"


def classify_series(series: SeriesHeader) -> SeriesClass:
    """Orientation, weighting and whether to skip a series at all."""
    image_types = {value.upper() for instance in series.instances for value in instance.image_type}
    skip_reason = None
    if image_types & SKIPPED_IMAGE_TYPES:
        skip_reason = "derived" if image_types & {"DERIVED", "SECONDARY", "REFORMATTED", "MPR", "MIP"} else "localizer"
    elif LOCALIZER_WORDS.search(series.series_description or ""):
        skip_reason = "localizer"
    elif not any(i.orientation and i.position for i in series.instances):
        skip_reason = "no_geometry"

    orientations = {orientation_class(i.orientation) for i in series.instances if i.orientation}
    if not orientations:
        orientation = "unknown"
    elif len(orientations) == 1:
        orientation = orientations.pop()
    elif _is_per_disc_axial(series):
        orientation = "axial"
    else:
        # A three-plane localizer mixes orientations; so would a series that is not one stack.
        orientation = "mixed"
        skip_reason = skip_reason or "localizer"

    if skip_reason is None and not _stacks_follow_their_normals(series):
        skip_reason = "geometry_inconsistent"

    weighting = weighting_from_headers(
        series.echo_time, series.repetition_time, series.inversion_time, series.scanning_sequence
    )
    weighting_from = "headers"
    if weighting == "unknown":
        weighting = weighting_from_description(series.series_description or "")
        weighting_from = "description" if weighting != "unknown" else "none"
    return SeriesClass(orientation, weighting, skip_reason, weighting_from)


def _stacks_follow_their_normals(series: SeriesHeader) -> bool:
    """A cheap check of the headers against each other: the images of a stack must lie one behind the other along
    the normal their orientation gives. Positions that step sideways instead mean ImageOrientationPatient or
    ImagePositionPatient is wrong, and no geometry built on them can be trusted."""
    for stack in _stacks_of(series):
        if len(stack) < 2:
            continue
        normal = slice_normal(stack[0].orientation)  # type: ignore[arg-type]
        ordered = sorted(stack, key=lambda i: position_along(i.position, normal))  # type: ignore[arg-type]
        step = np.subtract(ordered[-1].position, ordered[0].position)
        if np.linalg.norm(step) > 1e-3 and angle_between_degrees(step, normal) > 45.0:
            return False
    return True


def _is_per_disc_axial(series: SeriesHeader) -> bool:
    """Blocks of axial slices, each angled along one disc: some within the axial limit, none steeper than a disc."""
    tilts = [angle_between_degrees(slice_normal(i.orientation), PATIENT_SUPERIOR) for i in series.instances
             if i.orientation]
    return min(tilts) <= MAX_OBLIQUE_DEGREES and max(tilts) <= MAX_PER_DISC_TILT_DEGREES


def _stacks_of(series: SeriesHeader) -> list[list[InstanceHeader]]:
    """Split a series into stacks of parallel images (per-disc angled blocks may share one series)."""
    stacks: dict[tuple[float, ...], list[InstanceHeader]] = {}
    for instance in series.instances:
        if instance.orientation is None or instance.position is None:
            continue
        key = tuple(round(v, 2) for v in instance.orientation)
        stacks.setdefault(key, []).append(instance)
    return list(stacks.values())


def _drop_duplicate_positions(instances: list[InstanceHeader]) -> tuple[list[InstanceHeader], int]:
    """Keep one image per position: a repeated acquisition replaces the earlier one (highest numbers win)."""
    by_position: dict[tuple[float, float, float], InstanceHeader] = {}
    ranked = sorted(instances, key=lambda i: (i.acquisition_number or 0, i.instance_number or 0))
    for instance in ranked:
        assert instance.position is not None
        by_position[tuple(round(v, 1) for v in instance.position)] = instance
    return list(by_position.values()), len(instances) - len(by_position)


def axial_slices_of(series_list: Sequence[SeriesHeader]) -> tuple[list[AxialSlice], int]:
    """All images of the given axial series as one logical set, sorted caudal to cranial by their centres."""
    slices: list[AxialSlice] = []
    dropped = 0
    for series in series_list:
        for stack in _stacks_of(series):
            kept, duplicates = _drop_duplicate_positions(stack)
            dropped += duplicates
            for instance in kept:
                if instance.pixel_spacing is None:
                    spacing = (float("nan"), float("nan"))
                else:
                    spacing = instance.pixel_spacing
                geometry = slice_geometry(
                    instance.position, instance.orientation, spacing, instance.rows, instance.columns
                )
                slices.append(AxialSlice(instance, series.series_instance_uid, geometry))
    slices.sort(key=lambda s: position_along(s.geometry.centre, PATIENT_SUPERIOR))
    return slices, dropped


def _weighting_rank(weighting: str) -> int:
    """Preference for measuring: T2 is what the method and its cut-off were defined on."""
    return {"T2": 0, "STIR": 2, "PD": 2, "unknown": 1, "T1": 3}[weighting]


def choose_series(series_list: Sequence[SeriesHeader]) -> SeriesChoice:
    """Pick the axial T2 set (several short angled stacks join into one) and the best sagittal series."""
    modalities = sorted({s.modality for s in series_list})
    choice = SeriesChoice(modality="MR" if "MR" in modalities else (modalities[0] if modalities else ""))
    choice.body_parts = sorted({s.body_part.upper() for s in series_list if s.body_part})
    candidates: dict[str, list[tuple[SeriesHeader, SeriesClass]]] = {"axial": [], "sagittal": []}
    for series in series_list:
        verdict = classify_series(series)
        choice.classified[series.series_instance_uid] = {
            "description": series.series_description,
            "orientation": verdict.orientation,
            "weighting": verdict.weighting,
            "weighting_from": verdict.weighting_from,
            "skipped": verdict.skip_reason or "",
            "images": str(len(series.instances)),
        }
        if series.modality != choice.modality or verdict.skip_reason:
            continue
        if verdict.orientation in candidates:
            candidates[verdict.orientation].append((series, verdict))

    sagittal = sorted(
        candidates["sagittal"],
        key=lambda sv: ({"T2": 0, "T1": 1}.get(sv[1].weighting, 2), -len(sv[0].instances)),
    )
    if sagittal:
        choice.sagittal, verdict = sagittal[0]
        choice.sagittal_weighting = verdict.weighting

    axial = [sv for sv in candidates["axial"] if sv[1].weighting != "T1" or choice.modality != "MR"]
    if not axial:
        return choice
    best_rank = min(_weighting_rank(v.weighting) for _, v in axial)
    best = [(s, v) for s, v in axial if _weighting_rank(v.weighting) == best_rank]
    chosen = _logical_axial_set([s for s, _ in best])
    choice.axial_slices, choice.duplicate_positions_dropped = axial_slices_of(chosen)
    choice.axial_series_uids = [s.series_instance_uid for s in chosen]
    choice.axial_weighting = best[0][1].weighting
    return choice


def _logical_axial_set(series_list: list[SeriesHeader]) -> list[SeriesHeader]:
    """Short stacks in one frame of reference are per-disc blocks of one set; otherwise the series covering most
    of the spine (the longest) stands alone."""
    by_frame: dict[str, list[SeriesHeader]] = {}
    for series in series_list:
        by_frame.setdefault(series.frame_of_reference_uid, []).append(series)
    groups = []
    for members in by_frame.values():
        short = [s for s in members if len(s.instances) <= PER_DISC_STACK_MAX_SLICES]
        if len(short) >= 2:
            groups.append(short)
        groups.extend([s] for s in members if s not in short or len(short) < 2)
    return max(groups, key=lambda group: (_craniocaudal_extent(group), sum(len(s.instances) for s in group)))


def _craniocaudal_extent(group: list[SeriesHeader]) -> float:
    heights = [
        position_along(i.position, PATIENT_SUPERIOR) for s in group for i in s.instances if i.position is not None
    ]
    return float(np.ptp(heights)) if heights else 0.0

"""What the seed decides beyond the anatomy: the options, the scanner, the series and their slices, the headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from workers.phantom import dicom
from workers.phantom.anatomy import Anatomy
from workers.phantom.mri import Sequence
from workers.phantom.stacks import SlicePlane, stack, tilt

ROLES = ("localizer", "sagittal_t2", "sagittal_t1", "axial_t2")


@dataclass(frozen=True)
class PhantomOptions:
    """What to generate. None means: drawn from the seed (harder draws when `hard`)."""

    hard: bool = False
    sagittal: Literal["t2", "t1"] | None = "t2"
    axial_t2: bool = True
    axial_layout: Literal["stack", "per_disc"] | None = None
    axial_matrix: int = 256
    axial_pixel_mm: float | None = None
    axial_thickness_mm: float = 4.0
    axial_slices: int | None = None  # single stack only; None: as many as cover L2 to S1
    axial_tilt_deg: float | None = None  # tilt of a single stack from the transverse plane towards the L4 endplate
    sagittal_matrix: int = 256
    sagittal_slices: int = 15
    sagittal_thickness_mm: float = 3.5
    localizer: bool = True
    lumbar_vertebrae: int | None = None  # 4, 5 or 6 (transitional anatomy)
    vertebra_condition: Literal["none", "fractured", "cemented"] | None = None  # one vertebra above L4
    fat_fraction: float | None = None  # intramuscular fat in the psoas, 0..0.5
    target_plvi: float | None = None
    cover_l4: bool | None = None  # False: the axial series stops below L4 (a study that cannot be measured)
    pixel_spacing: bool | None = None  # False: the axial series lacks PixelSpacing (cannot be measured either)
    vendor: Literal["siemens", "ge", "philips"] | None = None
    misleading_descriptions: bool | None = None
    through_plane_samples: int = 3  # slice-profile samples across the slab (partial volume through plane)
    axial_series_per_stack: bool | None = None  # per-disc stacks written as one series each rather than one series
    derived_series: bool | None = None  # also a DERIVED reformat of the axial series, same positions (to be skipped)


@dataclass(frozen=True)
class Draws:
    """Everything the seed decides beyond the anatomy."""

    vendor: dicom.Vendor
    misleading: bool
    snr: float
    bias: float
    coil_reach: float
    anterior_coil: bool
    ghost_amplitude: float
    phase_resolution: float
    axial_pixel_mm: float
    axial_tilt_deg: float
    scale: float
    axial_layout: str
    cover_l4: bool
    pixel_spacing: bool
    axial_series_per_stack: bool
    derived_series: bool


def draw_lumbar_count(rng: np.random.Generator, hard: bool) -> int:
    if hard and rng.random() < 0.12:
        return int(rng.choice([4, 6]))
    return 5


def draw_condition(rng: np.random.Generator, options: PhantomOptions, lumbar_count: int) -> tuple[str, str] | None:
    kind = options.vertebra_condition
    if kind is None:
        chance = 0.3 if options.hard else 0.05
        kind = str(rng.choice(["fractured", "cemented"])) if rng.random() < chance else "none"
    if kind == "none":
        return None
    return str(rng.choice(["T12", "L1", "L2", "L3"], p=[0.25, 0.35, 0.25, 0.15])), kind


def draw_fat(rng: np.random.Generator, hard: bool) -> float:
    return float(rng.uniform(0.0, 0.35) if hard else rng.uniform(0.0, 0.12))


def draw_acquisition(rng: np.random.Generator, options: PhantomOptions, anatomy: Anatomy) -> Draws:
    vendor = dicom.VENDORS[options.vendor or str(rng.choice(sorted(dicom.VENDORS)))]
    hard = options.hard
    misleading = options.misleading_descriptions
    if misleading is None:
        misleading = bool(hard and rng.random() < 0.3)
    tilt_deg = options.axial_tilt_deg
    if tilt_deg is None:  # the technologist angles the stack part of the way towards the L4 endplate
        _, l4_normal = anatomy.upper_endplate("L4")
        endplate_deg = float(np.degrees(np.arccos(np.clip(l4_normal[2], -1, 1))))
        if hard:
            tilt_deg = float(np.clip(endplate_deg * rng.uniform(0.0, 1.0) + rng.normal(0, 5), -18, 18))
        else:
            tilt_deg = float(np.clip(endplate_deg * rng.uniform(0.5, 1.0) + rng.normal(0, 2), -15, 15))
    return Draws(
        vendor=vendor,
        misleading=misleading,
        snr=float(rng.uniform(7, 14) if hard else rng.uniform(18, 32)),
        bias=float(rng.uniform(0.7, 1.0) if hard else rng.uniform(0.25, 0.6)),
        coil_reach=float(rng.uniform(80, 120) if hard else rng.uniform(140, 220)),
        anterior_coil=bool(not hard or rng.random() < 0.5),
        ghost_amplitude=float(rng.uniform(0.02, 0.06) if hard and rng.random() < 0.5 else 0.0),
        phase_resolution=float(rng.uniform(0.6, 0.85) if hard else rng.uniform(0.75, 1.0)),
        axial_pixel_mm=options.axial_pixel_mm or float(rng.uniform(0.78, 0.95)),
        axial_tilt_deg=tilt_deg,
        scale=float(vendor.max_value / 0.75 * rng.uniform(0.8, 1.2)),
        axial_layout=options.axial_layout or ("per_disc" if rng.random() < (0.4 if hard else 0.2) else "stack"),
        # a small share of hard studies cannot be measured at all; truth.expected_reason says why
        cover_l4=options.cover_l4 if options.cover_l4 is not None else not (hard and rng.random() < 0.04),
        pixel_spacing=(
            options.pixel_spacing if options.pixel_spacing is not None else not (hard and rng.random() < 0.04)
        ),
        axial_series_per_stack=(
            options.axial_series_per_stack
            if options.axial_series_per_stack is not None
            else bool(rng.random() < (0.5 if hard else 0.2))
        ),
        derived_series=(
            options.derived_series if options.derived_series is not None else bool(hard and rng.random() < 0.25)
        ),
    )


def study_header(rng: np.random.Generator, seed: int, identity: tuple) -> dicom.StudyHeader:
    age = int(rng.integers(45, 90))
    year = 2024 + int(rng.integers(0, 3))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return dicom.StudyHeader(
        patient_name=f"Phantom^{seed}",
        patient_id=f"PHANTOM-{seed:06d}",
        birth_date=f"{year - age}{month:02d}{day:02d}",
        sex=str(rng.choice(["F", "M"])),
        age=f"{age:03d}Y",
        weight_kg=float(rng.uniform(50, 105)),
        study_uid=dicom.phantom_uid(*identity, "study"),
        study_date=f"{year}{month:02d}{day:02d}",
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        accession=f"PH{seed:08d}",
        frame_of_reference_uid=dicom.phantom_uid(*identity, "frame-of-reference"),
    )


_MISLEADING = {
    "axial_t2": ("t1_tse_tra", "LSPINE 5", "SAG T2 FSE", "T2W_TSE_COR"),
    "sagittal_t2": ("t2_tse_tra", "AX T2", "LSPINE 2"),
    "sagittal_t1": ("T2W_TSE", "LSPINE 3"),
    "localizer": ("t2_tse_sag", "AX T2 FSE"),
}


def series_header(
    role: str,
    number: int,
    sequence: Sequence,
    planes: list[SlicePlane],
    draws: Draws,
    identity: tuple,
    rng: np.random.Generator,
    part: int | None = None,
) -> dicom.SeriesHeader:
    """The series' identity and acquisition parameters; `part` numbers the series when one stack of several
    (per-disc stacks written as separate series) is written as its own series."""
    description = draws.vendor.descriptions[role]
    if draws.misleading and role in ("axial_t2", "sagittal_t2") and rng.random() < 0.6:
        description = str(rng.choice(_MISLEADING[role]))
    spacing = 0.0
    if len(planes) > 1:
        spacing = abs(float(np.dot(planes[1].centre - planes[0].centre, planes[0].normal)))
    return dicom.SeriesHeader(
        uid=dicom.phantom_uid(*identity, role, "series", *(() if part is None else (part,))),
        number=number,
        description=description,
        weighting="localizer" if role == "localizer" else sequence.weighting,
        repetition_time_ms=sequence.repetition_time_ms,
        echo_time_ms=sequence.echo_time_ms,
        echo_train_length=sequence.echo_train_length,
        spacing_between_slices=round(spacing, 3) if spacing > 0 else planes[0].thickness,
        phase_direction="ROW" if role in ("axial_t2", "localizer") else "COL",
        localizer=role == "localizer",
    )


# --- geometry --------------------------------------------------------------------------------------------------------


def series_planes(
    anatomy: Anatomy, options: PhantomOptions, draws: Draws, role: str, rng: np.random.Generator
) -> tuple[list[SlicePlane], Sequence, int]:
    """The slices of one series, its sequence and the number of through-plane samples."""
    left = anatomy.rotation[:, 0]
    l3 = anatomy.vertebra("L3")
    if role == "localizer":
        centre = anatomy.point(l3.s_middle, 0.0, 10.0)
        common = {"matrix": (256, 256), "pixel_mm": 1.6, "thickness": 8.0}
        planes = [
            *stack(centre, np.array([-1.0, 0, 0]), np.array([0, 1.0, 0]), [0.0], **common),
            *stack(centre, np.array([0, 1.0, 0]), np.array([1.0, 0, 0]), [0.0], **common, group=1),
            *stack(centre, np.array([0, 0, 1.0]), np.array([1.0, 0, 0]), [0.0], **common, group=2),
        ]
        return planes, Sequence("T1", 1200.0, 20.0, 1), 1
    if role.startswith("sagittal"):
        centre = anatomy.point(anatomy.vertebra("L4").s_middle, 0.0, 18.0)  # T11 to S3, as protocols frame it
        normal = -(0.7 * left + 0.3 * np.array([1.0, 0, 0]))
        count = options.sagittal_slices
        spacing = options.sagittal_thickness_mm * rng.uniform(1.0, 1.2)
        offsets = (np.arange(count) - (count - 1) / 2) * spacing
        planes = stack(
            centre,
            normal,
            np.array([0, 1.0, 0]),
            offsets,
            matrix=(options.sagittal_matrix, options.sagittal_matrix),
            pixel_mm=290.0 / options.sagittal_matrix,
            thickness=options.sagittal_thickness_mm,
        )
        if role == "sagittal_t1":
            sequence = Sequence("T1", float(rng.uniform(450, 700)), float(rng.uniform(8, 14)), 3)
        else:
            sequence = Sequence("T2", float(rng.uniform(3000, 4500)), float(rng.uniform(90, 115)), 17)
        return planes, sequence, options.through_plane_samples
    sequence = Sequence("T2", float(rng.uniform(3500, 5500)), float(rng.uniform(85, 110)), 15)
    pixel = draws.axial_pixel_mm
    thickness = options.axial_thickness_mm
    spacing = thickness * rng.uniform(1.1, 1.3)
    matrix = (options.axial_matrix, options.axial_matrix)
    if draws.axial_layout == "per_disc":
        planes = _per_disc_planes(anatomy, draws.cover_l4, matrix, pixel, thickness, spacing, rng)
    else:
        planes = _single_stack_planes(anatomy, options, draws, matrix, pixel, thickness, spacing)
    return planes, sequence, options.through_plane_samples


def _axial_row_hint(anatomy: Anatomy) -> np.ndarray:
    return 0.5 * np.array([1.0, 0, 0]) + 0.5 * anatomy.rotation[:, 0]


def _single_stack_planes(
    anatomy: Anatomy,
    options: PhantomOptions,
    draws: Draws,
    matrix: tuple[int, int],
    pixel: float,
    thickness: float,
    spacing: float,
) -> list[SlicePlane]:
    """One stack from S1 to L2, tilted from the scanner's transverse plane towards the L4 endplate plane."""
    _, l4_normal = anatomy.upper_endplate("L4")
    superior = np.array([0, 0, 1.0])
    axis = np.cross(superior, l4_normal)
    axis = axis / np.linalg.norm(axis) if np.linalg.norm(axis) > 1e-6 else np.array([1.0, 0, 0])
    normal = tilt(superior, axis, draws.axial_tilt_deg)
    if draws.cover_l4:
        l2 = anatomy.vertebra("L2")
        top = l2.s_middle
        bottom = -6.0
    else:  # the stack starts below L4: the level the study is for is not covered
        top = anatomy.vertebra("L4").s_bottom - 4.0
        bottom = -35.0
    centre = anatomy.point(0.5 * (top + bottom), 0.0, 8.0)
    high = float(np.dot(anatomy.point(top) - centre, normal))
    low = float(np.dot(anatomy.point(bottom) - centre, normal))
    count = options.axial_slices or int(np.ceil((high - low) / spacing)) + 1
    offsets = (np.arange(count) - (count - 1) / 2) * spacing + 0.5 * (high + low)
    if draws.vendor.axial_feet_first is False:
        offsets = offsets[::-1]
    return stack(
        centre, normal, _axial_row_hint(anatomy), offsets, matrix=matrix, pixel_mm=pixel, thickness=thickness
    )


def _per_disc_planes(
    anatomy: Anatomy,
    cover_l4: bool,
    matrix: tuple[int, int],
    pixel: float,
    thickness: float,
    spacing: float,
    rng: np.random.Generator,
) -> list[SlicePlane]:
    """Short stacks parallel to each disc from L2-L3 to L5-S1, extending over the top of the vertebra below."""
    planes: list[SlicePlane] = []
    lumbar = [v for v in anatomy.vertebrae if v.name.startswith("L") or v.name == "S1"]
    group = 0
    for lower in lumbar:
        index = anatomy.vertebrae.index(lower)
        upper = anatomy.vertebrae[index + 1]
        if upper.name in ("L1", "T12", "T11", "T10"):
            continue
        if not cover_l4 and lower.name == "L4":
            continue
        centre, normal = anatomy.disc_centre(lower)
        normal = tilt(normal, anatomy.rotation[:, 0], float(rng.uniform(-3, 3)))
        offsets = (np.arange(5) - 3.0) * spacing
        in_plane_centre = centre + (anatomy.point(lower.s_top, 0.0, 8.0) - anatomy.point(lower.s_top))
        planes += stack(
            in_plane_centre,
            normal,
            _axial_row_hint(anatomy),
            offsets,
            matrix=matrix,
            pixel_mm=pixel,
            thickness=thickness,
            group=group,
        )
        group += 1
    return planes

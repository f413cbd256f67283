"""generate_study: one synthetic lumbar MRI study as DICOM files, with its truth (truth.json, truth_masks.npz).

The truth states, for every axial slice, the exact areas of the left psoas, the right psoas and the L4 vertebral
body on the slice's centre plane, and which slice is the reference for PLVI:

REFERENCE_RULE (also written into truth.json): for each axial slice let d be the signed distance (negative =
caudal) from the L4 upper endplate plane of the point where the slice's centre plane meets the endplate's normal
through the endplate centre, and let `slab_top_to_endplate_mm` be how far the top of the slice's slab (centre plane
+ thickness / 2) reaches above the endplate surface anywhere over the endplate (its rim, and its centre, which is
dished by the endplate concavity). Among the slices whose centre lies caudal to the endplate in the upper half
of L4 (-(L4 body height / 2) <= d < 0), the reference slice is the most cranial one whose whole slab lies in the
bone of L4 (slab_top_to_endplate_mm <= 0); when a steep tilt leaves none, the one whose slab reaches least above
the endplate. The acceptable slices are the reference and its neighbours in the same stack within that window.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from workers.phantom import dicom
from workers.phantom.anatomy import Anatomy, sample_anatomy
from workers.phantom.mri import (
    BiasField,
    Sequence,
    ghosts,
    limited_resolution,
    rician,
    tissue_heterogeneity,
    tissue_signals,
)
from workers.phantom.stacks import SlicePlane, stack, tilt
from workers.phantom.structures import (
    ERECTOR_DEPTH,
    SQUIRCLE,
    Layer,
    Points,
    SpineTables,
    canal_geometry,
    composite,
    layers,
    masks_from_layers,
    render,
    texture,
    truth_masks,
)

REFERENCE_RULE = (
    "d = signed distance (mm, negative caudal) from the L4 upper endplate plane of the point where the slice's "
    "centre plane meets the endplate normal through the endplate centre; slab_top_to_endplate_mm = how far the top "
    "of the slice's slab (centre plane + thickness / 2) reaches above the endplate surface over the endplate (rim "
    "and dished centre); window = slices with -(L4 body height / 2) <= d < 0; reference = the slice in the window "
    "with the largest d among those with slab_top_to_endplate_mm <= 0 (the whole slab lies in the L4 body), or, if "
    "none, the one with the smallest slab_top_to_endplate_mm; acceptable = the reference and its neighbours in the "
    "same stack that are in the window"
)
TRUTH_STRUCTURES = ("psoas_left", "psoas_right", "vertebra")
ROLES = ("localizer", "sagittal_t2", "sagittal_t1", "axial_t2")
MIN_VERTEBRA_SECTION_MM2 = 200.0  # below this a slice only grazes L4: its PLVI is not stated (None)


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
    axial_slices: int | None = None  # None: as many as cover L2 to S1
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


@dataclass(frozen=True)
class SliceTruth:
    """Exact areas on one axial slice's centre plane (mm2) and its distance to the L4 upper endplate."""

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int
    path: str
    stack: int
    psoas_left_mm2: float
    psoas_right_mm2: float
    vertebra_mm2: float
    plvi: float | None
    distance_to_endplate_mm: float
    slab_top_to_endplate_mm: float


@dataclass(frozen=True)
class SeriesTruth:
    series_instance_uid: str
    role: str  # "localizer" | "sagittal_t2" | "sagittal_t1" | "axial_t2"
    series_number: int
    description: str
    instances: int


@dataclass(frozen=True)
class PhantomTruth:
    """What the generator knows: the anatomy that matters for PLVI and the right answer on every axial slice."""

    seed: int
    study_instance_uid: str
    lumbar_vertebrae: int
    l4_upper_endplate_point_mm: tuple[float, float, float]
    l4_upper_endplate_normal: tuple[float, float, float]
    endplate_concavity_mm: float
    l4_endplate_rim_mm: tuple[tuple[float, float, float], ...]
    l4_body_height_mm: float
    vertebra_condition: tuple[str, str] | None
    series: tuple[SeriesTruth, ...]
    slices: tuple[SliceTruth, ...]
    reference_sop_instance_uid: str | None
    acceptable_sop_instance_uids: tuple[str, ...]
    expected_reason: str | None  # why a correct analysis says not_measurable: l4_not_covered, no_pixel_spacing, ...
    hard: bool
    vendor: str
    axial_layout: str | None
    masks: dict[str, np.ndarray] = field(repr=False)
    reference_rule: str = REFERENCE_RULE

    @property
    def reference(self) -> SliceTruth | None:
        return next((s for s in self.slices if s.sop_instance_uid == self.reference_sop_instance_uid), None)

    @property
    def plvi(self) -> float | None:
        return None if self.reference is None else self.reference.plvi

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("masks")
        reference = self.reference
        data["plvi"] = self.plvi
        for key in ("psoas_left_mm2", "psoas_right_mm2", "vertebra_mm2"):
            data[key] = None if reference is None else getattr(reference, key)
        data["l4_upper_endplate"] = {
            "point_mm": list(self.l4_upper_endplate_point_mm),
            "normal": list(self.l4_upper_endplate_normal),
        }
        return data


@dataclass(frozen=True)
class _Draws:
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


def generate_study(seed: int, out_dir: Path, options: PhantomOptions | None = None) -> PhantomTruth:
    """Write one phantom study (DICOM files in series folders, truth.json, truth_masks.npz) under out_dir."""
    options = options or PhantomOptions()
    out_dir = Path(out_dir)
    # independent random streams: what one part draws does not shift another (adding a localizer, say, leaves the
    # anatomy and the axial series as they were)
    rng = np.random.default_rng([seed, 0])  # the patient
    lumbar_count = options.lumbar_vertebrae or _draw_lumbar_count(rng, options.hard)
    if lumbar_count not in (4, 5, 6):
        raise ValueError(f"lumbar_vertebrae must be 4, 5 or 6, not {lumbar_count}")
    condition = _draw_condition(rng, options, lumbar_count)
    target_plvi = options.target_plvi or float(rng.uniform(0.4, 1.3))
    fat_fraction = options.fat_fraction if options.fat_fraction is not None else _draw_fat(rng, options.hard)
    anatomy = sample_anatomy(
        rng,
        hard=options.hard,
        lumbar_count=lumbar_count,
        condition_above_l4=condition,
        target_plvi=target_plvi,
        fat_fraction=fat_fraction,
    )
    anatomy = _calibrate_psoas(anatomy, target_plvi)
    draws = _draw_acquisition(np.random.default_rng([seed, 1]), options, anatomy)
    identity = (seed, repr(options))
    header_rng = np.random.default_rng([seed, 2])
    study = _study_header(header_rng, seed, identity)
    bias = _bias_field(anatomy, draws)

    series_truth: list[SeriesTruth] = []
    slices: list[SliceTruth] = []
    reference_masks: dict[str, dict[str, np.ndarray]] = {}
    roles = []
    if options.localizer:
        roles.append("localizer")
    if options.sagittal:
        roles.append(f"sagittal_{options.sagittal}")
    if options.axial_t2:
        roles.append("axial_t2")
    numbers = list(range(1, len(roles) + 1))
    if options.hard:
        numbers = [n * 100 + i for i, n in enumerate(numbers)] if header_rng.random() < 0.3 else numbers
    for role, number in zip(roles, numbers, strict=True):
        role_index = ROLES.index(role)
        rng = np.random.default_rng([seed, 10 + role_index])  # this series' protocol
        noise_rng = np.random.default_rng([seed, 20 + role_index])
        planes, sequence, nsub = _series_planes(anatomy, options, draws, role, rng)
        header = _series_header(role, number, sequence, planes, draws, identity, rng)
        signals = tissue_signals(sequence, anatomy.marrow_fat)
        order = list(range(len(planes)))
        for instance, index in enumerate(order, start=1):
            plane = planes[index]
            image, centre_layers = _acquire(
                anatomy, plane, signals, nsub, bias, draws, header.phase_direction, noise_rng
            )
            pixels = np.clip(np.rint(image * draws.scale), 0, 65535).astype(np.uint16)
            sop_uid = dicom.phantom_uid(*identity, role, "instance", instance)
            path = out_dir / f"series-{number:03d}-{role}" / f"IM-{instance:04d}.dcm"
            ds = dicom.mr_dataset(
                pixels,
                plane,
                study=study,
                series=header,
                vendor=draws.vendor,
                sop_uid=sop_uid,
                instance_number=instance,
                slice_location=float(np.dot(plane.centre, plane.normal)),
                write_pixel_spacing=draws.pixel_spacing or role != "axial_t2",
            )
            dicom.write(ds, path)
            if role == "axial_t2":
                masks, areas = _slice_truth(anatomy, plane, centre_layers)
                reference_masks[sop_uid] = masks
                slices.append(
                    SliceTruth(
                        sop_instance_uid=sop_uid,
                        series_instance_uid=header.uid,
                        instance_number=instance,
                        path=str(path.relative_to(out_dir)),
                        stack=plane.group,
                        psoas_left_mm2=areas["psoas_left"],
                        psoas_right_mm2=areas["psoas_right"],
                        vertebra_mm2=areas["vertebra"],
                        plvi=(areas["psoas_left"] + areas["psoas_right"]) / areas["vertebra"]
                        if areas["vertebra"] >= MIN_VERTEBRA_SECTION_MM2
                        else None,
                        distance_to_endplate_mm=_distance_to_endplate(anatomy, plane),
                        slab_top_to_endplate_mm=_slab_top_to_endplate(anatomy, plane),
                    )
                )
        series_truth.append(SeriesTruth(header.uid, role, number, header.description, len(planes)))

    l4 = anatomy.vertebra("L4")
    endplate_point, endplate_normal = anatomy.upper_endplate("L4")
    reference, acceptable = _reference_slices(slices, l4.s_top - l4.s_bottom)
    truth = PhantomTruth(
        seed=seed,
        study_instance_uid=study.study_uid,
        lumbar_vertebrae=lumbar_count,
        l4_upper_endplate_point_mm=tuple(round(float(x), 4) for x in endplate_point),
        l4_upper_endplate_normal=tuple(round(float(x), 6) for x in endplate_normal),
        endplate_concavity_mm=round(anatomy.endplate_concavity_mm, 4),
        l4_endplate_rim_mm=tuple(tuple(round(float(x), 4) for x in point) for point in l4_endplate_rim(anatomy)),
        l4_body_height_mm=round(l4.s_top - l4.s_bottom, 4),
        vertebra_condition=condition,
        series=tuple(series_truth),
        slices=tuple(slices),
        reference_sop_instance_uid=reference,
        acceptable_sop_instance_uids=tuple(acceptable),
        expected_reason=_expected_reason(options, draws, reference),
        hard=options.hard,
        vendor=draws.vendor.manufacturer,
        axial_layout=draws.axial_layout if options.axial_t2 else None,
        masks=reference_masks.get(reference, {}) if reference else {},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "truth.json").write_text(json.dumps(truth.to_json(), indent=2) + "\n")
    np.savez_compressed(out_dir / "truth_masks.npz", **truth.masks)
    return truth


def _calibrate_psoas(anatomy: Anatomy, target_plvi: float) -> Anatomy:
    """Scale both psoas profiles so that PLVI just below the L4 endplate (parallel to it) equals the target."""
    point, normal = anatomy.upper_endplate("L4")
    depth = 3.5 + anatomy.endplate_concavity_mm
    plane = stack(point - depth * normal, normal, np.array([1.0, 0, 0]), [0.0], matrix=(160, 160), pixel_mm=1.0,
                  thickness=4.0)[0]
    masks = truth_masks(anatomy, Points.on_plane(anatomy, plane), "L4")
    plvi = (masks["psoas_left"].sum() + masks["psoas_right"].sum()) / max(masks["vertebra"].sum(), 1)
    factor = target_plvi / max(plvi, 1e-3)
    return replace(
        anatomy,
        psoas_left=replace(anatomy.psoas_left, area_mm2=anatomy.psoas_left.area_mm2 * factor),
        psoas_right=replace(anatomy.psoas_right, area_mm2=anatomy.psoas_right.area_mm2 * factor),
    )


def _expected_reason(options: PhantomOptions, draws: _Draws, reference: str | None) -> str | None:
    """The `reason` a correct analysis gives for this study being not measurable, or None when it is measurable."""
    if not options.axial_t2:
        return "no_axial_t2"
    if not draws.pixel_spacing:
        return "no_pixel_spacing"
    if reference is None:
        return "l4_not_covered"
    return None


# --- draws -----------------------------------------------------------------------------------------------------------


def _draw_lumbar_count(rng: np.random.Generator, hard: bool) -> int:
    if hard and rng.random() < 0.12:
        return int(rng.choice([4, 6]))
    return 5


def _draw_condition(rng: np.random.Generator, options: PhantomOptions, lumbar_count: int) -> tuple[str, str] | None:
    kind = options.vertebra_condition
    if kind is None:
        chance = 0.3 if options.hard else 0.05
        kind = str(rng.choice(["fractured", "cemented"])) if rng.random() < chance else "none"
    if kind == "none":
        return None
    return str(rng.choice(["T12", "L1", "L2", "L3"], p=[0.25, 0.35, 0.25, 0.15])), kind


def _draw_fat(rng: np.random.Generator, hard: bool) -> float:
    return float(rng.uniform(0.0, 0.35) if hard else rng.uniform(0.0, 0.12))


def _draw_acquisition(rng: np.random.Generator, options: PhantomOptions, anatomy: Anatomy) -> _Draws:
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
    return _Draws(
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
    )


def _study_header(rng: np.random.Generator, seed: int, identity: tuple) -> dicom.StudyHeader:
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


def _series_header(
    role: str,
    number: int,
    sequence: Sequence,
    planes: list[SlicePlane],
    draws: _Draws,
    identity: tuple,
    rng: np.random.Generator,
) -> dicom.SeriesHeader:
    description = draws.vendor.descriptions[role]
    if draws.misleading and role in ("axial_t2", "sagittal_t2") and rng.random() < 0.6:
        description = str(rng.choice(_MISLEADING[role]))
    spacing = 0.0
    if len(planes) > 1:
        spacing = abs(float(np.dot(planes[1].centre - planes[0].centre, planes[0].normal)))
    return dicom.SeriesHeader(
        uid=dicom.phantom_uid(*identity, role, "series"),
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


def _series_planes(
    anatomy: Anatomy, options: PhantomOptions, draws: _Draws, role: str, rng: np.random.Generator
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
    draws: _Draws,
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


def _distance_to_endplate(anatomy: Anatomy, plane: SlicePlane) -> float:
    """Signed distance from the L4 upper endplate plane of the point where the slice plane meets its normal line."""
    point, normal = anatomy.upper_endplate("L4")
    return float(np.dot(plane.position - point, plane.normal)) / float(np.dot(normal, plane.normal))


def l4_endplate_rim(anatomy: Anatomy, points: int = 24) -> np.ndarray:
    """LPS points on the rim of the L4 upper endplate (the squircle outline of `structures._endplates`)."""
    vertebra = anatomy.vertebra("L4")
    centre, normal = anatomy.upper_endplate("L4")
    lateral = anatomy.rotation[:, 0] - np.dot(anatomy.rotation[:, 0], normal) * normal
    lateral /= np.linalg.norm(lateral)
    posterior = np.cross(normal, lateral)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    k = float(SQUIRCLE) * (np.cos(angles) * np.sin(angles)) ** 2
    # radius r of the outline along each angle: r2 - c cos2 sin2 r4 = 1
    safe = np.maximum(k, 1e-12)
    radius = np.sqrt(np.where(k > 1e-9, (1 - np.sqrt(1 - 4 * safe)) / (2 * safe), 1.0))
    return (
        centre
        + np.outer(radius * np.cos(angles) * vertebra.half_width, lateral)
        + np.outer(radius * np.sin(angles) * vertebra.half_depth, posterior)
    )


def _slab_top_to_endplate(anatomy: Anatomy, plane: SlicePlane) -> float:
    """How far (mm, along the endplate normal) the top of the slice's slab reaches above the L4 upper endplate."""
    centre, normal = anatomy.upper_endplate("L4")
    top = plane.position + plane.normal * plane.thickness / 2
    cosine = float(np.dot(normal, plane.normal))
    rim = l4_endplate_rim(anatomy)
    above_rim = ((top - rim) * plane.normal).sum(axis=1) / cosine
    above_centre = float(np.dot(top - centre, plane.normal)) / cosine + anatomy.endplate_concavity_mm
    return round(float(max(above_rim.max(), above_centre)), 4)


def _reference_slices(slices: list[SliceTruth], height: float) -> tuple[str | None, list[str]]:
    """Apply REFERENCE_RULE."""

    def in_window(s: SliceTruth) -> bool:
        return -height / 2 <= s.distance_to_endplate_mm < 0 and s.vertebra_mm2 > 0

    window = [s for s in slices if in_window(s)]
    if not window:
        return None, []
    wholly_in_bone = [s for s in window if s.slab_top_to_endplate_mm <= 0]
    if wholly_in_bone:
        reference = max(wholly_in_bone, key=lambda s: s.distance_to_endplate_mm)
    else:
        reference = min(window, key=lambda s: s.slab_top_to_endplate_mm)
    same_stack = sorted((s for s in slices if s.stack == reference.stack), key=lambda s: s.distance_to_endplate_mm)
    position = same_stack.index(reference)
    acceptable = [reference.sop_instance_uid]
    for neighbour_index in (position - 1, position + 1):
        if 0 <= neighbour_index < len(same_stack) and in_window(same_stack[neighbour_index]):
            acceptable.append(same_stack[neighbour_index].sop_instance_uid)
    return reference.sop_instance_uid, acceptable


# --- acquisition -----------------------------------------------------------------------------------------------------


def _bias_field(anatomy: Anatomy, draws: _Draws) -> BiasField:
    """Spine-array elements under the back (and a body array on the abdomen unless the study is hard)."""
    t = SpineTables.of(anatomy)
    elements = []
    l3 = anatomy.vertebra("L3")
    canal_v, _, cv = canal_geometry(anatomy, t.depth_at(np.array([l3.s_middle])))
    back = float(canal_v[0] + cv + 2 * ERECTOR_DEPTH + anatomy.back_fat_mm + 12.0)
    for s in np.arange(-90.0, 330.0, 70.0):
        for x in (-80.0, -27.0, 27.0, 80.0):
            elements.append(anatomy.point(float(s), x, back))
            if draws.anterior_coil and -20 < s < 260:
                elements.append(anatomy.point(float(s), x, -anatomy.abdomen_depth - 15.0))
    reference = anatomy.point(anatomy.vertebra("L4").s_middle)
    return BiasField(np.array(elements), draws.coil_reach, reference, draws.bias)


def _acquire(
    anatomy: Anatomy,
    plane: SlicePlane,
    signals: dict[str, float],
    samples: int,
    bias: BiasField,
    draws: _Draws,
    phase_direction: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[list[Layer], int, int]]:
    """The magnitude image of one slice (slab average, coil sensitivity, ghosts, Rician noise) and the structures
    evaluated for it (layers, number of points, of which the first ones are the centre plane's pixels).

    The centre plane is rendered at full resolution. What changes across the slab's thickness (partial volume of a
    disc at the top of a vertebra, say) is rendered at a third of the resolution, `samples` planes across the slab
    minus the centre plane, and added: the through-plane average at a fraction of the cost, edges kept sharp."""
    h = min(plane.pixel_spacing)
    shape = (plane.rows, plane.columns)
    coarse = _reduced(plane, SLAB_REDUCTION)
    offsets = (np.arange(samples) - (samples - 1) / 2) * plane.thickness / samples
    planes = [Points.on_plane(anatomy, plane), *(Points.on_plane(anatomy, coarse, float(o)) for o in offsets)]
    sizes = [p.s.size for p in planes]
    # one evaluation for all planes: the per-call overhead of numpy dominates on the small ones
    together = Points(*(np.concatenate([getattr(p, k) for p in planes]) for k in ("s", "u", "v")))
    pixel_size = np.repeat(np.array([h] + [SLAB_REDUCTION * h] * samples, np.float32), sizes)
    all_layers = layers(anatomy, together, signals)
    rendered = np.split(composite(together.s.size, all_layers, pixel_size), np.cumsum(sizes)[:-1])
    image = rendered[0].reshape(shape)
    low = [r.reshape(coarse.rows, coarse.columns) for r in rendered[1:]]
    centre_low = low[samples // 2] if samples % 2 else np.mean(low, axis=0)
    change = np.mean(low, axis=0) - centre_low
    image = image + _upsample(change, shape, SLAB_REDUCTION)
    phase_axis = 1 if phase_direction == "ROW" else 0
    heterogeneity = texture(planes[1 + samples // 2], anatomy, scale=1.2).reshape(coarse.rows, coarse.columns)
    image = tissue_heterogeneity(image, _upsample(heterogeneity, shape, SLAB_REDUCTION), 0.03)
    image = limited_resolution(image, phase_axis, draws.phase_resolution)
    image = image * _smooth_on_plane(bias.at, plane)
    image = ghosts(image, draws.ghost_amplitude, phase_axis, rng)
    sigma = signals["fat"] / draws.snr
    return rician(image, sigma, rng), (all_layers, together.s.size, sizes[0])


SLAB_REDUCTION = 3  # in-plane reduction of the planes that carry the through-plane partial volume


def _reduced(plane: SlicePlane, factor: int) -> SlicePlane:
    """The same field of view with pixels `factor` times larger, pixel (0, 0) centred on the first block."""
    shift = (factor - 1) / 2 * (
        plane.pixel_spacing[0] * plane.column_direction + plane.pixel_spacing[1] * plane.row_direction
    )
    return replace(
        plane,
        position=plane.position + shift,
        rows=-(-plane.rows // factor),
        columns=-(-plane.columns // factor),
        pixel_spacing=(factor * plane.pixel_spacing[0], factor * plane.pixel_spacing[1]),
    )


def _upsample(image: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear upsampling of an image of `_reduced` pixels back onto the full grid."""
    rows = np.clip((np.arange(shape[0]) - (factor - 1) / 2) / factor, 0, image.shape[0] - 1)
    columns = np.clip((np.arange(shape[1]) - (factor - 1) / 2) / factor, 0, image.shape[1] - 1)
    r0 = np.minimum(rows.astype(int), image.shape[0] - 2)
    c0 = np.minimum(columns.astype(int), image.shape[1] - 2)
    fr = (rows - r0).astype(np.float32)[:, None]
    fc = (columns - c0).astype(np.float32)[None, :]
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c0 + 1] * fc
    bottom = image[r0 + 1][:, c0] * (1 - fc) + image[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def _smooth_on_plane(field, plane: SlicePlane, step: int = 8) -> np.ndarray:
    """A smooth field of LPS points evaluated on every `step`-th pixel and interpolated bilinearly."""
    coarse = replace(
        plane,
        rows=(plane.rows - 1) // step + 2,
        columns=(plane.columns - 1) // step + 2,
        pixel_spacing=(step * plane.pixel_spacing[0], step * plane.pixel_spacing[1]),
    )
    values = field(coarse.pixel_centres().reshape(-1, 3)).reshape(coarse.rows, coarse.columns)
    rows = np.arange(plane.rows) / step
    columns = np.arange(plane.columns) / step
    r0, c0 = rows.astype(int), columns.astype(int)
    fr = (rows - r0).astype(np.float32)[:, None]
    fc = (columns - c0).astype(np.float32)[None, :]
    top = values[r0][:, c0] * (1 - fc) + values[r0][:, c0 + 1] * fc
    bottom = values[r0 + 1][:, c0] * (1 - fc) + values[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


def _slice_truth(
    anatomy: Anatomy, plane: SlicePlane, evaluated: tuple[list[Layer], int, int], refine: int = 4
) -> tuple[dict[str, np.ndarray], dict]:
    """Masks at pixel centres and exact areas: boundary pixels are resampled `refine` x `refine` times."""
    shape = (plane.rows, plane.columns)
    computed, point_count, centre_count = evaluated
    masks = masks_from_layers(anatomy, point_count, computed, "L4")
    masks = {name: mask[:centre_count].reshape(shape) for name, mask in masks.items()}
    boundary = np.zeros(shape, bool)
    for mask in masks.values():
        boundary |= ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    rows, columns = np.nonzero(boundary)
    pixel_area = plane.pixel_spacing[0] * plane.pixel_spacing[1]
    areas = {name: float((masks[name] & ~boundary).sum()) * pixel_area for name in TRUTH_STRUCTURES}
    if rows.size:
        fine = np.arange(refine) + 0.5 - refine / 2
        dr = (fine[:, None] / refine * plane.pixel_spacing[0]) * np.ones((1, refine))
        dc = np.ones((refine, 1)) * (fine[None, :] / refine * plane.pixel_spacing[1])
        base = (
            plane.position
            + rows[:, None] * plane.pixel_spacing[0] * plane.column_direction
            + columns[:, None] * plane.pixel_spacing[1] * plane.row_direction
        )
        sub = (
            base[:, None, :]
            + dr.reshape(-1)[None, :, None] * plane.column_direction
            + dc.reshape(-1)[None, :, None] * plane.row_direction
        ).reshape(-1, 3)
        fine_masks = truth_masks(anatomy, Points.from_lps(anatomy, sub), "L4")
        for name in TRUTH_STRUCTURES:
            fraction = fine_masks[name].reshape(rows.size, refine * refine).mean(axis=1)
            areas[name] += float(fraction.sum()) * pixel_area
    return masks, {k: round(v, 3) for k, v in areas.items()}

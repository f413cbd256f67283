"""The truth of a phantom study: exact areas on every axial slice, the L4 upper endplate, the reference slice.

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

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from workers.phantom.anatomy import Anatomy
from workers.phantom.points import Points
from workers.phantom.spine import SQUIRCLE
from workers.phantom.stacks import SlicePlane
from workers.phantom.structures import Layer, masks_from_layers, truth_masks

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


MIN_VERTEBRA_SECTION_MM2 = 200.0  # below this a slice only grazes L4: its PLVI is not stated (None)


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


def distance_to_endplate(anatomy: Anatomy, plane: SlicePlane) -> float:
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


def slab_top_to_endplate(anatomy: Anatomy, plane: SlicePlane) -> float:
    """How far (mm, along the endplate normal) the top of the slice's slab reaches above the L4 upper endplate."""
    centre, normal = anatomy.upper_endplate("L4")
    top = plane.position + plane.normal * plane.thickness / 2
    cosine = float(np.dot(normal, plane.normal))
    rim = l4_endplate_rim(anatomy)
    above_rim = ((top - rim) * plane.normal).sum(axis=1) / cosine
    above_centre = float(np.dot(top - centre, plane.normal)) / cosine + anatomy.endplate_concavity_mm
    return round(float(max(above_rim.max(), above_centre)), 4)


def reference_slices(slices: list[SliceTruth], height: float) -> tuple[str | None, list[str]]:
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


def slice_truth(
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

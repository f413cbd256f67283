"""Choose the axial slice just caudal to the L4 upper endplate, by 3D geometry alone.

Each slice's own ImagePositionPatient and ImageOrientationPatient place it; SliceLocation and InstanceNumber are
never used, because per-disc angled stacks make them disagree with where the slice actually is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.analysis.geometry import Plane, SliceGeometry

# The paper measures on "the slice just below the upper endplate": caudal to the endplate, but not so far that it
# leaves the top of L4 (a lumbar body is about 25-30 mm tall; 10 mm keeps it in the top third).
MAX_CAUDAL_MM = 10.0
# Endplates are concave by about 1 mm: a slab must reach this far past the plane at the rim to lie wholly in bone.
ENDPLATE_CONCAVITY_MM = 1.0


@dataclass(frozen=True)
class SliceChoice:
    index: int | None  # into the given slices; None when no slice qualifies
    slice_to_endplate_mm: float | None  # signed, positive = caudal to the endplate
    reason: str | None  # l4_not_covered when no slice lies in the top of L4


def where_slice_meets_axis(geometry: SliceGeometry, endplate: Plane) -> float:
    """Signed distance (mm) below the endplate at which a slice crosses the line through the endplate's centre
    along its normal: where the slice cuts the vertebral body, whatever the slice's tilt or field of view.

    Positive means caudal. Measured along the normal, so an angled per-disc slice gets its true distance."""
    normal = geometry.normal
    denominator = float(np.dot(endplate.normal, normal))
    if abs(denominator) < 0.2:  # slice nearly parallel to the spine: it never crosses the vertebral body axis
        return float("inf")
    cranial_distance = float(np.dot(geometry.position - endplate.point, normal)) / denominator
    return -cranial_distance


def choose_axial_slice(
    slices: Sequence[SliceGeometry], endplate: Plane, slice_thickness_mm: Sequence[float | None] | None = None
) -> SliceChoice:
    """The most cranial slice whose whole slab lies below the endplate, within MAX_CAUDAL_MM of it.

    A slab that still reaches into the disc shows a partial-volume body outline; when no slice lies wholly below
    within reach (thick slices), the deepest slice caudal to the endplate is the best there is."""
    distances = [where_slice_meets_axis(geometry, endplate) for geometry in slices]
    thicknesses = list(slice_thickness_mm) if slice_thickness_mm is not None else [None] * len(slices)
    caudal = [(d, i) for i, d in enumerate(distances) if 0.0 < d <= MAX_CAUDAL_MM]
    if not caudal:
        return SliceChoice(None, None, "l4_not_covered")
    in_bone = [(d, i) for d, i in caudal if d >= (thicknesses[i] or 0.0) / 2 + ENDPLATE_CONCAVITY_MM]
    distance, index = min(in_bone) if in_bone else max(caudal)
    return SliceChoice(index, round(distance, 2), None)

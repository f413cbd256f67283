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
# The endplate found is its centre, the deepest point of a surface dished by about 1 mm. A slice tilted against the
# endplate rises by sin(angle) per mm from where it crosses the body's axis; at the rim, about half a body's depth
# away, the bone stands the concavity higher than at the centre, which takes up part of that rise.
ENDPLATE_CONCAVITY_MM = 1.0
ENDPLATE_HALF_DEPTH_MM = 17.0
# How far the endplate found may lie from the true one (phantoms: half of them within 0.4 mm of the truth, nine in
# ten within 1 mm): a slice that misses being wholly below by less than this may be the right one.
ENDPLATE_UNCERTAINTY_MM = 1.0


@dataclass(frozen=True)
class SliceChoice:
    index: int | None  # into the given slices; None when no slice qualifies
    slice_to_endplate_mm: float | None  # signed, positive = caudal to the endplate
    reason: str | None  # l4_not_covered when no slice lies in the top of L4
    # The next slice up, when it may lie wholly below the endplate after all: the endplate's position and tilt
    # cannot tell which of the two is "just below" it.
    cranial_alternative: int | None = None


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


def _rise_at_rim(geometry: SliceGeometry, endplate: Plane) -> float:
    """How much higher above the endplate's centre a slice's slab reaches at the rim than where it crosses the axis,
    beyond the rim's own height (mm, at least 0)."""
    sine = float(np.sqrt(max(0.0, 1.0 - float(np.dot(geometry.normal, endplate.normal)) ** 2)))
    return max(0.0, ENDPLATE_HALF_DEPTH_MM * sine - ENDPLATE_CONCAVITY_MM)


def choose_axial_slice(
    slices: Sequence[SliceGeometry], endplate: Plane, slice_thickness_mm: Sequence[float | None] | None = None
) -> SliceChoice:
    """The most cranial slice whose whole slab lies below the endplate, across the body, within MAX_CAUDAL_MM of it.

    A slab that still reaches into the disc shows a partial-volume body outline; when no slice lies wholly below
    within reach (thick slices), the deepest slice caudal to the endplate is the best there is."""
    distances = [where_slice_meets_axis(geometry, endplate) for geometry in slices]
    thicknesses = list(slice_thickness_mm) if slice_thickness_mm is not None else [None] * len(slices)
    caudal = [(d, i) for i, d in enumerate(distances) if 0.0 < d <= MAX_CAUDAL_MM]
    if not caudal:
        return SliceChoice(None, None, "l4_not_covered")
    needed = {i: (thicknesses[i] or 0.0) / 2 + _rise_at_rim(slices[i], endplate) for _, i in caudal}
    in_bone = [(d, i) for d, i in caudal if d >= needed[i]]
    if not in_bone:
        distance, index = max(caudal)
        return SliceChoice(index, round(distance, 2), None)
    distance, index = min(in_bone)
    # The rise at the rim rests on the endplate's tilt, found to within a few degrees (as much as the rise itself):
    # the next slice up may be the right one if it is within the uncertainty of clearing the endplate untilted.
    nearly = [
        (d, i) for d, i in caudal if d < distance and d + ENDPLATE_UNCERTAINTY_MM >= (thicknesses[i] or 0.0) / 2
    ]
    return SliceChoice(index, round(distance, 2), None, max(nearly)[1] if nearly else None)

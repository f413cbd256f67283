"""Find each psoas on a bias-corrected axial slice in the canonical view (1 mm grid), given the vertebral body.

At L4 the psoas is the dark (muscle) region directly lateral to the vertebral body, roughly level with its centre.
Only what is as dark as muscle seeds it, so bowel, mesentery and slow-flowing vessels (intermediate signal) stay
out; dark neighbours touching it (aorta, vena cava, quadratus lumborum) are split off at narrow necks, and the
outline then moves out to the half-way level between muscle and fat. Holes are filled and small clefts closed, so
intramuscular fat counts as psoas, as it does when outlined by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.morphology import disk, h_maxima
from skimage.segmentation import watershed

PRIOR_OFFSET_MM = 17
"""Expected psoas centre at L4: this far lateral to the body's edge (half an adult psoas width)."""

PRIOR_RADIUS_MM = 14
SEARCH_LATERAL_MM = 80
WIDE_NECK = 0.7
"""Two dark basins are one structure when they meet along at least 70 % of the smaller one's width."""


STRICT_LEVEL = 0.15
"""Clearly muscle: below 15 % of the way from the muscle level to the fat level."""

EDGE_SEARCH_MM = 3
"""How far beyond the clear core the half-way edge is looked for (the width of a blurred edge)."""

FAT_POCKET_MM2 = 200
"""Enclosed bright pockets up to this size inside dark muscle are intramuscular fat and count as muscle."""


@dataclass(frozen=True)
class PsoasFinding:
    mask: np.ndarray
    confidence: float
    evidence: dict[str, float] = field(default_factory=dict)

    def evidence_for(self, side: str) -> dict[str, float]:
        return {f"psoas_{side}_{name}": value for name, value in self.evidence.items()}


def find_psoas(corrected: np.ndarray, body: np.ndarray, vertebra: np.ndarray) -> tuple[PsoasFinding, PsoasFinding]:
    """(right, left) psoas of the patient; the right one lies at lower columns in the canonical view."""
    return (_find_one(corrected, body, vertebra, side=-1), _find_one(corrected, body, vertebra, side=+1))


def _find_one(corrected: np.ndarray, body: np.ndarray, vertebra: np.ndarray, side: int) -> PsoasFinding:
    smooth = ndi.gaussian_filter(corrected, 1.0)
    top, left, bottom, right = regionprops(vertebra.astype(np.uint8))[0].bbox
    centre_row = int(round(0.5 * (top + bottom)))
    edge = left if side < 0 else right - 1
    roi = np.zeros_like(body)
    row_slice = slice(max(top - 45, 0), min(bottom + 15, body.shape[0]))
    if side < 0:
        column_slice = slice(max(edge - SEARCH_LATERAL_MM, 0), int(0.5 * (left + right)))
    else:
        column_slice = slice(int(0.5 * (left + right)), min(edge + SEARCH_LATERAL_MM, body.shape[1]))
    roi[row_slice, column_slice] = True
    roi &= body & ~ndi.binary_dilation(vertebra, disk(1))
    empty = np.zeros_like(body)
    if roi.sum() < 200:
        return PsoasFinding(empty, 0.0, {"found": 0.0})

    rr, cc = np.ogrid[: body.shape[0], : body.shape[1]]
    prior = (rr - centre_row) ** 2 + (cc - (edge + side * PRIOR_OFFSET_MM)) ** 2 <= PRIOR_RADIUS_MM**2
    if not np.any(prior & roi):
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    muscle_level = float(np.percentile(smooth[prior & roi], 20))
    fat_level = float(np.percentile(smooth[roi], 95))
    strict = muscle_level + STRICT_LEVEL * (fat_level - muscle_level)
    half_way = muscle_level + 0.5 * (fat_level - muscle_level)

    # The core is what is clearly muscle; bowel and mesentery are of intermediate signal and stay outside it.
    # Dark neighbours (aorta, vena cava, quadratus lumborum, the foramen) are split off where they meet the psoas
    # through a neck narrower than both (a watershed of the distance map, then merging across wide necks).
    clear = _fill_small_holes(ndi.binary_closing(roi & (smooth < strict), disk(1)) & roi, FAT_POCKET_MM2)
    clear = ndi.binary_opening(clear, disk(2))
    core = _blob_at(clear, prior)
    if core is None:
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    # The outline lies where the signal is half-way between muscle and fat (the edge of a blurred step), a few
    # millimetres out from the core at most; it is not allowed to run on into intermediate tissue.
    muscle = ndi.binary_dilation(core, disk(1), iterations=EDGE_SEARCH_MM, mask=roi & (smooth < half_way))
    muscle = _fill_small_holes(ndi.binary_closing(muscle, disk(3)), FAT_POCKET_MM2) | core
    muscle &= ~vertebra
    return PsoasFinding(muscle, *_evidence(muscle, smooth, vertebra, muscle_level, fat_level))


def _blob_at(mask: np.ndarray, prior: np.ndarray) -> np.ndarray | None:
    """The blob of ``mask`` under ``prior``: watershed basins of the distance map, merged across wide necks."""
    distance = ndi.distance_transform_edt(mask)
    markers, _ = ndi.label(h_maxima(distance, 1.0))
    basins = watershed(-distance, markers, mask=mask)
    if basins.max() == 0:
        return None
    overlaps = np.bincount(basins[prior].ravel(), minlength=basins.max() + 1)
    overlaps[0] = 0
    if overlaps.max() == 0:
        return None
    radius = ndi.maximum(distance, basins, index=np.arange(basins.max() + 1))
    members = {int(np.argmax(overlaps))}
    blob = basins == next(iter(members))
    while True:
        touching = basins[ndi.binary_dilation(blob, disk(1)) & ~blob]
        necks = np.bincount(touching, minlength=basins.max() + 1)
        necks[0] = 0
        blob_radius = max(radius[index] for index in members)
        wide = [index for index in np.nonzero(necks)[0]
                if necks[index] >= WIDE_NECK * 2 * min(radius[index], blob_radius)]
        if not wide:
            return blob
        members.update(int(index) for index in wide)
        blob = np.isin(basins, list(members))


def _fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill enclosed holes up to ``max_area`` pixels; larger enclosed regions are other structures, not fat."""
    holes, _ = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    sizes = np.bincount(holes.ravel())
    small = sizes <= max_area
    small[0] = False
    return mask | small[holes]


def _evidence(muscle: np.ndarray, smooth: np.ndarray, vertebra: np.ndarray, muscle_level: float,
              fat_level: float) -> tuple[float, dict[str, float]]:
    """Confidence 0..1 from area, shape, contrast, and how much of the outline follows a real edge.

    ``edge_support`` is the share of the outline (beside the vertebra excepted) where the tissue 2 mm outside is
    brighter than half-way to fat; where the outline was cut through continuous dark tissue it is not.
    """
    region = regionprops(muscle.astype(np.uint8))[0]
    span = max(fat_level - muscle_level, 1e-6)
    outside = ndi.binary_dilation(muscle, disk(2)) & ~ndi.binary_dilation(muscle, disk(1))
    outside &= ~ndi.binary_dilation(vertebra, disk(3))
    edge_support = float(np.mean(smooth[outside] > muscle_level + 0.5 * span)) if outside.any() else 0.0
    contrast = span / max(fat_level, 1e-6)
    plausible_area = float(np.clip(min((region.area - 150) / 150, (4500 - region.area) / 1000), 0.0, 1.0))
    solidity_term = float(np.clip((region.solidity - 0.75) / 0.15, 0.0, 1.0))
    contrast_term = float(np.clip(contrast / 0.4, 0.0, 1.0))
    support_term = float(np.clip((edge_support - 0.4) / 0.4, 0.0, 1.0))
    confidence = plausible_area * solidity_term * contrast_term * support_term
    return confidence, {
        "found": 1.0,
        "area_mm2": float(region.area),
        "solidity": float(region.solidity),
        "eccentricity": float(region.eccentricity),
        "contrast": float(contrast),
        "edge_support": edge_support,
        "confidence": float(confidence),
    }

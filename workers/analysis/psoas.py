"""Find each psoas on a bias-corrected axial slice in the canonical view (1 mm grid), given the vertebral body.

At L4 the psoas is the dark (muscle) region directly lateral to the vertebral body, roughly level with its centre.
It may touch the aorta or vena cava (anteromedially), bowel (anteriorly) and quadratus lumborum (posterolaterally),
so the dark region around it is split at its narrow necks (a watershed of the distance map) and only the part at
the expected place is kept. Holes are filled and small clefts closed, so intramuscular fat counts as psoas, as it
does when outlined by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk, h_maxima
from skimage.segmentation import watershed

PRIOR_OFFSET_MM = 17
"""Expected psoas centre at L4: this far lateral to the body's edge (half an adult psoas width)."""

PRIOR_RADIUS_MM = 14
SEARCH_LATERAL_MM = 80
NECK_DEPTH_MM = 3.0
"""Two dark blobs joined by a neck at least this much narrower (in radius) than both are treated as two structures."""


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

    threshold = threshold_otsu(smooth[roi])
    dark = ndi.binary_opening(roi & (smooth < threshold), disk(2))

    prior = np.zeros_like(body)
    prior_column = edge + side * PRIOR_OFFSET_MM
    rr, cc = np.ogrid[: body.shape[0], : body.shape[1]]
    prior = (rr - centre_row) ** 2 + (cc - prior_column) ** 2 <= PRIOR_RADIUS_MM**2

    distance = ndi.distance_transform_edt(dark)
    markers, _ = ndi.label(h_maxima(distance, NECK_DEPTH_MM))
    basins = watershed(-distance, markers, mask=dark)
    overlaps = np.bincount(basins[prior].ravel(), minlength=basins.max() + 1)
    overlaps[0] = 0
    if overlaps.max() == 0:
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    muscle = basins == int(np.argmax(overlaps))
    muscle = ndi.binary_fill_holes(ndi.binary_closing(ndi.binary_fill_holes(muscle), disk(3)))
    muscle &= ~vertebra
    return PsoasFinding(muscle, *_evidence(muscle, smooth, threshold))


def _evidence(muscle: np.ndarray, smooth: np.ndarray, threshold: float) -> tuple[float, dict[str, float]]:
    """Confidence 0..1 from area, shape and contrast against the tissue just outside the outline."""
    region = regionprops(muscle.astype(np.uint8))[0]
    ring = ndi.binary_dilation(muscle, disk(4)) & ~ndi.binary_dilation(muscle, disk(1))
    inside = float(np.median(smooth[muscle]))
    outside = float(np.median(smooth[ring]))
    contrast = (outside - inside) / max(outside, 1e-6)
    plausible_area = float(np.clip(min((region.area - 250) / 250, (4000 - region.area) / 1000), 0.0, 1.0))
    solidity_term = float(np.clip((region.solidity - 0.75) / 0.15, 0.0, 1.0))
    contrast_term = float(np.clip(contrast / 0.4, 0.0, 1.0))
    confidence = plausible_area * solidity_term * contrast_term
    return confidence, {
        "found": 1.0,
        "area_px": float(region.area),
        "solidity": float(region.solidity),
        "eccentricity": float(region.eccentricity),
        "contrast": float(contrast),
        "confidence": float(confidence),
    }

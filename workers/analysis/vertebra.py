"""Find the vertebral body on a bias-corrected axial slice in the canonical view, on a 1 mm grid.

The body is the round region of intermediate (marrow) signal near the midline, flanked on both sides by the
darker psoas. Its marrow signal differs between patients (fatty marrow in the elderly is nearly as bright as fat),
so the search tries a set of intensity windows and keeps the component that best fits the anatomy. An opening
wider than a pedicle (L4 pedicles are about 8-10 mm wide) separates the body from pedicles and posterior elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.morphology import disk

PEDICLE_CUT_RADIUS_MM = 5
"""Opening radius: a disc of 11 mm does not fit through an adult pedicle or lamina, but fits in any L4 body."""

BODY_AREA_MM2 = (700.0, 3200.0)
"""Search range for an adult lumbar body cross-section (L4 about 1200-2200 mm2); wider than the quality gate's."""

FLANK_MM = (3, 25)
"""Where the psoas lies beside the body: from 3 to 25 mm lateral to its edge."""


@dataclass(frozen=True)
class VertebraFinding:
    mask: np.ndarray
    confidence: float
    evidence: dict[str, float] = field(default_factory=dict)


def find_vertebral_body(corrected: np.ndarray, body: np.ndarray) -> VertebraFinding | None:
    """The vertebral body mask (canonical view, 1 mm grid) with its evidence, or None when nothing fits."""
    smooth = ndi.gaussian_filter(corrected, 1.0)
    inside = smooth[body]
    levels = np.quantile(inside, np.linspace(0.1, 0.9, 9))
    columns = np.nonzero(body.any(axis=0))[0]
    midline = 0.5 * (columns[0] + columns[-1])
    rows = np.nonzero(body.any(axis=1))[0]
    footprint = disk(PEDICLE_CUT_RADIUS_MM)

    best: tuple[float, np.ndarray, dict[str, float]] | None = None
    for low_index in range(len(levels) - 2):
        for high_index in range(low_index + 2, len(levels)):
            window = body & (smooth > levels[low_index]) & (smooth < levels[high_index])
            opened = ndi.binary_opening(window, footprint)
            labels, count = ndi.label(opened)
            for region in regionprops(labels):
                if not BODY_AREA_MM2[0] <= region.area <= BODY_AREA_MM2[1]:
                    continue
                candidate = ndi.binary_fill_holes(labels == region.label)
                evidence = _score(candidate, smooth, midline, rows)
                if best is None or evidence["vertebra_score"] > best[0]:
                    best = (evidence["vertebra_score"], candidate, evidence)
    if best is None or best[0] <= 0.05:
        return None
    score, mask, evidence = best
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, disk(2)))
    return VertebraFinding(mask=mask, confidence=float(np.clip(score * 1.25, 0.0, 1.0)), evidence=evidence)


def _score(candidate: np.ndarray, smooth: np.ndarray, midline: float, body_rows: np.ndarray) -> dict[str, float]:
    """Anatomical fit of one candidate region, each term 0..1, multiplied into ``vertebra_score``."""
    region = regionprops(candidate.astype(np.uint8))[0]
    centre_row, centre_column = region.centroid
    top, left, bottom, right = region.bbox
    width, depth = right - left, bottom - top
    values = smooth[candidate]
    mean = float(np.mean(values))

    near_midline = float(np.exp(-(((centre_column - midline) / 25.0) ** 2)))
    depth_fraction = (centre_row - body_rows[0]) / max(body_rows[-1] - body_rows[0], 1)
    posterior_half = float(np.clip((depth_fraction - 0.3) / 0.2, 0.0, 1.0))
    roundness = float(np.clip((region.solidity - 0.8) / 0.15, 0.0, 1.0))
    aspect = float(np.clip(1.0 - abs(np.log(width / max(depth, 1))) / np.log(2.2), 0.0, 1.0))
    homogeneity = float(np.clip(1.0 - np.std(values) / max(mean, 1e-6) / 0.6, 0.0, 1.0))

    band = slice(max(top, 0), bottom)
    flank_right = smooth[band, max(left - FLANK_MM[1], 0): max(left - FLANK_MM[0], 0)]
    flank_left = smooth[band, right + FLANK_MM[0]: right + FLANK_MM[1]]
    flank_contrast = []
    for flank in (flank_right, flank_left):
        darkest = float(np.percentile(flank, 30)) if flank.size else mean
        flank_contrast.append(np.clip((mean - darkest) / max(mean, 1e-6) / 0.4, 0.0, 1.0))
    flanked = float(min(flank_contrast))

    score = near_midline * posterior_half * roundness * aspect * homogeneity * flanked
    return {
        "vertebra_score": float(score),
        "vertebra_near_midline": near_midline,
        "vertebra_roundness": roundness,
        "vertebra_aspect": aspect,
        "vertebra_homogeneity": homogeneity,
        "vertebra_flanked_by_muscle": flanked,
        "vertebra_solidity": float(region.solidity),
    }

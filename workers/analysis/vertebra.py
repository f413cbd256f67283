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

from workers.analysis.evidence import band, ramp

PEDICLE_CUT_RADIUS_MM = 5
"""Opening radius: a disc of 11 mm does not fit through an adult pedicle or lamina, but fits in any L4 body."""

BODY_AREA_MM2 = (700.0, 3200.0)
"""Search range for an adult lumbar body cross-section (L4 about 1200-2200 mm2); wider than the quality gate's."""

EDGE_SEARCH_MM = 4
"""How far beyond the selected core the half-way edge is looked for: enough for a blurred edge, not for a leak."""

SEARCH_HALF_WIDTH_MM = 75
"""Half-width of the band around the trunk's midline searched for the body (its centre, plus its width, plus
the psoas flanks the score looks at)."""

FLANK_MM = (3, 25)
"""Where the psoas lies beside the body: from 3 to 25 mm lateral to its edge."""


@dataclass(frozen=True)
class VertebraFinding:
    mask: np.ndarray
    confidence: float
    evidence: dict[str, float] = field(default_factory=dict)


def find_vertebral_body(corrected: np.ndarray, body: np.ndarray) -> VertebraFinding | None:
    """The vertebral body mask (canonical view, 1 mm grid) with its evidence, or None when nothing fits."""
    columns = np.nonzero(body.any(axis=0))[0]
    rows = np.nonzero(body.any(axis=1))[0]
    # The body lies within a few centimetres of the trunk's midline; searching only there saves most of the time.
    midline = 0.5 * (columns[0] + columns[-1])
    first, last = max(int(midline) - SEARCH_HALF_WIDTH_MM, 0), min(int(midline) + SEARCH_HALF_WIDTH_MM, body.shape[1])
    smooth = ndi.gaussian_filter(corrected, 1.0)[:, first:last]
    trunk = body[:, first:last]
    midline -= first
    levels = np.quantile(smooth[trunk], np.linspace(0.1, 0.9, 9))
    footprint = disk(PEDICLE_CUT_RADIUS_MM)

    best: tuple[float, np.ndarray, dict[str, float]] | None = None
    seen: set[tuple[int, ...]] = set()
    for low_index in range(len(levels) - 2):
        for high_index in range(low_index + 2, len(levels)):
            window = trunk & (smooth > levels[low_index]) & (smooth < levels[high_index])
            labels, _ = ndi.label(ndi.binary_opening(window, footprint))
            for region in regionprops(labels):
                key = (*region.bbox, int(region.area))
                if not BODY_AREA_MM2[0] <= region.area <= BODY_AREA_MM2[1] or key in seen:
                    continue
                seen.add(key)
                candidate = ndi.binary_fill_holes(labels == region.label)
                evidence = _score(candidate, smooth, midline, rows)
                # Many windows fit perfectly; among them the most convex one has the fewest leaks.
                preference = evidence["vertebra_score"] + 0.1 * evidence["vertebra_solidity"]
                if best is None or preference > best[0]:
                    best = (preference, candidate, evidence)
    if best is None or best[2]["vertebra_score"] <= 0.05:
        return None
    grown, contrast = _grow_to_half_way_edges(best[1], smooth, trunk)
    evidence = _score(grown, smooth, midline, rows)
    evidence["vertebra_edge_contrast"] = contrast
    confidence = evidence["vertebra_score"] * ramp(contrast, 0.05, 0.2)
    mask = np.zeros_like(body)
    mask[:, first:last] = grown
    return VertebraFinding(mask=mask, confidence=confidence, evidence=evidence)


def _grow_to_half_way_edges(core: np.ndarray, smooth: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, float]:
    """Grow the candidate core to the whole body: its edge lies half-way between marrow and the tissue beyond.

    The half-way level is where a blurred edge between two tissues sits (full width at half maximum), so the
    outline does not depend on how sharp the image is. Dark neighbours are the psoas and cortex, bright ones the
    surrounding fat. Returns the mask and the weaker of the two contrasts (0..1 of the marrow-to-neighbour gap).
    """
    marrow = float(np.median(smooth[core]))
    ring = ndi.binary_dilation(core, disk(12)) & ~ndi.binary_dilation(core, disk(2)) & body
    neighbours = smooth[ring]
    dark = float(np.percentile(neighbours, 10))
    bright = float(np.percentile(neighbours, 90))
    inside = (smooth > 0.5 * (marrow + dark)) & (smooth < 0.5 * (marrow + bright))
    inside &= ndi.binary_dilation(core, disk(EDGE_SEARCH_MM))
    opened = ndi.binary_opening(inside | core, disk(PEDICLE_CUT_RADIUS_MM))
    labels, _ = ndi.label(opened)
    overlap = np.bincount(labels[core].ravel(), minlength=labels.max() + 1)
    overlap[0] = 0
    mask = core if overlap.max() == 0 else labels == int(np.argmax(overlap))
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, disk(2)))
    contrast = min(marrow - dark, bright - marrow) / max(bright, 1e-6)
    return mask, float(contrast)


def _score(candidate: np.ndarray, smooth: np.ndarray, midline: float, body_rows: np.ndarray) -> dict[str, float]:
    """Anatomical fit of one region, each term 0..1 (1 = typical of a lumbar body), multiplied into the score."""
    region = regionprops(candidate.astype(np.uint8))[0]
    centre_row, centre_column = region.centroid
    top, left, bottom, right = region.bbox
    values = smooth[candidate]
    mean = float(np.mean(values))

    terms = {
        "near_midline": ramp(abs(centre_column - midline), 40.0, 15.0),
        # The body sits behind the abdominal contents: not in the front fifth of the trunk.
        "behind_abdomen": ramp((centre_row - body_rows[0]) / max(body_rows[-1] - body_rows[0], 1), 0.2, 0.35),
        "roundness": ramp(region.solidity, 0.8, 0.9),
        # An axial lumbar body is wider than deep, about 1.2-1.7 times.
        "aspect": band((right - left) / max(bottom - top, 1), 0.6, 0.9, 1.9, 2.6),
        "homogeneity": ramp(float(np.std(values)) / max(mean, 1e-6), 0.8, 0.35),
    }
    band_rows = slice(top, bottom)
    flanks = (smooth[band_rows, max(left - FLANK_MM[1], 0): max(left - FLANK_MM[0], 0)],
              smooth[band_rows, right + FLANK_MM[0]: right + FLANK_MM[1]])
    darker = [(mean - float(np.percentile(flank, 30))) / max(mean, 1e-6) if flank.size else 0.0 for flank in flanks]
    terms["flanked_by_muscle"] = ramp(min(darker), 0.0, 0.3)
    score = float(np.prod(list(terms.values())))
    return {"vertebra_score": score, **{f"vertebra_{name}": value for name, value in terms.items()},
            "vertebra_solidity": float(region.solidity), "vertebra_area_mm2": float(region.area)}

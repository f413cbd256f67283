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
from skimage.morphology import convex_hull_image, disk, h_maxima
from skimage.segmentation import watershed

from workers.analysis.evidence import band, ellipse_fit, open_by_disk, ramp
from workers.analysis.outline import refine_star_outline

PRIOR_OFFSET_MM = 17
"""Expected psoas centre at L4: this far lateral to the body's edge (half an adult psoas width)."""

PRIOR_RADIUS_MM = 14
SEARCH_LATERAL_MM = 80
WIDE_NECK = 0.75

PEAK_HEIGHT_MM = 0.5
"""A peak of the distance map this much above the neck to its neighbour is a structure of its own: the vena cava
pressed flat against the psoas stands less than 1 mm above the wide neck between them."""


STRICT_LEVEL = 0.15
"""Clearly muscle: below 15 % of the way from the muscle level to the fat level."""

EDGE_SEARCH_MM = 3
"""How far beyond the clear core the half-way edge is looked for (the width of a blurred edge)."""

SOLIDITY_RAMP = (0.84, 0.9)
ELLIPSE_FIT_RAMP = (0.86, 0.91)

ZONE_ANTERIOR_MM = 4
"""A part of the psoas is centred no further than this in front of the body; the vena cava lying against the
right psoas is centred further forward (about 4-6 mm on the phantoms; 8 let it join the psoas on 4 of 192)."""
ZONE_POSTERIOR_MM = 5

MARGIN = 8

MIN_MUSCLE_MM2 = 50
"""Less than this is no psoas at all (the quality gate's plausible range starts at 200 mm2)."""

FAT_POCKET_MM2 = 200

POCKET_RIM_MM = 2
"""The blurred edge of muscle around a fat pocket: added with the pocket, so the pocket is not an island."""

POCKET_RING_MM = 3
POCKET_RING_CLEAR_SHARE = 0.5
"""A pocket inside the psoas is ringed by clear muscle (from 2 to 3 mm out: 0.67-0.83 on the phantoms), fat
between vessel walls or bowel by tissue that is not (0-0.35 on the phantoms and MuscleMap)."""

STREAK_SOLIDITY = 0.87
"""A psoas with the fat streaks beside the body filled stays convex (solidity 0.88-0.96 on the phantoms);
filling the fat wedge between the psoas, the vena cava and the body leaves it lobed (0.85)."""

FAT_BAY_SHARE = 0.3
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
    smooth = ndi.gaussian_filter(corrected, 1.0)
    sharp = ndi.gaussian_filter(corrected, 0.5)  # for placing the outline: less blur, same edges
    return (_find_one(smooth, sharp, body, vertebra, side=-1), _find_one(smooth, sharp, body, vertebra, side=+1))


def _find_one(smooth: np.ndarray, sharp: np.ndarray, body: np.ndarray, vertebra: np.ndarray,
              side: int) -> PsoasFinding:
    """One psoas; ``side`` is -1 for the patient's right (towards column 0), +1 for the left."""
    top, left, bottom, right = regionprops(vertebra.astype(np.uint8))[0].bbox
    centre_row = round(0.5 * (top + bottom))
    edge = left if side < 0 else right - 1
    middle = int(0.5 * (left + right))
    rows = slice(max(top - 45, 0), min(bottom + 15, body.shape[0]))
    columns = slice(max(edge - SEARCH_LATERAL_MM, 0), middle) if side < 0 else \
        slice(middle, min(edge + SEARCH_LATERAL_MM, body.shape[1]))
    # Work in a window around the search region (with a margin for the closings), then place the result back.
    window = (slice(max(rows.start - MARGIN, 0), rows.stop + MARGIN),
              slice(max(columns.start - MARGIN, 0), columns.stop + MARGIN))
    roi = np.zeros_like(body)
    roi[rows, columns] = True
    roi = (roi & body & ~ndi.binary_dilation(vertebra, disk(1)))[window]
    smooth, sharp, vertebra = smooth[window], sharp[window], vertebra[window]
    empty = np.zeros(body.shape, dtype=bool)
    rr, cc = np.ogrid[window[0].start: window[0].stop, window[1].start: window[1].stop]
    rr, cc = rr[: roi.shape[0]], cc[:, : roi.shape[1]]
    prior = (rr - centre_row) ** 2 + (cc - (edge + side * PRIOR_OFFSET_MM)) ** 2 <= PRIOR_RADIUS_MM**2
    if roi.sum() < 200 or not np.any(prior & roi):
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    fat_level = float(np.percentile(smooth[roi], 95))
    floor = float(np.percentile(smooth[roi], 1))
    seed_values = smooth[prior & roi]
    seed_values = seed_values[seed_values < 0.5 * (floor + fat_level)]
    if seed_values.size < 20:
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    muscle_level = float(np.median(seed_values))
    noise = 1.4826 * float(np.median(np.abs(seed_values - muscle_level)))
    strict = muscle_level + STRICT_LEVEL * (fat_level - muscle_level)
    half_way = muscle_level + 0.5 * (fat_level - muscle_level)
    # Flowing blood (aorta, vena cava, iliac vessels) can be much darker than muscle: a flow void. Whatever is
    # darker than muscle by more than the noise and half the muscle-to-void gap is not muscle.
    darker_than_muscle = muscle_level - max(4.0 * noise, 0.5 * (muscle_level - floor))
    muscle_like = roi & (smooth > darker_than_muscle)

    # The core is what is clearly muscle; bowel and mesentery are of intermediate signal and stay outside it.
    # Dark neighbours (aorta, vena cava, quadratus lumborum, the foramen) are split off where they meet the psoas
    # through a neck narrower than both (a watershed of the distance map, then merging across wide necks).
    clear = ndi.binary_closing(muscle_like & (smooth < strict), disk(1)) & roi
    clear = _fill_fat_pockets(clear, muscle_like)
    rim = clear | (muscle_like & (smooth < half_way))
    filled = _fill_rimmed_fat_pockets(clear, rim, _rimmed_fat_pockets(clear, muscle_like, rim))
    # At L4 the psoas lies beside the body: from a little in front of it to a little behind it, and lateral to
    # the middle of its side.
    zone = ((rr >= top - ZONE_ANTERIOR_MM) & (rr <= bottom + ZONE_POSTERIOR_MM)
            & (side * (cc - (edge - side * 0.2 * (right - left))) >= 0))
    core = _blob_at(open_by_disk(filled, 2), prior, zone)
    if core is None:
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    # A streak of fat reaching the side against the body is closed by the body's edge, not by muscle; so is
    # the fat wedge between the psoas, the vena cava and the body. Filled, the streak leaves the psoas convex,
    # the wedge leaves it lobed or joins it to the vena cava in front of the body: pockets closed by the body
    # are kept only if the psoas found with them stays solid and reaches no further in front than without.
    closed_by_body = rim | ndi.binary_dilation(vertebra, disk(2))
    beside_body = _rimmed_fat_pockets(clear, muscle_like, closed_by_body) & ~filled
    if beside_body.any():
        trial = _blob_at(open_by_disk(_fill_rimmed_fat_pockets(filled, rim, beside_body), 2), prior, zone)
        front_limit = min(_front_row(core), top - ZONE_ANTERIOR_MM - window[0].start)
        if (trial is not None and regionprops(trial.astype(np.uint8))[0].solidity >= STREAK_SOLIDITY
                and _front_row(trial) >= front_limit):
            core = trial
    # The outline lies where the signal is half-way between muscle and fat (the edge of a blurred step), a few
    # millimetres out from the core at most; it is not allowed to run on into intermediate tissue.
    muscle = ndi.binary_dilation(core, disk(1), iterations=EDGE_SEARCH_MM, mask=muscle_like & (smooth < half_way))
    muscle = _fill_fat_pockets(ndi.binary_closing(muscle, disk(3)) & muscle_like, muscle_like) | core
    # Place the outline between pixels: half-way from muscle to whatever lies beyond, ray by ray.
    refined, _ = refine_star_outline(sharp, muscle, inside_level=muscle_level,
                                     minimum_step=0.25 * (fat_level - muscle_level), max_shift_mm=2.0)
    muscle = _largest_piece(refined & muscle_like)
    muscle = _fill_fatty_bays(muscle, smooth >= half_way, ndi.binary_dilation(vertebra, disk(3)))
    muscle &= ~vertebra
    if muscle.sum() < MIN_MUSCLE_MM2:
        return PsoasFinding(empty, 0.0, {"found": 0.0})
    confidence, evidence = _evidence(muscle, smooth, vertebra, muscle_level, fat_level)
    empty[window] = muscle
    return PsoasFinding(empty, confidence, evidence)


def _blob_at(mask: np.ndarray, prior: np.ndarray, zone: np.ndarray) -> np.ndarray | None:
    """The blob of ``mask`` under ``prior``: watershed basins of the distance map, merged across wide necks.

    Two basins are one structure when the neck between them is nearly as thick as the thinner of the two
    (the saddle of the distance map at least ``WIDE_NECK`` times the smaller peak): an oval psoas split in two
    halves is merged again, a round vessel pressed against the psoas is not. Basins centred outside ``zone``
    (where the psoas lies at L4) are never merged: the vena cava in front, the canal's surroundings behind.
    """
    distance = ndi.distance_transform_edt(mask)
    markers, _ = ndi.label(h_maxima(distance, PEAK_HEIGHT_MM))
    basins = watershed(-distance, markers, mask=mask)
    if basins.max() == 0:
        return None
    overlaps = np.bincount(basins[prior].ravel(), minlength=basins.max() + 1)
    overlaps[0] = 0
    if overlaps.max() == 0:
        return None
    peaks = ndi.maximum(distance, basins, index=np.arange(basins.max() + 1))
    centres = ndi.center_of_mass(mask, basins, index=np.arange(1, basins.max() + 1))
    in_zone = [False] + [bool(zone[round(row), round(column)]) for row, column in centres]
    members = {int(np.argmax(overlaps))}
    blob = basins == next(iter(members))
    while True:
        # The saddle towards each neighbouring basin: the thickest point of the neck, seen from its side.
        rim = ndi.binary_dilation(blob, disk(1)) & ~blob & mask
        saddles = ndi.maximum(distance, basins * rim, index=np.arange(basins.max() + 1))
        blob_peak = max(peaks[index] for index in members)
        wide = [index for index in range(1, basins.max() + 1)
                if index not in members and saddles[index] > 0 and in_zone[index]
                and saddles[index] >= WIDE_NECK * min(peaks[index], blob_peak)]
        if not wide:
            return blob
        members.update(wide)
        blob = np.isin(basins, list(members))


def _front_row(mask: np.ndarray) -> int:
    """The row of the front of ``mask`` (the canonical view has anterior at row 0)."""
    return int(np.argmax(mask.any(axis=1)))


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece: a psoas is one piece, and crumbs cut off by the refinement are not it."""
    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_fat_pockets(mask: np.ndarray, fatty: np.ndarray) -> np.ndarray:
    """Fill the fat pockets enclosed by ``mask`` (see ``_fat_pockets``)."""
    return mask | _fat_pockets(mask, fatty)


def _rimmed_fat_pockets(clear: np.ndarray, fatty: np.ndarray, rim: np.ndarray) -> np.ndarray:
    """Fat pockets enclosed by ``rim`` (tissue darker than half-way to fat) and mostly ringed by ``clear``.

    Intramuscular fat lies inside a rim of muscle that may be too thin to look clearly muscle, so the pocket
    opens to the outside in ``clear`` as a cleft and splits the muscle. Fat enclosed by the walls of vessels and
    bowel, or in the wedge between the psoas, the body and the vena cava, is ringed by them, not by clear muscle.
    """
    pockets, count = ndi.label(_fat_pockets(rim, fatty))
    for index in range(1, count + 1):
        pocket = pockets == index
        ring = ndi.binary_dilation(pocket, disk(POCKET_RING_MM)) & ~ndi.binary_dilation(pocket, disk(1))
        if np.mean(clear[ring]) < POCKET_RING_CLEAR_SHARE:
            pockets[pocket] = 0
    return pockets > 0


def _fill_rimmed_fat_pockets(clear: np.ndarray, rim: np.ndarray, pockets: np.ndarray) -> np.ndarray:
    """Add ``pockets`` to ``clear`` with the rim just around them: it is the blurred edge of the muscle."""
    return clear | pockets | (ndi.binary_dilation(pockets, disk(POCKET_RIM_MM)) & rim)


def _fat_pockets(enclosing: np.ndarray, fatty: np.ndarray) -> np.ndarray:
    """Holes of ``enclosing`` of at most ``FAT_POCKET_MM2`` lying within ``fatty`` (tissue not darker than muscle).

    Larger enclosed regions are other structures, and dark ones (a flow void caught between muscle and bone)
    are vessels, not intramuscular fat.
    """
    holes, count = ndi.label(ndi.binary_fill_holes(enclosing) & ~enclosing)
    if count == 0:
        return holes > 0
    sizes = np.bincount(holes.ravel())
    outside_fatty = np.bincount(holes[~fatty].ravel(), minlength=count + 1)
    pocket = (sizes <= FAT_POCKET_MM2) & (outside_fatty == 0)
    pocket[0] = False
    return pocket[holes]


def _fill_fatty_bays(muscle: np.ndarray, fatty: np.ndarray, keep_out: np.ndarray) -> np.ndarray:
    """Add fat-filled bays of the outline: intramuscular fat that reaches the surface of a fatty psoas.

    The psoas is convex, so fat inside its convex hull is taken as intramuscular, as a hand outline following
    the fascia would; bays beside the vertebral body (``keep_out``) and bays larger than ``FAT_BAY_SHARE`` of
    the muscle are left out (there the concavity is anatomy, or the muscle found is only a fragment).
    """
    rows, columns = np.nonzero(muscle)
    if rows.size < 20:
        return muscle
    box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
    bays = convex_hull_image(muscle[box]) & ~muscle[box] & fatty[box] & ~keep_out[box]
    labels, count = ndi.label(bays)
    if count == 0:
        return muscle
    sizes = np.bincount(labels.ravel())
    accepted = sizes <= FAT_BAY_SHARE * rows.size
    accepted[0] = False
    filled = muscle.copy()
    filled[box] |= accepted[labels]
    return filled


def _evidence(muscle: np.ndarray, smooth: np.ndarray, vertebra: np.ndarray, muscle_level: float,
              fat_level: float) -> tuple[float, dict[str, float]]:
    """Confidence 0..1 from area, shape, contrast, and how much of the outline follows a real edge.

    ``edge_support`` is the share of the outline (beside the vertebra excepted) where the tissue 2 mm outside is
    brighter than half-way to fat; where the outline was cut through continuous dark tissue it is not. A psoas at
    L4 is a convex oval (solidity about 0.9-0.97, close to its moment ellipse); a mask that took in a vessel or
    lost a fatty part is lobed or bitten.
    """
    region = regionprops(muscle.astype(np.uint8))[0]
    span = max(fat_level - muscle_level, 1e-6)
    outside = ndi.binary_dilation(muscle, disk(2)) & ~ndi.binary_dilation(muscle, disk(1))
    outside &= ~ndi.binary_dilation(vertebra, disk(3))
    edge_support = float(np.mean(smooth[outside] > muscle_level + 0.5 * span)) if outside.any() else 0.0
    contrast = span / max(fat_level, 1e-6)
    fit = ellipse_fit(muscle)
    terms = {
        "area_term": band(float(region.area), 150.0, 300.0, 3500.0, 4500.0),
        "solidity_term": ramp(float(region.solidity), *SOLIDITY_RAMP),
        "ellipse_term": ramp(fit, *ELLIPSE_FIT_RAMP),
        "contrast_term": ramp(contrast, 0.0, 0.4),
        "support_term": ramp(edge_support, 0.4, 0.8),
    }
    confidence = float(np.prod(list(terms.values())))
    return confidence, {
        "found": 1.0,
        "area_mm2": float(region.area),
        "solidity": float(region.solidity),
        "eccentricity": float(region.eccentricity),
        "contrast": float(contrast),
        "edge_support": edge_support,
        "ellipse_fit": fit,
        **terms,
        "confidence": confidence,
    }

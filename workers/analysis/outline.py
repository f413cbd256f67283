"""Refine a rough, star-shaped region to its true edge, ray by ray (1 mm grid, distances in mm = pixels).

A single threshold cannot place the edge of a vertebral body: around it lie fat (bright), psoas and vessels
(dark), ligament and disc (in between). Along each ray from the region's centre the edge is where the signal has
gone half of the way from the inside level to the level of the tissue just beyond (the half-maximum of a blurred
step), whatever that tissue is. Rays that find no such step keep the rough outline; the radii are then smoothed
across angles, so a single odd ray (a vessel, a pedicle root, noise) cannot carry the outline off.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon

RAYS = 120
STEP_MM = 0.5
MIN_BAND_MM = 3.0
BEYOND_MM = 3.0
"""The tissue beyond the edge is read this far out: past the blur of the edge, short of the next structure."""
LOCAL_INSIDE_GAP_MM = 2.0
"""A local inside level is read no closer than this to the rough outline, past the blur of its edge."""


def refine_star_outline(
    smooth: np.ndarray,
    rough: np.ndarray,
    *,
    inside_level: float,
    minimum_step: float,
    max_shift_mm: float,
    dark_shell_mm: float = 0.0,
    bright_level: float | None = None,
    band_mm: float = 0.0,
    band_directions: tuple[float, ...] = (),
    local_inside_mm: float = 0.0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Move the outline of ``rough`` to the half-way edge along each ray, within ``max_shift_mm``.

    Parameters
    ----------
    smooth
        Lightly smoothed, bias-corrected image on the 1 mm grid.
    rough
        Boolean mask, star-shaped about its centroid.
    inside_level
        Typical signal inside the structure.
    minimum_step
        Smallest difference between inside and beyond that counts as an edge (a few noise deviations).
    max_shift_mm
        How far the edge may lie from the rough outline, inwards or outwards.
    dark_shell_mm
        Added outside where the tissue beyond is darker than the inside: a dark cortical shell belongs to the
        structure but cannot be told from a dark neighbour.
    bright_level, band_mm, band_directions
        Along rays within 50 degrees of one of ``band_directions`` (angles in radians, 0 = towards higher
        columns, pi/2 = towards higher rows), a darker band up to ``band_mm`` thick that is followed by bright
        tissue (half-way to ``bright_level`` or more) belongs to the structure: a slice that grazes a vertebral
        endplate shows it as such a band inside the body's outline.
    local_inside_mm
        When positive, each ray takes its own inside level: the median of the profile over this many mm inside
        the rough outline (from LOCAL_INSIDE_GAP_MM in), or ``inside_level`` where the ray has too little of
        it. Marrow that is uneven (red marrow brighter in front, darker behind) otherwise shifts the half-way
        level off the edge where the marrow is far from its global median.

    Returns
    -------
    mask, evidence
        The refined mask and ``edge_support`` (share of rays that found an edge) and ``irregularity`` (share of
        rays whose edge lies more than 2.5 mm from the smoothed outline).
    """
    centre = np.array(ndi.center_of_mass(rough))
    angles = np.linspace(0.0, 2.0 * np.pi, RAYS, endpoint=False)
    directions = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    reach = float(np.sqrt(rough.sum() / np.pi)) * 2.0 + max_shift_mm + BEYOND_MM + 2.0
    radii = np.arange(0.0, reach, STEP_MM)
    points = centre[None, None, :] + radii[None, :, None] * directions[:, None, :]
    coordinates = [points[..., 0], points[..., 1]]
    profiles = ndi.map_coordinates(smooth, coordinates, order=1, mode="nearest")
    inside_rough = ndi.map_coordinates(rough.astype(np.float32), coordinates, order=0, mode="constant") > 0.5
    # The rough radius: where the ray first leaves the rough region.
    rough_radius = np.argmin(inside_rough, axis=1).astype(float) * STEP_MM

    banded = np.zeros(RAYS, dtype=bool)
    if bright_level is not None and band_mm > 0:
        for direction in band_directions:
            banded |= np.abs(np.angle(np.exp(1j * (angles - direction)))) <= np.radians(50)
    beyond = round(BEYOND_MM / STEP_MM)
    near = round(1.0 / STEP_MM)
    shift = round(max_shift_mm / STEP_MM)
    edges = rough_radius.copy()
    found = np.zeros(RAYS, dtype=bool)
    levels = _local_levels(profiles, rough_radius, local_inside_mm, inside_level)
    for ray in range(RAYS):
        inside_level = levels[ray]
        start_index = int(rough_radius[ray] / STEP_MM)
        first = max(start_index - shift, start_index // 3, 1)
        last = min(start_index + shift, len(radii) - beyond - 1)
        profile = profiles[ray]
        for index in range(first, last + 1):
            # The tissue beyond: the value differing most from the inside within 1-3 mm out, so that a thin
            # layer (fat between the body and a vessel) is not jumped over.
            ahead = profile[index + near: index + beyond + 1] - inside_level
            step = ahead[np.argmax(np.abs(ahead))]
            if abs(step) >= minimum_step and abs(profile[index] - inside_level) >= 0.5 * abs(step):
                found[ray] = True
                if step > 0:
                    edges[ray] = _rising_edge(profile, index, inside_level + step)
                else:
                    edges[ray] = _crossing(profile, index, inside_level + 0.5 * step) + dark_shell_mm
                    if banded[ray]:
                        edges[ray] = _beyond_band(profile, index, band_mm, inside_level, bright_level, edges[ray])
                break

    wrapped = np.concatenate([edges[-6:], edges, edges[:6]])
    smoothed = ndi.gaussian_filter1d(ndi.median_filter(wrapped, size=9), 1.5)[6:-6]
    rows = centre[0] + smoothed * directions[:, 0]
    columns = centre[1] + smoothed * directions[:, 1]
    mask = np.zeros(rough.shape, dtype=bool)
    mask[polygon(rows, columns, shape=rough.shape)] = True
    return mask, {
        "edge_support": float(found.mean()),
        "irregularity": float(np.mean(np.abs(edges - smoothed) > 2.5)),
    }


def _local_levels(profiles: np.ndarray, rough_radius: np.ndarray, depth_mm: float, default: float) -> np.ndarray:
    """Each ray's inside level: the median of its profile from LOCAL_INSIDE_GAP_MM to that plus ``depth_mm``
    inside the rough outline (the gap keeps the blur of the edge out), or ``default``."""
    levels = np.full(len(profiles), default, dtype=float)
    if depth_mm <= 0:
        return levels
    gap, depth = round(LOCAL_INSIDE_GAP_MM / STEP_MM), round(depth_mm / STEP_MM)
    for ray, radius in enumerate(rough_radius):
        end = int(radius / STEP_MM) - gap
        if end - depth >= 0:
            levels[ray] = float(np.median(profiles[ray, end - depth: end]))
    return levels


def _beyond_band(profile: np.ndarray, index: int, band_mm: float, inside_level: float, bright_level: float,
                 default: float) -> float:
    """The radius where a dark band starting at ``index`` gives way to bright tissue, or ``default``.

    A dark stretch thinner than ``MIN_BAND_MM`` is the cortex with the ligament on it, not a grazed endplate.
    """
    half_way = 0.5 * (inside_level + bright_level)
    last = min(index + round(band_mm / STEP_MM), len(profile) - 5)
    for position in range(index + round(MIN_BAND_MM / STEP_MM), last + 1):
        if profile[position] >= half_way and np.all(profile[position: position + 4] >= half_way):
            return position * STEP_MM
    return default


def _crossing(profile: np.ndarray, index: int, level: float) -> float:
    """Radius (mm) where the profile crosses ``level`` between samples ``index - 1`` and ``index``."""
    before, after = profile[index - 1], profile[index]
    fraction = 0.5 if after == before else float(np.clip((level - before) / (after - before), 0.0, 1.0))
    return (index - 1 + fraction) * STEP_MM


def _rising_edge(profile: np.ndarray, index: int, bright: float) -> float:
    """The edge towards brighter tissue, half-way up from the darkest point just inside it.

    A dark cortex between marrow and fat is blurred into a shallow dip; the edge (the cortex's outer surface)
    is half-way between that dip and the bright tissue, not between marrow and the bright tissue.
    """
    lookback = max(index - round(1.5 / STEP_MM), 1)
    dip = lookback + int(np.argmin(profile[lookback: index + 1]))
    level = 0.5 * (profile[dip] + bright)
    for position in range(max(dip, 1), min(index + round(3.0 / STEP_MM), len(profile))):
        if profile[position] >= level:
            return _crossing(profile, position, level)
    return index * STEP_MM

"""Signed-distance primitives (mm, negative inside) and smooth random textures that the structures are built from.

A structure's soft occupancy `soft(d, h)` with `h` the pixel size integrates the structure over a pixel (partial
volume in plane without supersampling); its hard mask `d <= 0` is the truth."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.points import Points


def soft(distance: np.ndarray, h: float) -> np.ndarray:
    """Fraction of a pixel of size h inside a structure whose signed distance at the pixel centre is `distance`."""
    return np.clip(0.5 - distance / h, 0.0, 1.0)


def ellipse_distance(du: np.ndarray, dv: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact on its axes, good enough within a pixel of the edge)."""
    x, y = du / a, dv / b
    r = np.sqrt(x * x + y * y)
    scale = (np.abs(x) * a + np.abs(y) * b) / (np.abs(x) + np.abs(y) + 1e-6)
    return (r - 1.0) * scale


def capsule(u: np.ndarray, v: np.ndarray, start: tuple, end: tuple, radius: float) -> np.ndarray:
    """Signed distance in the (u, v) plane to a segment from `start` to `end` thickened by `radius`."""
    du, dv = end[0] - start[0], end[1] - start[1]
    fraction = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / (du * du + dv * dv + 1e-6), 0.0, 1.0)
    return np.hypot(u - start[0] - fraction * du, v - start[1] - fraction * dv) - radius


def bounded_capsule(
    u: np.ndarray, v: np.ndarray, start: tuple, end: tuple, radius: float, beyond: np.ndarray
) -> np.ndarray:
    """max(capsule distance, `beyond`): a capsule limited along the spine by `beyond` (the distance outside its
    arc-length range). Where `beyond` alone puts a point well outside, the capsule is not evaluated."""
    near = np.flatnonzero(beyond < 3.0)
    result = beyond.copy()
    if near.size:

        def pick(value):
            return value[near] if np.ndim(value) else value

        subset_start = (pick(start[0]), pick(start[1]))
        subset_end = (pick(end[0]), pick(end[1]))
        result[near] = np.maximum(capsule(u[near], v[near], subset_start, subset_end, radius), beyond[near])
    return result


def texture(points: Points, anatomy: Anatomy, stretch_s: float = 1.0, scale: float = 1.0) -> np.ndarray:
    """A smooth random field with unit variance (sum of plane waves); stretch_s > 1 elongates it along the spine."""
    waves = (anatomy.texture_waves * scale).astype(np.float32)
    field = np.zeros_like(points.s)
    for (ku, kv, ks), phase in zip(waves, anatomy.texture_phases.astype(np.float32), strict=True):
        field += np.cos(ku * points.u + kv * points.v + (ks / np.float32(stretch_s)) * points.s + phase)
    return field * np.float32(np.sqrt(2.0 / len(waves)))


# --- vertebrae, discs, posterior elements, canal -------------------------------------------------------------------


def threshold(fraction: float) -> float:
    """Texture level above which a unit-variance field covers `fraction` of space."""
    return NormalDist().inv_cdf(1.0 - min(max(fraction, 1e-4), 0.9999))

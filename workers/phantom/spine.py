"""The spine as signed distances: vertebral bodies (sacrum included), discs, vertebral arches, the canal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.mri import Signals
from workers.phantom.points import Points
from workers.phantom.shapes import bounded_capsule, texture

SQUIRCLE = np.float32(0.45)  # vertebral endplates are boxier than ellipses (see `_endplates`)


@dataclass
class SpineTables:
    """Per-vertebra arrays (caudal to cranial) used to evaluate all vertebrae at once, point by point."""

    s_bottom: np.ndarray
    s_top: np.ndarray
    half_width: np.ndarray
    half_depth: np.ndarray
    process: np.ndarray
    wedge: np.ndarray
    cement: np.ndarray
    edema: np.ndarray
    degeneration: np.ndarray
    disc_centres: np.ndarray
    middles: np.ndarray

    @classmethod
    def of(cls, anatomy: Anatomy) -> SpineTables:
        vertebrae = anatomy.vertebrae
        s_bottom = np.array([v.s_bottom for v in vertebrae], np.float32)
        s_top = np.array([v.s_top for v in vertebrae], np.float32)
        return cls(
            s_bottom=s_bottom,
            s_top=s_top,
            half_width=np.array([v.half_width for v in vertebrae], np.float32),
            half_depth=np.array([v.half_depth for v in vertebrae], np.float32),
            process=np.array([v.transverse_process_mm for v in vertebrae], np.float32),
            wedge=np.array([v.wedge for v in vertebrae], np.float32),
            cement=np.array([v.condition == "cemented" for v in vertebrae]),
            edema=np.array([v.condition == "fractured" for v in vertebrae]),
            degeneration=np.array(anatomy.disc_degeneration, np.float32),
            disc_centres=0.5 * (s_top[:-1] + s_bottom[1:]),
            middles=0.5 * (s_bottom + s_top),
        )

    def width_at(self, s: np.ndarray) -> np.ndarray:
        return np.interp(s, self.middles, self.half_width).astype(np.float32)

    def depth_at(self, s: np.ndarray) -> np.ndarray:
        return np.interp(s, self.middles, self.half_depth).astype(np.float32)


def _endplates(t: SpineTables, index: np.ndarray, p: Points, concavity: float):
    """Lower and upper endplate surfaces (arc length) and in-plane distance of vertebrae `index` at the points.

    The endplate outline is a squircle, x2 + y2 - c min(x2, 1) min(y2, 1) = 1: boxier than an ellipse, as lumbar
    endplates are, and cheap to evaluate."""
    a = t.half_width[index]
    b = t.half_depth[index]
    lo, hi = t.s_bottom[index], t.s_top[index]
    centre_v = np.float32(0.0)
    sacral = index == 0
    if sacral.any():  # the sacrum tapers and curves backwards below S1
        below = np.minimum(p.s, 0.0)
        a = np.where(sacral, a * (1.0 + below / 170.0), a)
        b = np.where(sacral, b * (1.0 + below / 220.0), b)
        lo = np.where(sacral, np.float32(-115.0), lo)
        centre_v = np.where(sacral, 0.0025 * below * below, 0.0).astype(np.float32)
    waist = 1.0 - 0.06 * np.sin(np.pi * np.clip((p.s - lo) / (hi - lo), 0.0, 1.0))
    a = np.maximum(a * waist, 1.0)
    x = np.abs(p.u) / a
    dv = p.v - centre_v
    x2 = x * x
    # the posterior wall is slightly concave where the canal sits
    posterior_b = b * (1.0 - 0.12 * np.clip(1.0 - x2, 0.0, 1.0))
    y = np.abs(np.where(dv > 0, dv / posterior_b, dv / b))
    y2 = y * y
    r = np.sqrt(x2 + y2 - SQUIRCLE * np.minimum(x2, 1.0) * np.minimum(y2, 1.0))
    scale = (x * a + y * b) / (x + y + 1e-6)
    in_plane = (r - 1.0) * scale
    dish = concavity * np.clip(1.0 - r * r, 0.0, 1.0)
    wedge = t.wedge[index] * (hi - lo) * np.clip(0.5 - dv / (2 * b), 0.0, 1.0)
    return lo + dish, hi - dish - wedge, in_plane, r


def vertebral_body_distance(anatomy: Anatomy, t: SpineTables, p: Points) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to the nearest vertebral body (sacrum included) and the index of that vertebra."""
    index = np.searchsorted(t.disc_centres, p.s)
    lower, upper, in_plane, _ = _endplates(t, index, p, anatomy.endplate_concavity_mm)
    return np.maximum(in_plane, np.maximum(lower - p.s, p.s - upper)), index


def disc_distance(anatomy: Anatomy, t: SpineTables, p: Points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance to the nearest disc, its index (the vertebra below it) and a 0..1 radial position."""
    below = np.clip(np.searchsorted(t.middles, p.s) - 1, 0, len(t.middles) - 2)
    _, top_of_below, in_plane_below, r_below = _endplates(t, below, p, anatomy.endplate_concavity_mm)
    bottom_of_above, _, in_plane_above, _ = _endplates(t, below + 1, p, anatomy.endplate_concavity_mm)
    bulge = 0.8 + 2.0 * t.degeneration[below].astype(np.float32)
    in_plane = np.minimum(in_plane_below, in_plane_above) - bulge
    distance = np.maximum(in_plane, np.maximum(top_of_below - p.s, p.s - bottom_of_above))
    half = np.maximum(0.5 * (bottom_of_above - top_of_below), 0.5)
    height_position = np.abs(p.s - 0.5 * (bottom_of_above + top_of_below)) / half
    return distance, below, np.maximum(r_below, height_position)


def canal_geometry(anatomy: Anatomy, vertebral_depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Centre offset v of the spinal canal behind vertebrae of half depth `vertebral_depth`; its half axes."""
    return vertebral_depth + anatomy.canal_half_depth + 1.0, anatomy.canal_half_width, anatomy.canal_half_depth


def posterior_elements_distance(anatomy: Anatomy, t: SpineTables, p: Points, index: np.ndarray) -> np.ndarray:
    """The vertebral arches near the points: the nearest vertebra's, and above its middle also the arch of the
    vertebra above, whose laminae and spinous process reach down to about the top of this body."""
    distance = _arch_distance(anatomy, t, p, index)
    upper_half = np.flatnonzero((p.s > t.middles[index]) & (index < len(t.middles) - 1))
    if upper_half.size:
        subset = Points(*(getattr(p, k)[upper_half] for k in ("s", "u", "v", "width", "depth")))
        distance[upper_half] = np.minimum(distance[upper_half], _arch_distance(anatomy, t, subset, index[upper_half] + 1))
    canal_v, cu, _ = canal_geometry(anatomy, p.depth)
    # the facet joints sit at disc level: superior articular process of the vertebra below, inferior of the one above
    disc = np.clip(np.searchsorted(t.middles, p.s) - 1, 0, len(t.middles) - 2)
    junction = (cu + 3.5, canal_v + 2.0)
    facet = bounded_capsule(
        np.abs(p.u), p.v, junction, (junction[0] + 3.0, junction[1] + 9.0), 4.0,
        np.abs(p.s - (t.disc_centres[disc] - 1.0)) - 10.0,
    )
    return np.where(index > 0, np.minimum(distance, facet), distance)


def _arch_distance(anatomy: Anatomy, t: SpineTables, p: Points, index: np.ndarray) -> np.ndarray:
    """Pedicles, transverse processes, laminae, spinous process and articular processes of vertebrae `index`.

    In the axial plane the arch is a ring around the canal: pedicles run back from the body, the laminae meet in a
    roof behind the canal where the spinous process starts, transverse processes leave sideways at the junction."""
    lo = t.s_bottom[index]
    hi = t.s_top[index]
    height = hi - lo
    canal_v, cu, cv = canal_geometry(anatomy, p.depth)
    a, b = t.half_width[index], t.half_depth[index]
    au = np.abs(p.u)
    junction = (cu + 3.5, canal_v + 1.0)
    roof = (0.0, canal_v + cv + 4.5)
    pedicle = bounded_capsule(
        au, p.v, (0.5 * a, 0.8 * b), junction, 4.2, np.abs(p.s - (lo + 0.64 * height)) - 0.2 * height
    )
    process_length = t.process[index]
    transverse = bounded_capsule(
        au, p.v, junction, (junction[0] + process_length, canal_v - 3.0), 3.2,
        np.abs(p.s - (lo + 0.58 * height)) - 4.5,
    )
    lamina = bounded_capsule(
        au, p.v, (junction[0], junction[1] + 2.0), roof, 2.8,
        np.abs(p.s - (lo + 0.5 * height - 10.0)) - (0.5 * height + 2.0),
    )
    depth = np.clip(p.v - roof[1], 0.0, None)
    spinous = bounded_capsule(
        p.u, p.v, roof, (0.0, roof[1] + 28.0), 3.0,
        np.abs(p.s - (lo + 0.3 * height - 0.3 * depth)) - (0.3 * height + 1.0),
    )
    distance = np.minimum(np.minimum(pedicle, transverse), np.minimum(lamina, spinous))
    sacral = np.flatnonzero(index == 0)
    if sacral.size:
        subset = Points(p.s[sacral], p.u[sacral], p.v[sacral])
        distance[sacral] = _sacral_wings(subset, canal_v[sacral], cu)
    return distance


def _sacral_wings(p: Points, canal_v: np.ndarray, cu: float) -> np.ndarray:
    """The sacral alae beside the S1 body and the dorsal sacrum roofing the sacral canal."""
    au = np.abs(p.u)
    ala = bounded_capsule(au, p.v, (18.0, 2.0), (46.0, 12.0), 11.0, np.abs(p.s + 30.0) - 27.0)
    dorsal = bounded_capsule(
        p.u, p.v - canal_v, (-(cu + 6.0), 9.0), (cu + 6.0, 9.0), 4.5, np.abs(p.s + 42.0) - 38.0
    )
    return np.minimum(ala, dorsal)


# --- muscles -------------------------------------------------------------------------------------------------------


def modic(
    anatomy: Anatomy, t: SpineTables, q: Points, index: np.ndarray, signal: np.ndarray, signals: Signals
) -> np.ndarray:
    """Modic change: a band of oedema (type 1) or fat (type 2) in the marrow along the endplates of a degenerated
    disc, bright on T2, with a ragged edge."""
    above = t.degeneration[np.minimum(index, len(t.degeneration) - 1)] > 0.7
    below = (index > 0) & (t.degeneration[np.maximum(index - 1, 0)] > 0.7)
    depth = 4.0 + 2.5 * texture(q, anatomy, scale=3.5)
    band = (above & (q.s > t.s_top[index] - depth)) | (below & (q.s < t.s_bottom[index] + depth))
    return np.where(band, signals["edema" if anatomy.modic_type == 1 else "fat"], signal)

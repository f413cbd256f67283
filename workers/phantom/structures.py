"""The anatomy as signed distances (mm, negative inside) of every structure at arbitrary points, and their painting.

A structure's soft occupancy `clip(0.5 - d / h, 0, 1)` with `h` the pixel size integrates the structure over a
pixel (partial volume in plane without supersampling); its hard mask `d <= 0` is the truth. Structures are painted
back to front, so a later structure hides an earlier one where they overlap: the truth of a structure is its hard
mask minus every later, opaque structure (`TRUTH_HIDDEN_BY`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.stacks import SlicePlane

Signals = Mapping[str, float]

SQUIRCLE = np.float32(0.45)
ERECTOR_DEPTH = 21.0  # half depth of the paraspinal muscle mass behind the canal (mm)  # vertebral endplates are boxier than ellipses


@dataclass
class Points:
    """Sample points in the spine frame (float32 arrays of N)."""

    s: np.ndarray
    u: np.ndarray
    v: np.ndarray
    width: np.ndarray | None = None  # vertebral half width and half depth interpolated at s (set by `layers`)
    depth: np.ndarray | None = None

    @classmethod
    def from_lps(cls, anatomy: Anatomy, points_lps: np.ndarray) -> Points:
        return cls(*anatomy.to_spine_frame(points_lps))

    @classmethod
    def on_plane(cls, anatomy: Anatomy, plane: SlicePlane, offset_mm: float = 0.0, step: int = 4) -> Points:
        """The pixel centres of a plane (row-major): the frame is solved on every `step`-th pixel and interpolated
        bilinearly, which is exact to about 0.01 mm because the frame bends on a scale of 100 mm."""
        rows = np.unique(np.append(np.arange(0, plane.rows, step), plane.rows - 1))
        columns = np.unique(np.append(np.arange(0, plane.columns, step), plane.columns - 1))
        grid = (
            plane.position
            + plane.normal * offset_mm
            + rows[:, None, None] * plane.pixel_spacing[0] * plane.column_direction
            + columns[None, :, None] * plane.pixel_spacing[1] * plane.row_direction
        )
        coarse = anatomy.to_spine_frame(grid.reshape(-1, 3))
        row_left, row_right, row_fraction = _linear_weights(rows, plane.rows)
        column_left, column_right, column_fraction = _linear_weights(columns, plane.columns)
        fine = []
        for values in coarse:
            values = values.reshape(rows.size, columns.size)
            values = values[row_left] + (values[row_right] - values[row_left]) * row_fraction[:, None]
            values = values[:, column_left] + (values[:, column_right] - values[:, column_left]) * column_fraction
            fine.append(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
        return cls(*fine)


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


def _linear_weights(knots: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left knot, right knot and fraction for interpolating values at integer knots onto 0..size-1.

    (Gathers rather than a matrix product: BLAS threads cost more than they save on a shared machine.)"""
    positions = np.arange(size, dtype=np.float64)
    right = np.clip(np.searchsorted(knots, positions, side="right"), 1, knots.size - 1)
    left = right - 1
    fraction = ((positions - knots[left]) / (knots[right] - knots[left])).astype(np.float32)
    return left, right, fraction


def soft(distance: np.ndarray, h: float) -> np.ndarray:
    """Fraction of a pixel of size h inside a structure whose signed distance at the pixel centre is `distance`."""
    return np.clip(0.5 - distance / h, 0.0, 1.0)


def _ellipse_distance(du: np.ndarray, dv: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact on its axes, good enough within a pixel of the edge)."""
    x, y = du / a, dv / b
    r = np.sqrt(x * x + y * y)
    scale = (np.abs(x) * a + np.abs(y) * b) / (np.abs(x) + np.abs(y) + 1e-6)
    return (r - 1.0) * scale


def _box_distance(*offsets_and_halves: tuple[np.ndarray, float | np.ndarray]) -> np.ndarray:
    """Signed distance (Chebyshev-like) to an axis-aligned box given (offset from centre, half size) pairs."""
    result = None
    for offset, half in offsets_and_halves:
        d = np.abs(offset) - half
        result = d if result is None else np.maximum(result, d)
    return result


def texture(points: Points, anatomy: Anatomy, stretch_s: float = 1.0, scale: float = 1.0) -> np.ndarray:
    """A smooth random field with unit variance (sum of plane waves); stretch_s > 1 elongates it along the spine."""
    waves = (anatomy.texture_waves * scale).astype(np.float32)
    field = np.zeros_like(points.s)
    for (ku, kv, ks), phase in zip(waves, anatomy.texture_phases.astype(np.float32), strict=True):
        field += np.cos(ku * points.u + kv * points.v + (ks / np.float32(stretch_s)) * points.s + phase)
    return field * np.float32(np.sqrt(2.0 / len(waves)))


# --- vertebrae, discs, posterior elements, canal -------------------------------------------------------------------


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
    facet = _bounded_capsule(
        np.abs(p.u), p.v, junction, (junction[0] + 3.0, junction[1] + 9.0), 4.0,
        np.abs(p.s - (t.disc_centres[disc] + 2.0)) - 8.0,
    )
    return np.where(index > 0, np.minimum(distance, facet), distance)


def _capsule(u: np.ndarray, v: np.ndarray, start: tuple, end: tuple, radius: float) -> np.ndarray:
    """Signed distance in the (u, v) plane to a segment from `start` to `end` thickened by `radius`."""
    du, dv = end[0] - start[0], end[1] - start[1]
    fraction = np.clip(((u - start[0]) * du + (v - start[1]) * dv) / (du * du + dv * dv + 1e-6), 0.0, 1.0)
    return np.hypot(u - start[0] - fraction * du, v - start[1] - fraction * dv) - radius


def _bounded_capsule(
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
        result[near] = np.maximum(_capsule(u[near], v[near], subset_start, subset_end, radius), beyond[near])
    return result


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
    pedicle = _bounded_capsule(
        au, p.v, (0.5 * a, 0.8 * b), junction, 4.2, np.abs(p.s - (lo + 0.64 * height)) - 0.2 * height
    )
    process_length = t.process[index]
    transverse = _bounded_capsule(
        au, p.v, junction, (junction[0] + process_length, canal_v - 3.0), 3.2,
        np.abs(p.s - (lo + 0.58 * height)) - 4.5,
    )
    lamina = _bounded_capsule(
        au, p.v, (junction[0], junction[1] + 2.0), roof, 2.8,
        np.abs(p.s - (lo + 0.5 * height - 8.0)) - (0.5 * height + 1.0),
    )
    depth = np.clip(p.v - roof[1], 0.0, None)
    spinous = _bounded_capsule(
        p.u, p.v, roof, (0.0, roof[1] + 28.0), 3.0,
        np.abs(p.s - (lo + 0.35 * height - 0.25 * depth)) - (0.3 * height + 1.0),
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
    ala = _bounded_capsule(au, p.v, (18.0, 2.0), (46.0, 12.0), 11.0, np.abs(p.s + 30.0) - 27.0)
    dorsal = _bounded_capsule(
        p.u, p.v - canal_v, (-(cu + 6.0), 9.0), (cu + 6.0, 9.0), 4.5, np.abs(p.s + 42.0) - 38.0
    )
    return np.minimum(ala, dorsal)


# --- muscles -------------------------------------------------------------------------------------------------------


def psoas_distance(anatomy: Anatomy, t: SpineTables, p: Points, side: int) -> np.ndarray:
    """Signed distance to the left (side=+1) or right (side=-1) psoas major (before bones cut its medial edge)."""
    profile = anatomy.psoas_left if side > 0 else anatomy.psoas_right
    area = np.interp(p.s, profile.anchors_s, profile.area_mm2).astype(np.float32)
    aspect = np.interp(p.s, profile.anchors_s, profile.aspect).astype(np.float32)
    lateral = np.sqrt(np.maximum(area, 1.0) / (np.pi * aspect))
    anteroposterior = lateral * aspect
    a = p.width
    b = p.depth
    centre_u = side * (0.92 * a + 0.82 * lateral + 0.35 * np.clip(-p.s, 0.0, None))
    centre_v = np.interp(p.s, profile.anchors_s, profile.v_fraction).astype(np.float32) * b
    x = (p.u - centre_u) / lateral
    y = (p.v - centre_v) / anteroposterior
    angle = np.arctan2(y, side * x)
    boundary = np.ones_like(x)
    for k, amplitude, phase in profile.shape_harmonics:
        boundary += np.float32(amplitude) * np.cos(np.float32(k) * angle + np.float32(phase))
    r = np.sqrt(x * x + y * y)
    return (r / boundary - 1.0) * np.sqrt(lateral * anteroposterior)


def _psoas_semi_axes(anatomy: Anatomy, s: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    profile = anatomy.psoas_left if side > 0 else anatomy.psoas_right
    area = np.interp(s, profile.anchors_s, profile.area_mm2)
    aspect = np.interp(s, profile.anchors_s, profile.aspect)
    lateral = np.sqrt(np.maximum(area, 1.0) / (np.pi * aspect))
    return lateral, lateral * aspect


def quadratus_distance(anatomy: Anatomy, t: SpineTables, p: Points, side: int) -> np.ndarray:
    """Quadratus lumborum: posterolateral, a flat oblique band behind the psoas, from the 12th rib to the crest."""
    l1 = anatomy.vertebra("L1")
    top, bottom = l1.s_middle, anatomy.vertebrae[1].s_top
    lateral_psoas, _ = _psoas_semi_axes(anatomy, p.s, side)
    a = p.width
    b = p.depth
    centre_u = side * (a + 1.5 * lateral_psoas + 18.0)
    centre_v = b - 5.0
    angle = np.radians(-18.0)  # the lateral end lies further forward
    du = side * (p.u - centre_u)
    dv = p.v - centre_v
    along = du * np.cos(angle) + dv * np.sin(angle)
    across = -du * np.sin(angle) + dv * np.cos(angle)
    length = 0.5 * (top - bottom)
    taper = np.sqrt(np.clip(1.0 - ((p.s - 0.5 * (top + bottom)) / length) ** 2, 0.02, 1.0))
    return _ellipse_distance(along, across, 21.0 * taper, 8.0 * taper)


def erector_distance(anatomy: Anatomy, t: SpineTables, p: Points, side: int) -> np.ndarray:
    """Erector spinae with multifidus: the posterior muscle mass beside the spinous processes."""
    canal_v, cu, cv = canal_geometry(anatomy, p.depth)
    centre_v = canal_v + cv + ERECTOR_DEPTH
    centre_u = side * (cu + 19.0)
    taper = np.clip(1.0 + (p.s + 40.0) / 120.0, 0.3, 1.0)
    return _ellipse_distance(p.u - centre_u, p.v - centre_v, 31.0 * taper, ERECTOR_DEPTH * taper)


# --- body outline, viscera, vessels ----------------------------------------------------------------------------------


def body_outlines(anatomy: Anatomy, t: SpineTables, p: Points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skin, the inside of the subcutaneous fat (abdominal wall muscle) and the inside of the wall (cavity)."""
    canal_v, _, cv = canal_geometry(anatomy, p.depth)
    back_muscle = canal_v + cv + 2 * ERECTOR_DEPTH
    back = back_muscle + anatomy.back_fat_mm
    front = -anatomy.abdomen_depth
    centre = 0.5 * (back + front)
    half_depth = 0.5 * (back - front)

    def superellipse(half_width: float, depth: np.ndarray) -> np.ndarray:
        x2 = (p.u / half_width) ** 2
        y2 = ((p.v - centre) / depth) ** 2
        r = np.sqrt(x2 + y2 - 0.3 * np.minimum(x2, 1.0) * np.minimum(y2, 1.0))
        return (r - 1.0) * np.minimum(half_width, depth)

    skin = superellipse(anatomy.body_half_width, half_depth)
    wall = superellipse(anatomy.body_half_width - anatomy.flank_fat_mm, half_depth - 0.7 * anatomy.flank_fat_mm)
    cavity = superellipse(
        anatomy.body_half_width - anatomy.flank_fat_mm - 11.0, half_depth - 0.7 * anatomy.flank_fat_mm - 11.0
    )
    return skin, wall, cavity


def vessel_distances(anatomy: Anatomy, t: SpineTables, p: Points) -> tuple[np.ndarray, np.ndarray]:
    """Aorta with the common iliac arteries (bifurcating near L4) and the inferior vena cava with the iliac veins."""
    a = p.width
    b = p.depth
    ra, rv = anatomy.aorta_radius, anatomy.ivc_radius
    below = np.clip(anatomy.bifurcation_s - p.s, 0.0, None)
    aorta_u = 0.35 * a
    aorta_v = -(b + ra + 1.5) - 0.1 * below
    aorta = np.hypot(p.u - aorta_u, p.v - aorta_v) - ra
    iliac_r = 0.65 * ra
    arteries = np.minimum(
        np.hypot(p.u - (aorta_u + 0.5 * below), p.v - aorta_v), np.hypot(p.u - (aorta_u - 0.5 * below), p.v - aorta_v)
    ) - iliac_r
    arteries = np.where(p.s >= anatomy.bifurcation_s, aorta, np.minimum(arteries, aorta + 0.6 * below))
    confluence = anatomy.bifurcation_s - 18.0
    vein_below = np.clip(confluence - p.s, 0.0, None)
    ivc_u = -(0.75 * a + 6.0)
    ivc_v = -(0.8 * b + 0.7 * rv + 2.0) + 0.15 * vein_below
    ivc = _ellipse_distance(p.u - ivc_u, p.v - ivc_v, 1.25 * rv, 0.8 * rv)
    veins = np.minimum(
        np.hypot(p.u - (ivc_u + 0.55 * vein_below + 8.0), p.v - ivc_v),
        np.hypot(p.u - (ivc_u - 0.45 * vein_below), p.v - ivc_v),
    ) - 0.6 * rv
    veins = np.where(p.s >= confluence, ivc, np.minimum(veins, ivc + 0.6 * vein_below))
    return arteries, veins


def kidney_distance(anatomy: Anatomy, t: SpineTables, p: Points, side: int) -> np.ndarray:
    """Kidneys: high, in the paravertebral gutters lateral to the psoas, lower poles lateral and anterior."""
    centre_s = anatomy.kidney_s - (12.0 if side < 0 else 0.0)
    ds = p.s - centre_s
    centre_u = side * (p.width + 52.0 - 0.25 * ds)
    centre_v = 4.0 - 0.15 * ds
    x, y, z = (p.u - centre_u) / 27.0, (p.v - centre_v) / 21.0, ds / 52.0
    return (np.sqrt(x * x + y * y + z * z) - 1.0) * 21.0


def iliac_distances(anatomy: Anatomy, p: Points, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iliac bone, iliacus (lining the iliac fossa, joining the psoas) and gluteus medius (outside the wing).

    In the axial plane the wing runs from the sacroiliac joint forward and outward; its crest is highest at the
    back (near L4-L5)."""
    sacroiliac = np.array([side * 50.0, 28.0])
    anterior = np.array([side * 96.0, -28.0])
    inward = np.array([-side * 0.77, -0.63])  # towards the iliac fossa, anteromedially
    # the crest rises towards the back and the wing widens downwards
    above_crest = p.s - anatomy.iliac_crest_s + 0.25 * np.abs(p.u - sacroiliac[0]) - 0.1 * (p.v - 28.0)
    below_pelvis = -70.0 - p.s
    extent = np.maximum(above_crest, below_pelvis)
    bone = _bounded_capsule(p.u, p.v, sacroiliac, anterior, 4.5, extent)
    iliacus = _bounded_capsule(p.u, p.v, sacroiliac + 14 * inward, anterior + 9 * inward, 7.5, extent + 3.0)
    gluteus = _bounded_capsule(p.u, p.v, sacroiliac - 14 * inward, anterior - 18 * inward, 13.0, extent)
    return bone, iliacus, gluteus


def liver_distance(anatomy: Anatomy, t: SpineTables, p: Points) -> np.ndarray:
    """The liver's inferior tip on the right, reaching the upper lumbar levels."""
    centre_s = anatomy.vertebra("L1").s_top + 60.0
    x, y, z = (p.u + 95.0) / 75.0, (p.v + 35.0) / 75.0, (p.s - centre_s) / 85.0
    return (np.sqrt(x * x + y * y + z * z) - 1.0) * 75.0


# --- painting --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One structure at a subset of the points (`index`): its signed distance and, when painting, its signal."""

    name: str
    index: np.ndarray
    distance: np.ndarray
    signal: np.ndarray | float | None


def _threshold(fraction: float) -> float:
    """Texture level above which a unit-variance field covers `fraction` of space."""
    return NormalDist().inv_cdf(1.0 - min(max(fraction, 1e-4), 0.9999))


class _Region:
    """The points inside a loose box of the spine frame: every structure is evaluated only where it can be."""

    def __init__(self, p: Points, *, u=None, abs_u=None, v=None, s=None):
        mask = np.ones(p.s.shape, bool)
        for values, bounds in ((p.u, u), (np.abs(p.u), abs_u), (p.v, v), (p.s, s)):
            if bounds is not None:
                mask &= (values >= bounds[0]) & (values <= bounds[1])
        self.index = np.flatnonzero(mask)
        self.points = Points(*(getattr(p, k)[self.index] for k in ("s", "u", "v", "width", "depth")))

    def __bool__(self) -> bool:
        return self.index.size > 0


def layers(
    anatomy: Anatomy, p: Points, signals: Signals | None, *, only: frozenset[str] | None = None
) -> list[Layer]:
    """All structures at the points, back to front. With signals=None only distances are computed (truth)."""
    t = SpineTables.of(anatomy)
    p = Points(p.s, p.u, p.v, t.width_at(p.s), t.depth_at(p.s))
    paint = signals is not None
    out: list[Layer] = []
    everything = np.arange(p.s.size)

    def wanted(name: str) -> bool:
        return only is None or name in only

    def mix(a: str, b: str, weight: np.ndarray) -> np.ndarray:
        return signals[a] + (signals[b] - signals[a]) * weight

    def constant(name: str) -> float | None:
        return signals[name] if paint else None

    depth_max = float(t.half_depth.max())
    if wanted("body"):
        skin, wall, cavity = body_outlines(anatomy, t, p)
        out.append(Layer("subcutaneous_fat", everything, skin, constant("fat")))
        out.append(Layer("abdominal_wall", everything, wall, constant("muscle")))
        out.append(Layer("visceral_fat", everything, cavity, constant("fat")))
        region = _Region(p, v=(-1e4, -depth_max - 15.0))
        if paint and region:
            q = region.points
            spine_front = -(q.depth + anatomy.retroperitoneal_fat_mm) - 0.004 * q.u**2
            bowel_region = np.maximum(cavity[region.index] + 6.0, q.v - spine_front)
            field = texture(q, anatomy, scale=1.8)
            lumen = field > 0.25
            fluid = np.clip((field - 0.9) * 3.0, 0.0, 1.0)
            gas = np.clip((texture(q, anatomy, scale=2.9) - 1.5) * 3.0, 0.0, 1.0)
            content = mix("bowel_content", "bowel_fluid", fluid)
            content = content + (signals["air"] - content) * gas
            wall_or_fat = np.where(field < -0.25, signals["fat"], signals["bowel_wall"])
            out.append(Layer("bowel", region.index, bowel_region, np.where(lumen, content, wall_or_fat)))
    l1_top = anatomy.vertebra("L1").s_top
    region = _Region(p, u=(-200.0, 0.0), v=(-130.0, 60.0), s=(l1_top - 40.0, 1e4))
    if wanted("liver") and region:
        out.append(Layer("liver", region.index, liver_distance(anatomy, t, region.points), constant("liver")))
    for side, name in ((1, "kidney_left"), (-1, "kidney_right")):
        region = _Region(
            p, u=(20.0, 150.0) if side > 0 else (-150.0, -20.0), v=(-50.0, 60.0),
            s=(anatomy.kidney_s - 80.0, anatomy.kidney_s + 70.0),
        )
        if wanted(name) and region:
            q = region.points
            d = kidney_distance(anatomy, t, q, side)
            signal = None
            if paint:
                medial = side * q.u < q.width + 52.0
                signal = mix("kidney", "fat", np.clip(-(d + 9.0) / 3.0, 0.0, 1.0) * medial)
            out.append(Layer(name, region.index, d, signal))
    region = _Region(p, abs_u=(0.0, 100.0), v=(-90.0, 5.0))
    if wanted("vessels") and region:
        arteries, veins = vessel_distances(anatomy, t, region.points)
        out.append(Layer("arteries", region.index, arteries, constant("flow_void")))
        out.append(Layer("veins", region.index, veins, constant("blood_slow" if anatomy.vessels_bright else "flow_void")))
    for side, name in ((1, "erector_left"), (-1, "erector_right")):
        region = _Region(p, u=(-5.0, 100.0) if side > 0 else (-100.0, 5.0), v=(depth_max, 140.0))
        if wanted(name) and region:
            q = region.points
            d = erector_distance(anatomy, t, q, side)
            signal = None
            if paint:
                canal_v, cu, _ = canal_geometry(anatomy, q.depth)
                septum = np.abs(np.abs(q.u) - (cu + 13.0 + 0.1 * (q.v - canal_v))) < 0.9
                fat = texture(q, anatomy, stretch_s=4.0, scale=2.5) > _threshold(anatomy.erector_fat_fraction)
                signal = np.where(septum | fat, signals["fat"], signals["muscle"])
            out.append(Layer(name, region.index, d, signal))
    for side, name in ((1, "quadratus_left"), (-1, "quadratus_right")):
        region = _Region(
            p, u=(20.0, 150.0) if side > 0 else (-150.0, -20.0), v=(-30.0, 70.0),
            s=(anatomy.vertebrae[1].s_top, anatomy.vertebra("L1").s_middle),
        )
        if wanted(name) and region:
            d = quadratus_distance(anatomy, t, region.points, side)
            out.append(Layer(name, region.index, d, constant("muscle")))
    pelvis = _Region(p, abs_u=(20.0, 150.0), v=(-80.0, 75.0), s=(-80.0, anatomy.iliac_crest_s + 25.0))
    iliac_bones = []
    if wanted("pelvis") and pelvis:
        for side in (1, -1):
            bone, iliacus, gluteus = iliac_distances(anatomy, pelvis.points, side)
            out.append(Layer("iliacus", pelvis.index, iliacus, constant("muscle")))
            out.append(Layer("gluteus", pelvis.index, gluteus, constant("muscle")))
            iliac_bones.append(bone)
    for side, name in ((1, "psoas_left"), (-1, "psoas_right")):
        region = _Region(
            p, u=(0.0, 160.0) if side > 0 else (-160.0, 0.0), v=(-110.0, 70.0), s=(-1e4, l1_top + 12.0)
        )
        if wanted(name) and region:
            q = region.points
            d = psoas_distance(anatomy, t, q, side)
            signal = None
            if paint:
                profile = anatomy.psoas_left if side > 0 else anatomy.psoas_right
                # intramuscular fat: streaks along the fibres, inside a rim of muscle that keeps the outline visible
                fat = texture(q, anatomy, stretch_s=5.0, scale=3.2) - _threshold(profile.fat_fraction)
                rim = np.clip((-d - 2.0) / 2.0, 0.0, 1.0)
                signal = mix("muscle", "fat", np.clip(fat * 2.0, 0.0, 1.0) * rim)
            out.append(Layer(name, region.index, d, signal))
    region = _Region(p, abs_u=(0.0, 25.0), v=(0.0, 80.0))
    if wanted("canal") and region:
        q = region.points
        canal_v, cu, cv = canal_geometry(anatomy, q.depth)
        epidural = _ellipse_distance(q.u, q.v - canal_v, cu, cv)
        out.append(Layer("epidural_fat", region.index, epidural, constant("fat")))
        sac_end = np.clip(-45.0 - q.s, 0.0, None)
        sac = _ellipse_distance(q.u, q.v - canal_v - 0.5, cu - 2.5, cv - 1.5) + sac_end
        signal = None
        if paint:
            roots = (np.cos(q.u * 1.9) * np.cos((q.v - canal_v) * 1.9) > 0.75) & (q.v - canal_v > 0.0)
            # the spinal cord ends in the conus medullaris at about L1-L2; below it the cauda equina
            conus_end = anatomy.vertebra("L1").s_bottom
            cord_radius = np.clip((q.s - conus_end) / 6.0, 0.0, 1.0) * 4.5
            cord = np.hypot(q.u, q.v - canal_v) < cord_radius
            signal = np.where(roots | cord, signals["nerve"], signals["csf"])
        out.append(Layer("thecal_sac", region.index, sac, signal))
    if iliac_bones:
        bone = np.minimum(*iliac_bones)
        signal = _bone_signal(bone, signals, 1.2)
        if paint:
            signal = signal * (1.0 + 0.07 * texture(pelvis.points, anatomy, scale=5.0))
        out.append(Layer("iliac_bones", pelvis.index, bone, signal))
    if wanted("bones"):
        out += _bone_layers(anatomy, t, p, signals)
    return out


def _bone_layers(anatomy: Anatomy, t: SpineTables, p: Points, signals: Signals | None) -> list[Layer]:
    """Vertebral arches, vertebral bodies (with their index, for the truth) and discs."""
    paint = signals is not None
    out: list[Layer] = []
    region = _Region(p, abs_u=(0.0, 62.0), v=(-10.0, 90.0))
    if region:
        q = region.points
        nearest = np.searchsorted(t.disc_centres, q.s)
        d_posterior = posterior_elements_distance(anatomy, t, q, nearest)
        out.append(Layer("posterior_elements", region.index, d_posterior, _bone_signal(d_posterior, signals, 0.9)))
    region = _Region(p, abs_u=(0.0, 42.0), v=(-40.0, 70.0))  # the sacrum curves back by up to 35 mm
    if region:
        q = region.points
        d_body, index = vertebral_body_distance(anatomy, t, q)
        signal = None
        if paint:
            signal = _bone_signal(d_body, signals, 1.0) * (1.0 + 0.05 * texture(q, anatomy, scale=4.0))
            cement = t.cement[index] & (d_body < -4.0) & (texture(q, anatomy, scale=3.0) > -0.3)
            edema = t.edema[index] & (q.s > t.s_top[index] - 10.0) & (d_body < -1.0)
            signal = np.where(edema, signals["edema"], signal)
            signal = np.where(cement, signals["cement"], signal)
            if anatomy.modic_type:
                signal = _modic(anatomy, t, q, index, signal, signals)
            if anatomy.sacral_remnant > 0:
                remnant = (index == 0) & (np.abs(q.s - t.s_bottom[0]) < 1.2)
                signal = np.where(remnant, signal + (signals["annulus"] - signal) * anatomy.sacral_remnant, signal)
        out.append(Layer("vertebral_bodies", region.index, d_body, signal))
        out.append(Layer("vertebral_body_index", region.index, index, None))
        d_disc, below, radial = disc_distance(anatomy, t, q)
        signal = None
        if paint:
            nucleus = np.clip((0.85 - radial) * 4.0, 0.0, 1.0) * (1.0 - t.degeneration[below])
            signal = signals["annulus"] + (signals["nucleus"] - signals["annulus"]) * nucleus
        out.append(Layer("discs", region.index, d_disc, signal))
    return out


def _modic(
    anatomy: Anatomy, t: SpineTables, q: Points, index: np.ndarray, signal: np.ndarray, signals: Signals
) -> np.ndarray:
    """Modic change: a band of oedema (type 1) or fat (type 2) in the marrow along the endplates of a degenerated
    disc, bright on T2, with a ragged edge."""
    above = t.degeneration[np.minimum(index, len(t.degeneration) - 1)] > 0.7
    below = (index > 0) & (t.degeneration[np.maximum(index - 1, 0)] > 0.7)
    depth = 4.0 + 2.5 * texture(q, anatomy, scale=3.5)
    band = (above & (q.s > t.s_top[index] - depth)) | (below & (q.s < t.s_bottom[index] + depth))
    return np.where(band, signals["edema" if anatomy.modic_type == 1 else "fat"], signal)


def _bone_signal(distance: np.ndarray, signals: Signals | None, cortex_mm: float) -> np.ndarray | None:
    """Marrow inside, a dark cortical shell of `cortex_mm` at the surface."""
    if signals is None:
        return None
    return np.where(distance > -cortex_mm, signals["cortex"], signals["marrow"])


def composite(point_count: int, painted: list[Layer], h: float | np.ndarray) -> np.ndarray:
    """Signal at the points with in-plane partial volume over pixels of size h (painter's algorithm); h may be
    given per point."""
    image = np.zeros(point_count, np.float32)
    for layer in painted:
        if layer.signal is None:
            continue
        weight = soft(layer.distance, h[layer.index] if np.ndim(h) else h)
        inside = weight > 0
        index = layer.index[inside]
        signal = layer.signal[inside] if isinstance(layer.signal, np.ndarray) else layer.signal
        image[index] += (signal - image[index]) * weight[inside]
    return image


def render(anatomy: Anatomy, p: Points, signals: Signals, h: float) -> np.ndarray:
    """Signal at the points (see `composite`)."""
    return composite(p.s.size, layers(anatomy, p, signals), h)


# The opaque structures painted over each truth structure; its outline is what stays visible.
TRUTH_HIDDEN_BY = ("epidural_fat", "iliac_bones", "posterior_elements", "vertebral_bodies", "discs")
TRUTH_LAYERS = frozenset({"psoas_left", "psoas_right", "canal", "pelvis", "bones"})


def masks_from_layers(anatomy: Anatomy, point_count: int, computed: list[Layer], vertebra_name: str):
    """Hard masks of the left psoas, the right psoas (each as visible) and one vertebral body."""

    def full(layer: Layer) -> np.ndarray:
        values = np.full(point_count, np.inf, dtype=np.float32)
        values[layer.index] = layer.distance
        return values

    needed = {"psoas_left", "psoas_right", "vertebral_bodies", "vertebral_body_index", *TRUTH_HIDDEN_BY}
    by_name = {layer.name: full(layer) for layer in computed if layer.name in needed}
    masks: dict[str, np.ndarray] = {}
    for name in ("psoas_left", "psoas_right"):
        mask = by_name[name] <= 0 if name in by_name else np.zeros(point_count, bool)
        for hider in TRUTH_HIDDEN_BY:
            if hider in by_name:
                mask &= by_name[hider] > 0
        masks[name] = mask
    index = anatomy.vertebrae.index(anatomy.vertebra(vertebra_name))
    bodies = by_name.get("vertebral_bodies", np.full(point_count, np.inf))
    body_index = by_name.get("vertebral_body_index", np.full(point_count, -1.0))
    masks["vertebra"] = (bodies <= 0) & (body_index == index)
    return masks


def truth_masks(anatomy: Anatomy, p: Points, vertebra_name: str) -> dict[str, np.ndarray]:
    """Hard masks of the truth structures at the points, computing only the layers they need."""
    return masks_from_layers(anatomy, p.s.size, layers(anatomy, p, None, only=TRUTH_LAYERS), vertebra_name)

"""Muscles, body outline, viscera and vessels as signed distances, placed relative to the spine."""

from __future__ import annotations

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.points import Points
from workers.phantom.shapes import bounded_capsule, ellipse_distance
from workers.phantom.spine import SpineTables, canal_geometry

ERECTOR_DEPTH = 21.0  # half depth of the paraspinal muscle mass behind the canal (mm)


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
    # in the muscle's own axes: lateral (mirrored for the right side) and posterior, turned by its rotation
    turn = np.radians(profile.rotation_deg)
    outward, backward = side * (p.u - centre_u), p.v - centre_v
    x = (outward * np.float32(np.cos(turn)) - backward * np.float32(np.sin(turn))) / lateral
    y = (outward * np.float32(np.sin(turn)) + backward * np.float32(np.cos(turn))) / anteroposterior
    angle = np.arctan2(y, x)
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
    return ellipse_distance(along, across, 21.0 * taper, 8.0 * taper)


def erector_distance(anatomy: Anatomy, t: SpineTables, p: Points, side: int) -> np.ndarray:
    """Erector spinae with multifidus: the posterior muscle mass beside the spinous processes."""
    canal_v, cu, cv = canal_geometry(anatomy, p.depth)
    centre_v = canal_v + cv + ERECTOR_DEPTH
    centre_u = side * (cu + 19.0)
    taper = np.clip(1.0 + (p.s + 40.0) / 120.0, 0.3, 1.0)
    return ellipse_distance(p.u - centre_u, p.v - centre_v, 31.0 * taper, ERECTOR_DEPTH * taper)


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
    ivc = ellipse_distance(p.u - ivc_u, p.v - ivc_v, 1.25 * rv, 0.8 * rv)
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
    bone = bounded_capsule(p.u, p.v, sacroiliac, anterior, 4.5, extent)
    iliacus = bounded_capsule(p.u, p.v, sacroiliac + 14 * inward, anterior + 9 * inward, 7.5, extent + 3.0)
    gluteus = bounded_capsule(p.u, p.v, sacroiliac - 14 * inward, anterior - 18 * inward, 13.0, extent)
    return bone, iliacus, gluteus


def liver_distance(anatomy: Anatomy, t: SpineTables, p: Points) -> np.ndarray:
    """The liver's inferior tip on the right, reaching the upper lumbar levels."""
    centre_s = anatomy.vertebra("L1").s_top + 60.0
    x, y, z = (p.u + 95.0) / 75.0, (p.v + 35.0) / 75.0, (p.s - centre_s) / 85.0
    return (np.sqrt(x * x + y * y + z * z) - 1.0) * 75.0


# --- painting --------------------------------------------------------------------------------------------------------

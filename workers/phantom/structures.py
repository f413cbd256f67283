"""Every structure at a set of points, back to front, and their painting into an image or into truth masks.

Structures are painted back to front, so a later structure hides an earlier one where they overlap: the truth of a
structure is its hard mask minus every later, opaque structure (`TRUTH_HIDDEN_BY`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.mri import Signals
from workers.phantom.points import Points
from workers.phantom.shapes import ellipse_distance, soft, texture, threshold
from workers.phantom.soft_tissue import (
    body_outlines,
    erector_distance,
    iliac_distances,
    kidney_distance,
    liver_distance,
    psoas_distance,
    quadratus_distance,
    vessel_distances,
)
from workers.phantom.spine import (
    SpineTables,
    canal_geometry,
    disc_distance,
    modic,
    posterior_elements_distance,
    vertebral_body_distance,
)


@dataclass(frozen=True)
class Layer:
    """One structure at a subset of the points (`index`): its signed distance and, when painting, its signal."""

    name: str
    index: np.ndarray
    distance: np.ndarray
    signal: np.ndarray | float | None


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


# The groups of structures in painting order (back to front); `layers(..., only=...)` takes a subset of them.
GROUPS = ("body", "viscera", "vessels", "back_muscles", "pelvis", "psoas", "canal", "bones")


def layers(
    anatomy: Anatomy, p: Points, signals: Signals | None, *, only: frozenset[str] | None = None
) -> list[Layer]:
    """All structures at the points, back to front. With signals=None only distances are computed (truth)."""
    painter = _Painter(anatomy, p, signals)
    for group in GROUPS:
        if only is None or group in only:
            getattr(painter, group)()
    return painter.out


class _Painter:
    """Builds the layers of one set of points, group by group (`GROUPS`)."""

    def __init__(self, anatomy: Anatomy, p: Points, signals: Signals | None):
        self.anatomy = anatomy
        self.t = SpineTables.of(anatomy)
        self.p = Points(p.s, p.u, p.v, self.t.width_at(p.s), self.t.depth_at(p.s))
        self.signals = signals
        self.paint = signals is not None
        self.out: list[Layer] = []
        self.depth_max = float(self.t.half_depth.max())
        self.iliac_bones: Layer | None = None

    def add(self, name: str, region: _Region | np.ndarray, distance: np.ndarray, signal) -> None:
        index = region.index if isinstance(region, _Region) else region
        self.out.append(Layer(name, index, distance, signal))

    def constant(self, name: str) -> float | None:
        return self.signals[name] if self.paint else None

    def mix(self, a: str, b: str, weight: np.ndarray) -> np.ndarray:
        return self.signals[a] + (self.signals[b] - self.signals[a]) * weight

    def body(self) -> None:
        """Subcutaneous fat, the abdominal wall, visceral fat and bowel loops in front of the retroperitoneum."""
        anatomy, p = self.anatomy, self.p
        skin, wall, cavity = body_outlines(anatomy, self.t, p)
        everything = np.arange(p.s.size)
        self.add("subcutaneous_fat", everything, skin, self.constant("fat"))
        self.add("abdominal_wall", everything, wall, self.constant("muscle"))
        self.add("visceral_fat", everything, cavity, self.constant("fat"))
        region = _Region(p, v=(-1e4, -self.depth_max - 15.0))
        if self.paint and region:
            q, signals = region.points, self.signals
            spine_front = -(q.depth + anatomy.retroperitoneal_fat_mm) - 0.004 * q.u**2
            bowel_region = np.maximum(cavity[region.index] + 6.0, q.v - spine_front)
            field = texture(q, anatomy, scale=1.8)
            lumen = field > 0.25
            fluid = np.clip((field - 0.9) * 3.0, 0.0, 1.0)
            gas = np.clip((texture(q, anatomy, scale=2.9) - 1.5) * 3.0, 0.0, 1.0)
            content = self.mix("bowel_content", "bowel_fluid", fluid)
            content = content + (signals["air"] - content) * gas
            wall_or_fat = np.where(field < -0.25, signals["fat"], signals["bowel_wall"])
            self.add("bowel", region, bowel_region, np.where(lumen, content, wall_or_fat))

    def viscera(self) -> None:
        """The liver's tip and the kidneys (with the fat of the renal sinus)."""
        anatomy, t, p = self.anatomy, self.t, self.p
        region = _Region(p, u=(-200.0, 0.0), v=(-130.0, 60.0), s=(anatomy.vertebra("L1").s_top - 40.0, 1e4))
        if region:
            self.add("liver", region, liver_distance(anatomy, t, region.points), self.constant("liver"))
        for side, name in ((1, "kidney_left"), (-1, "kidney_right")):
            region = _Region(
                p, u=(20.0, 150.0) if side > 0 else (-150.0, -20.0), v=(-50.0, 60.0),
                s=(anatomy.kidney_s - 80.0, anatomy.kidney_s + 70.0),
            )
            if region:
                q = region.points
                d = kidney_distance(anatomy, t, q, side)
                signal = None
                if self.paint:
                    medial = side * q.u < q.width + 52.0
                    signal = self.mix("kidney", "fat", np.clip(-(d + 9.0) / 3.0, 0.0, 1.0) * medial)
                self.add(name, region, d, signal)

    def vessels(self) -> None:
        region = _Region(self.p, abs_u=(0.0, 100.0), v=(-90.0, 5.0))
        if region:
            arteries, veins = vessel_distances(self.anatomy, self.t, region.points)
            self.add("arteries", region, arteries, self.constant("flow_void"))
            vein_signal = "blood_slow" if self.anatomy.vessels_bright else "flow_void"
            self.add("veins", region, veins, self.constant(vein_signal))

    def back_muscles(self) -> None:
        """Erector spinae with multifidus (fat septum and fatty infiltration), quadratus lumborum."""
        anatomy, t, p = self.anatomy, self.t, self.p
        for side, name in ((1, "erector_left"), (-1, "erector_right")):
            region = _Region(p, u=(-5.0, 100.0) if side > 0 else (-100.0, 5.0), v=(self.depth_max, 140.0))
            if region:
                q = region.points
                d = erector_distance(anatomy, t, q, side)
                signal = None
                if self.paint:
                    canal_v, cu, _ = canal_geometry(anatomy, q.depth)
                    septum = np.abs(np.abs(q.u) - (cu + 13.0 + 0.1 * (q.v - canal_v))) < 0.9
                    fat = texture(q, anatomy, stretch_s=4.0, scale=2.5) > threshold(anatomy.erector_fat_fraction)
                    signal = np.where(septum | fat, self.signals["fat"], self.signals["muscle"])
                self.add(name, region, d, signal)
        for side, name in ((1, "quadratus_left"), (-1, "quadratus_right")):
            region = _Region(
                p, u=(20.0, 150.0) if side > 0 else (-150.0, -20.0), v=(-30.0, 70.0),
                s=(anatomy.vertebrae[1].s_top, anatomy.vertebra("L1").s_middle),
            )
            if region:
                self.add(name, region, quadratus_distance(anatomy, t, region.points, side), self.constant("muscle"))

    def pelvis(self) -> None:
        """Iliacus and gluteus now; the iliac bones are kept to be painted with the other bones, over the psoas."""
        anatomy, p = self.anatomy, self.p
        region = _Region(p, abs_u=(20.0, 150.0), v=(-80.0, 75.0), s=(-80.0, anatomy.iliac_crest_s + 25.0))
        if not region:
            return
        bones = []
        for side in (1, -1):
            bone, iliacus, gluteus = iliac_distances(anatomy, region.points, side)
            self.add("iliacus", region, iliacus, self.constant("muscle"))
            self.add("gluteus", region, gluteus, self.constant("muscle"))
            bones.append(bone)
        bone = np.minimum(*bones)
        signal = bone_signal(bone, self.signals, 1.2)
        if self.paint:
            signal = signal * (1.0 + 0.07 * texture(region.points, anatomy, scale=5.0))
        self.iliac_bones = Layer("iliac_bones", region.index, bone, signal)

    def psoas(self) -> None:
        """Both psoas muscles; intramuscular fat as streaks along the fibres inside a rim of muscle that keeps the
        outline visible."""
        anatomy, p = self.anatomy, self.p
        top = anatomy.vertebra("L1").s_top + 12.0
        for side, name in ((1, "psoas_left"), (-1, "psoas_right")):
            region = _Region(p, u=(0.0, 160.0) if side > 0 else (-160.0, 0.0), v=(-110.0, 70.0), s=(-1e4, top))
            if region:
                q = region.points
                d = psoas_distance(anatomy, self.t, q, side)
                signal = None
                if self.paint:
                    profile = anatomy.psoas_left if side > 0 else anatomy.psoas_right
                    fat = texture(q, anatomy, stretch_s=5.0, scale=3.2) - threshold(profile.fat_fraction)
                    rim = np.clip((-d - 2.0) / 2.0, 0.0, 1.0)
                    signal = self.mix("muscle", "fat", np.clip(fat * 2.0, 0.0, 1.0) * rim)
                self.add(name, region, d, signal)

    def canal(self) -> None:
        """Epidural fat and the thecal sac: CSF, the cord down to the conus (about L1-L2), the cauda equina."""
        anatomy = self.anatomy
        region = _Region(self.p, abs_u=(0.0, 25.0), v=(0.0, 80.0))
        if not region:
            return
        q = region.points
        canal_v, cu, cv = canal_geometry(anatomy, q.depth)
        self.add("epidural_fat", region, ellipse_distance(q.u, q.v - canal_v, cu, cv), self.constant("fat"))
        sac_end = np.clip(-45.0 - q.s, 0.0, None)
        sac = ellipse_distance(q.u, q.v - canal_v - 0.5, cu - 2.5, cv - 1.5) + sac_end
        signal = None
        if self.paint:
            roots = (np.cos(q.u * 1.9) * np.cos((q.v - canal_v) * 1.9) > 0.75) & (q.v - canal_v > 0.0)
            conus_end = anatomy.vertebra("L1").s_bottom
            cord_radius = np.clip((q.s - conus_end) / 6.0, 0.0, 1.0) * 4.5
            cord = np.hypot(q.u, q.v - canal_v) < cord_radius
            signal = np.where(roots | cord, self.signals["nerve"], self.signals["csf"])
        self.add("thecal_sac", region, sac, signal)

    def bones(self) -> None:
        """Iliac bones, vertebral arches, vertebral bodies (with their index, for the truth) and discs."""
        anatomy, t, p, signals = self.anatomy, self.t, self.p, self.signals
        if self.iliac_bones is not None:
            self.out.append(self.iliac_bones)
        region = _Region(p, abs_u=(0.0, 62.0), v=(-10.0, 90.0))
        if region:
            q = region.points
            nearest = np.searchsorted(t.disc_centres, q.s)
            d_posterior = posterior_elements_distance(anatomy, t, q, nearest)
            self.add("posterior_elements", region, d_posterior, bone_signal(d_posterior, signals, 0.9))
        region = _Region(p, abs_u=(0.0, 42.0), v=(-40.0, 70.0))  # the sacrum curves back by up to 35 mm
        if not region:
            return
        q = region.points
        d_body, index = vertebral_body_distance(anatomy, t, q)
        signal = None
        if self.paint:
            signal = bone_signal(d_body, signals, 1.0) * (1.0 + 0.05 * texture(q, anatomy, scale=4.0))
            cement = t.cement[index] & (d_body < -4.0) & (texture(q, anatomy, scale=3.0) > -0.3)
            edema = t.edema[index] & (q.s > t.s_top[index] - 10.0) & (d_body < -1.0)
            signal = np.where(edema, signals["edema"], signal)
            signal = np.where(cement, signals["cement"], signal)
            if anatomy.modic_type:
                signal = modic(anatomy, t, q, index, signal, signals)
            if anatomy.sacral_remnant > 0:
                remnant = (index == 0) & (np.abs(q.s - t.s_bottom[0]) < 1.2)
                signal = np.where(remnant, signal + (signals["annulus"] - signal) * anatomy.sacral_remnant, signal)
        self.add("vertebral_bodies", region, d_body, signal)
        self.add("vertebral_body_index", region, index, None)
        d_disc, below, radial = disc_distance(anatomy, t, q)
        signal = None
        if self.paint:
            nucleus = np.clip((0.85 - radial) * 4.0, 0.0, 1.0) * (1.0 - t.degeneration[below])
            signal = signals["annulus"] + (signals["nucleus"] - signals["annulus"]) * nucleus
        self.add("discs", region, d_disc, signal)


def bone_signal(distance: np.ndarray, signals: Signals | None, cortex_mm: float) -> np.ndarray | None:
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


# The opaque structures painted over each truth structure; its outline is what stays visible.
TRUTH_HIDDEN_BY = ("epidural_fat", "iliac_bones", "posterior_elements", "vertebral_bodies", "discs")
TRUTH_GROUPS = frozenset({"psoas", "canal", "pelvis", "bones"})


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
    return masks_from_layers(anatomy, p.s.size, layers(anatomy, p, None, only=TRUTH_GROUPS), vertebra_name)

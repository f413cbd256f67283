"""The lumbar anatomy of one synthetic patient: its parameters, drawn from a seed, and the spine's curved frame.

Everything is placed in a curvilinear frame that follows the spine: `s` is the arc length along the centreline of
the vertebral bodies (mm, cranial positive, 0 at the centre of the S1 upper endplate), `u` the lateral offset
(patient left positive) and `v` the offset perpendicular to the centreline in the sagittal plane (posterior
positive). The lumbar lordosis is a circular arc, so this frame is exact and cheap to evaluate for millions of
points; a rigid transform (patient yaw and roll on the table, table position) maps it to patient coordinates (LPS).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Typical adult dimensions (mm) per vertebra, caudal to cranial: body height, disc above it, half width, half depth
# of the endplate, transverse process length. Sources: standard morphometry tables (Panjabi 1992, Zhou 2000),
# rounded. The sacrum's "height" is the S1 segment; the rest of the sacrum tapers below it.
_LUMBAR_TYPICAL = {
    # name: (height, disc_above, half_width, half_depth, transverse_process)
    "L6": (27.0, 11.0, 26.0, 17.5, 22.0),
    "L5": (27.0, 11.0, 26.0, 17.5, 22.0),
    "L4": (27.0, 11.0, 25.0, 17.5, 26.0),
    "L3": (27.0, 10.5, 24.0, 17.0, 30.0),
    "L2": (26.0, 10.0, 22.5, 16.5, 24.0),
    "L1": (25.0, 8.5, 21.0, 16.0, 18.0),
    "T12": (23.0, 6.5, 18.5, 14.0, 8.0),
    "T11": (22.0, 5.5, 17.5, 13.5, 8.0),
    "T10": (21.0, 5.0, 17.0, 13.0, 8.0),
}
_SACRUM = (30.0, 10.0, 24.5, 16.0, 0.0)  # S1: height, L5-S1 disc, half width, half depth


@dataclass(frozen=True)
class Vertebra:
    """One vertebral body with its endplates (arc-length positions of the endplate rims) and arch dimensions."""

    name: str
    s_bottom: float
    s_top: float
    half_width: float
    half_depth: float
    transverse_process_mm: float
    condition: str = "none"  # "none" | "fractured" | "cemented"
    wedge: float = 0.0  # fraction of the anterior height lost to a compression fracture

    @property
    def s_middle(self) -> float:
        return 0.5 * (self.s_bottom + self.s_top)


@dataclass(frozen=True)
class MuscleProfile:
    """Size and placement of one psoas major along the spine (arrays over the anchor arc lengths)."""

    anchors_s: np.ndarray
    area_mm2: np.ndarray  # area of the ellipse at each anchor before the vertebra cuts its medial edge
    aspect: np.ndarray  # antero-posterior over lateral semi-axis
    v_fraction: np.ndarray  # centre offset v as a fraction of the vertebral half depth
    shape_harmonics: np.ndarray  # (k, amplitude, phase) rows that make the outline irregular
    fat_fraction: float
    rotation_deg: float = 0.0  # the oval turned from antero-posterior (positive: its front end medial)


@dataclass(frozen=True)
class Anatomy:
    """All parameters of one synthetic patient; pure data, evaluated by `workers.phantom.structures`."""

    origin: np.ndarray  # LPS position of s=0 (centre of the S1 upper endplate)
    rotation: np.ndarray  # 3x3, columns: the anatomical left, posterior and superior axes in LPS
    phi0: float  # tangent angle of the centreline at s=0 (rad); negative: rising anteriorly (sacral slope)
    arc_starts: tuple[float, ...]  # the centreline is a chain of circular arcs starting at these s (first: -inf)
    curvatures: tuple[float, ...]  # 1/mm per arc: sacral kyphosis (<0), lumbar lordosis (>0), thoracic kyphosis
    scoliosis_mm: float
    scoliosis_phase: float
    vertebrae: tuple[Vertebra, ...]  # caudal to cranial; vertebrae[0] is S1 (the sacrum)
    lumbar_count: int
    endplate_concavity_mm: float
    canal_half_width: float
    canal_half_depth: float
    psoas_left: MuscleProfile
    psoas_right: MuscleProfile
    erector_fat_fraction: float
    body_half_width: float
    abdomen_depth: float  # anterior reach of the abdomen from the spine centreline (mm)
    back_fat_mm: float
    flank_fat_mm: float
    aorta_radius: float
    ivc_radius: float
    bifurcation_s: float
    disc_degeneration: tuple[float, ...]  # 0 healthy .. 1 desiccated, per disc above vertebrae[i]
    texture_waves: np.ndarray  # (K, 3) wave vectors (rad/mm) for bowel and fat textures
    texture_phases: np.ndarray  # (K,)
    kidney_s: float
    vessels_bright: bool  # slow flow: the IVC loses its flow void (a trap for psoas segmentation)
    marrow_fat: float  # fatty marrow brightens the vertebrae on T1 and T2 TSE with age
    iliac_crest_s: float  # arc length of the top of the iliac crests (usually level with L4-L5)
    retroperitoneal_fat_mm: float  # fat between the spine and the bowel; thin patients have bowel against the psoas
    modic_type: int  # 0 none; 1 (oedema) or 2 (fat) marrow change along the endplates of degenerated discs
    sacral_remnant: float  # conspicuity 0..1 of the rudimentary S1-S2 disc, a trap for counting from the sacrum

    def vertebra(self, name: str) -> Vertebra:
        for vertebra in self.vertebrae:
            if vertebra.name == name:
                return vertebra
        raise KeyError(f"no vertebra named {name} in this phantom")

    # --- the spine frame ------------------------------------------------------------------------------------------

    def _arcs(self) -> list[tuple[float, float, float, float, float]]:
        """(start s, start y, start z, start angle, curvature) of each circular arc of the centreline."""
        arcs = []
        y = z = 0.0
        phi = self.phi0
        starts = [-np.inf, *self.arc_starts[1:]]
        for index, (start, curvature) in enumerate(zip(starts, self.curvatures, strict=True)):
            if index == 0:
                arcs.append((0.0, 0.0, 0.0, self.phi0, curvature))  # the sacral arc, anchored at s = 0
                continue
            prior_start, prior_y, prior_z, prior_phi, prior_k = arcs[-1]
            length = start - prior_start
            phi = prior_phi + prior_k * length
            y = prior_y + (np.cos(prior_phi) - np.cos(phi)) / prior_k
            z = prior_z + (np.sin(phi) - np.sin(prior_phi)) / prior_k
            arcs.append((start, y, z, phi, curvature))
        return arcs

    def to_anatomical(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points (N, 3) to anatomical coordinates relative to the S1 endplate centre (N, 3)."""
        # einsum, not @: a BLAS call spawns threads that cost more than they save here
        return np.einsum("ij,jk->ik", np.asarray(points_lps, dtype=np.float64) - self.origin, self.rotation)

    def to_spine_frame(self, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS points (N, 3) to the spine frame (s, u, v), float32 arrays of N.

        A point belongs to the arc whose range holds its candidate arc length (the arcs join with a common tangent,
        so candidates agree near the joints). The first guess comes from the height of the point; the few points
        whose candidate falls outside the guessed arc are moved to the neighbouring arc and solved again."""
        q = self.to_anatomical(points_lps).astype(np.float32)
        arcs = np.array(self._arcs(), dtype=np.float64)
        begins = np.array(self.arc_starts, dtype=np.float64)
        ends = np.append(begins[1:], np.inf)
        guess = np.searchsorted(arcs[1:, 2], q[:, 2], side="right").astype(np.intp)
        s = np.empty(len(q), np.float32)
        v = np.empty(len(q), np.float32)
        pending = np.arange(len(q))
        for _ in range(len(arcs)):
            k = guess[pending]
            start, y0, z0, phi0, curvature = (arcs[k, i].astype(np.float32) for i in range(5))
            radius = np.float32(1.0) / curvature
            sign = np.sign(radius)
            wy = q[pending, 1] - (y0 + radius * np.cos(phi0))
            wz = q[pending, 2] - (z0 - radius * np.sin(phi0))
            angle = np.arctan2(sign * wz, -sign * wy) - phi0
            angle = (angle + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
            s[pending] = start + angle * radius
            v[pending] = radius - sign * np.hypot(wy, wz)
            below = s[pending] < begins[k] - 1e-3
            above = s[pending] > ends[k] + 1e-3
            move = (below & (k > 0)) | (above & (k < len(arcs) - 1))
            if not move.any():
                break
            guess[pending[move]] += np.where(above[move], 1, -1)
            pending = pending[move]
        u = q[:, 0] - np.asarray(self.lateral_offset(s), dtype=np.float32)
        return s, u, v

    def lateral_offset(self, s: np.ndarray | float) -> np.ndarray | float:
        """Scoliotic sway of the centreline (mm, patient left positive) as a function of arc length."""
        return self.scoliosis_mm * np.sin(2 * np.pi * np.asarray(s) / 260.0 + self.scoliosis_phase)

    def _arc_at(self, s: float) -> tuple[float, float, float, float, float]:
        arcs = self._arcs()
        return arcs[max(0, int(np.searchsorted(self.arc_starts[1:], s, side="right")))]

    def point(self, s: float, u: float = 0.0, v: float = 0.0) -> np.ndarray:
        """The LPS point at spine-frame coordinates (s, u, v)."""
        start, y0, z0, phi0, curvature = self._arc_at(s)
        radius = 1.0 / curvature
        phi = phi0 + (s - start) * curvature
        y = y0 + radius * np.cos(phi0) - (radius - v) * np.cos(phi)
        z = z0 - radius * np.sin(phi0) + (radius - v) * np.sin(phi)
        x = u + float(self.lateral_offset(s))
        return self.origin + self.rotation @ np.array([x, y, z])

    def tangent(self, s: float) -> np.ndarray:
        """Unit vector along the centreline at arc length s, pointing cranially (LPS)."""
        start, _, _, phi0, curvature = self._arc_at(s)
        phi = phi0 + (s - start) * curvature
        slope = 2 * np.pi / 260.0 * self.scoliosis_mm * np.cos(2 * np.pi * s / 260.0 + self.scoliosis_phase)
        direction = self.rotation @ np.array([slope, np.sin(phi), np.cos(phi)])
        return direction / np.linalg.norm(direction)

    def upper_endplate(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Centre point and cranial unit normal (LPS) of the plane through the rim of a vertebra's upper endplate."""
        vertebra = self.vertebra(name)
        return self.point(vertebra.s_top), self.tangent(vertebra.s_top)

    def disc_centre(self, lower: Vertebra) -> tuple[np.ndarray, np.ndarray]:
        """Centre and cranial normal of the disc above `lower` (its mid plane)."""
        index = self.vertebrae.index(lower)
        s = 0.5 * (lower.s_top + self.vertebrae[index + 1].s_bottom)
        return self.point(s), self.tangent(s)


def _rotation(yaw_deg: float, roll_deg: float) -> np.ndarray:
    """Patient rotation on the table: yaw about the superior axis, then roll (coronal tilt) about the AP axis."""
    yaw, roll = np.radians(yaw_deg), np.radians(roll_deg)
    about_z = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    about_y = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    return about_z @ about_y


def lumbar_names(count: int) -> list[str]:
    """Lumbar vertebra names caudal to cranial, numbered from the top (L1 = first below the last rib)."""
    return [f"L{i}" for i in range(count, 0, -1)]


def sample_anatomy(
    rng: np.random.Generator,
    *,
    hard: bool,
    lumbar_count: int,
    condition_above_l4: tuple[str, str] | None,
    target_plvi: float,
    fat_fraction: float,
) -> Anatomy:
    """Draw one patient. `condition_above_l4` is (vertebra name, kind) for a fractured or cemented vertebra."""
    spread = 1.6 if hard else 1.0
    size = rng.uniform(0.88, 1.12)
    lordosis_deg = rng.uniform(35, 55) if not hard else rng.uniform(25, 65)
    sacral_slope_deg = rng.uniform(26, 42)

    names = lumbar_names(lumbar_count) + ["T12", "T11", "T10"]
    vertebrae: list[Vertebra] = []
    height, disc_above, half_width, half_depth, _ = _SACRUM
    s_top = 0.0
    vertebrae.append(Vertebra("S1", -height * size, 0.0, half_width * size, half_depth * size, 0.0))
    s = s_top + disc_above * size * rng.uniform(0.85, 1.15)
    for name in names:
        typical = _LUMBAR_TYPICAL["L5" if name == "L6" else name]
        height, disc_above, half_width, half_depth, process = typical
        jitter = rng.uniform(0.94, 1.06, size=3)
        condition, wedge = "none", 0.0
        if condition_above_l4 is not None and condition_above_l4[0] == name:
            condition = condition_above_l4[1]
            wedge = rng.uniform(0.25, 0.45) if condition == "fractured" else rng.uniform(0.1, 0.3)
        body_height = height * size * jitter[0]
        vertebrae.append(
            Vertebra(
                name,
                s,
                s + body_height,
                half_width * size * jitter[1],
                half_depth * size * jitter[2],
                process * size,
                condition,
                wedge,
            )
        )
        s = s + body_height + disc_above * size * rng.uniform(0.8, 1.15)

    # L4-S1 carries about 60 % of the lumbar lordosis, L1-L4 the rest; the sacrum and thorax curve the other way
    l4_top = next(v for v in vertebrae if v.name == "L4").s_top
    l1_top = next(v for v in vertebrae if v.name == "L1").s_top
    lower_share = rng.uniform(0.5, 0.7)
    arc_starts = (-np.inf, 0.0, l4_top, l1_top)
    curvatures = (
        -rng.uniform(0.004, 0.008),
        np.radians(lordosis_deg * lower_share) / l4_top,
        np.radians(lordosis_deg * (1 - lower_share)) / (l1_top - l4_top),
        -rng.uniform(0.002, 0.004),
    )

    l4 = next(v for v in vertebrae if v.name == "L4")
    vertebral_area = 3.3 * l4.half_width * l4.half_depth  # about the area of the squircle endplate, mm2
    asymmetry = rng.normal(0.0, 0.05 * spread)
    if hard and rng.random() < 0.1:  # one-sided atrophy (old hip surgery, radiculopathy)
        asymmetry = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.35))
    psoas_l4 = 0.5 * target_plvi * vertebral_area * 1.08  # a first guess; study._calibrate_psoas makes it exact
    profiles = [
        _psoas_profile(rng, vertebrae, psoas_l4 * (1 + asymmetry), fat_fraction),
        _psoas_profile(rng, vertebrae, psoas_l4 * (1 - asymmetry), fat_fraction),
    ]
    l1 = next(v for v in vertebrae if v.name == "L1")
    waves = rng.normal(0.0, 1.0, size=(6, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    waves *= (2 * np.pi / rng.uniform(30.0, 70.0, size=6))[:, None]
    yaw_limit, roll_limit = (8.0, 6.0) if hard else (3.0, 2.5)
    rotation = _rotation(rng.uniform(-yaw_limit, yaw_limit), rng.uniform(-roll_limit, roll_limit))
    origin = np.array([rng.uniform(-10, 10), rng.uniform(-15, 15), rng.uniform(-170, -120)])
    anatomy = Anatomy(
        origin=origin,
        rotation=rotation,
        phi0=-np.radians(sacral_slope_deg),
        arc_starts=arc_starts,
        curvatures=tuple(float(k) for k in curvatures),
        scoliosis_mm=float(rng.uniform(0, 7 if hard else 3)),
        scoliosis_phase=float(rng.uniform(0, 2 * np.pi)),
        vertebrae=tuple(vertebrae),
        lumbar_count=lumbar_count,
        endplate_concavity_mm=float(rng.uniform(0.3, 1.6 if hard else 1.0)),
        canal_half_width=float(rng.uniform(10.0, 12.5) * size),
        canal_half_depth=float(rng.uniform(6.5, 8.5) * size),
        psoas_left=profiles[0],
        psoas_right=profiles[1],
        erector_fat_fraction=float(np.clip(fat_fraction * rng.uniform(1.0, 2.0) + 0.05, 0, 0.6)),
        body_half_width=float(rng.uniform(140, 195) * size),
        abdomen_depth=float(rng.uniform(120, 210) * size),
        back_fat_mm=float(rng.uniform(6, 40)),
        flank_fat_mm=float(rng.uniform(10, 55)),
        aorta_radius=float(rng.uniform(8.0, 11.5)),
        ivc_radius=float(rng.uniform(8.0, 11.0)),
        bifurcation_s=float(l4.s_middle + rng.uniform(-8, 8)),
        disc_degeneration=tuple(float(x) for x in rng.beta(1.5, 2.5 if not hard else 1.2, size=len(vertebrae))),
        texture_waves=waves,
        texture_phases=rng.uniform(0, 2 * np.pi, size=6),
        kidney_s=float(l1.s_bottom - rng.uniform(-5, 20)),
        vessels_bright=bool(hard and rng.random() < 0.3),
        marrow_fat=float(rng.uniform(0.3, 0.7)),
        iliac_crest_s=float(l4.s_bottom + rng.uniform(-12.0, 6.0)),
        retroperitoneal_fat_mm=float(rng.uniform(0.0, 15.0) if hard else rng.uniform(8.0, 30.0)),
        modic_type=int(rng.choice([1, 2])) if rng.random() < (0.35 if hard else 0.1) else 0,
        sacral_remnant=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.7 else 0.0,
    )
    return _vary_psoas_shapes(rng, anatomy, hard)


def _vary_psoas_shapes(rng: np.random.Generator, anatomy: Anatomy, hard: bool) -> Anatomy:
    """Turn each psoas oval (it often lies obliquely) and, in hard studies, make its outline less regular."""
    profiles = []
    for profile in (anatomy.psoas_left, anatomy.psoas_right):
        harmonics = profile.shape_harmonics.copy()
        if hard:
            harmonics[:, 1] *= rng.uniform(1.0, 1.8)
        limits = (-30.0, 30.0) if hard else (-15.0, 15.0)
        profiles.append(replace(profile, shape_harmonics=harmonics, rotation_deg=float(rng.uniform(*limits))))
    return replace(anatomy, psoas_left=profiles[0], psoas_right=profiles[1])


def _psoas_profile(
    rng: np.random.Generator, vertebrae: list[Vertebra], area_at_l4_top: float, fat_fraction: float
) -> MuscleProfile:
    """Psoas major: small at L1, growing caudally, largest near L4-L5, moving anterolaterally into the pelvis."""
    by_name = {v.name: v for v in vertebrae}
    l1, l2, l3, l4 = (by_name[n] for n in ("L1", "L2", "L3", "L4"))
    lowest = vertebrae[1]
    anchors = np.array(
        [
            l1.s_top + 8,
            l1.s_middle,
            l2.s_middle,
            l3.s_middle,
            l4.s_top,
            l4.s_middle,
            lowest.s_middle,
            0.0,
            -60.0,
        ]
    )
    growth = np.array([0.0, 0.12, 0.35, 0.68, 1.0, 1.08, 1.15, 1.05, 0.9])
    growth[1:-1] *= rng.uniform(0.9, 1.1, size=growth.size - 2)
    growth[4] = 1.0
    order = np.argsort(anchors)
    aspect = np.array([1.6, 1.5, 1.35, 1.2, 1.15, 1.1, 1.0, 0.95, 0.9]) * rng.uniform(0.9, 1.1)
    v_fraction = np.array([0.5, 0.45, 0.3, 0.1, -0.05, -0.15, -0.4, -0.7, -1.2]) + rng.uniform(-0.1, 0.1)
    harmonics = np.column_stack(
        [np.array([2.0, 3.0, 4.0]), rng.uniform(0.0, 0.06, size=3), rng.uniform(0, 2 * np.pi, size=3)]
    )
    return MuscleProfile(
        anchors_s=anchors[order],
        area_mm2=(area_at_l4_top * growth)[order],
        aspect=aspect[order],
        v_fraction=v_fraction[order],
        shape_harmonics=harmonics,
        fat_fraction=fat_fraction,
    )

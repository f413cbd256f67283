"""Acquiring one slice: the slab rendered through the anatomy, then coil sensitivity, resolution, ghosts, noise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.mri import BiasField, ghosts, limited_resolution, rician, tissue_heterogeneity
from workers.phantom.points import Points
from workers.phantom.protocol import Draws
from workers.phantom.shapes import texture
from workers.phantom.soft_tissue import ERECTOR_DEPTH
from workers.phantom.spine import SpineTables, canal_geometry
from workers.phantom.stacks import SlicePlane
from workers.phantom.structures import Layer, composite, layers


def bias_field(anatomy: Anatomy, draws: Draws) -> BiasField:
    """Spine-array elements under the back (and a body array on the abdomen unless the study is hard)."""
    t = SpineTables.of(anatomy)
    elements = []
    l3 = anatomy.vertebra("L3")
    canal_v, _, cv = canal_geometry(anatomy, t.depth_at(np.array([l3.s_middle])))
    back = float(canal_v[0] + cv + 2 * ERECTOR_DEPTH + anatomy.back_fat_mm + 12.0)
    for s in np.arange(-90.0, 330.0, 70.0):
        for x in (-80.0, -27.0, 27.0, 80.0):
            elements.append(anatomy.point(float(s), x, back))
            if draws.anterior_coil and -20 < s < 260:
                elements.append(anatomy.point(float(s), x, -anatomy.abdomen_depth - 15.0))
    reference = anatomy.point(anatomy.vertebra("L4").s_middle)
    return BiasField(np.array(elements), draws.coil_reach, reference, draws.bias)


def acquire(
    anatomy: Anatomy,
    plane: SlicePlane,
    signals: dict[str, float],
    samples: int,
    bias: BiasField,
    draws: Draws,
    phase_direction: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[list[Layer], int, int]]:
    """The magnitude image of one slice (slab average, coil sensitivity, ghosts, Rician noise) and the structures
    evaluated for it (layers, number of points, of which the first ones are the centre plane's pixels).

    The centre plane is rendered at full resolution. What changes across the slab's thickness (partial volume of a
    disc at the top of a vertebra, say) is rendered at a third of the resolution, `samples` planes across the slab
    minus the centre plane, and added: the through-plane average at a fraction of the cost, edges kept sharp."""
    h = min(plane.pixel_spacing)
    shape = (plane.rows, plane.columns)
    coarse = _reduced(plane, SLAB_REDUCTION)
    offsets = (np.arange(samples) - (samples - 1) / 2) * plane.thickness / samples
    planes = [Points.on_plane(anatomy, plane), *(Points.on_plane(anatomy, coarse, float(o)) for o in offsets)]
    sizes = [p.s.size for p in planes]
    # one evaluation for all planes: the per-call overhead of numpy dominates on the small ones
    together = Points(*(np.concatenate([getattr(p, k) for p in planes]) for k in ("s", "u", "v")))
    pixel_size = np.repeat(np.array([h] + [SLAB_REDUCTION * h] * samples, np.float32), sizes)
    all_layers = layers(anatomy, together, signals)
    rendered = np.split(composite(together.s.size, all_layers, pixel_size), np.cumsum(sizes)[:-1])
    image = rendered[0].reshape(shape)
    low = [r.reshape(coarse.rows, coarse.columns) for r in rendered[1:]]
    centre_low = low[samples // 2] if samples % 2 else np.mean(low, axis=0)
    change = np.mean(low, axis=0) - centre_low
    image = image + _upsample(change, shape, SLAB_REDUCTION)
    phase_axis = 1 if phase_direction == "ROW" else 0
    heterogeneity = texture(planes[1 + samples // 2], anatomy, scale=1.2).reshape(coarse.rows, coarse.columns)
    image = tissue_heterogeneity(image, _upsample(heterogeneity, shape, SLAB_REDUCTION), 0.03)
    image = limited_resolution(image, phase_axis, draws.phase_resolution)
    image = image * _smooth_on_plane(bias.at, plane)
    image = ghosts(image, draws.ghost_amplitude, phase_axis, rng)
    sigma = signals["fat"] / draws.snr
    return rician(image, sigma, rng), (all_layers, together.s.size, sizes[0])


SLAB_REDUCTION = 3  # in-plane reduction of the planes that carry the through-plane partial volume


def _reduced(plane: SlicePlane, factor: int) -> SlicePlane:
    """The same field of view with pixels `factor` times larger, pixel (0, 0) centred on the first block."""
    shift = (factor - 1) / 2 * (
        plane.pixel_spacing[0] * plane.column_direction + plane.pixel_spacing[1] * plane.row_direction
    )
    return replace(
        plane,
        position=plane.position + shift,
        rows=-(-plane.rows // factor),
        columns=-(-plane.columns // factor),
        pixel_spacing=(factor * plane.pixel_spacing[0], factor * plane.pixel_spacing[1]),
    )


def _upsample(image: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear upsampling of an image of `_reduced` pixels back onto the full grid."""
    rows = np.clip((np.arange(shape[0]) - (factor - 1) / 2) / factor, 0, image.shape[0] - 1)
    columns = np.clip((np.arange(shape[1]) - (factor - 1) / 2) / factor, 0, image.shape[1] - 1)
    r0 = np.minimum(rows.astype(int), image.shape[0] - 2)
    c0 = np.minimum(columns.astype(int), image.shape[1] - 2)
    fr = (rows - r0).astype(np.float32)[:, None]
    fc = (columns - c0).astype(np.float32)[None, :]
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c0 + 1] * fc
    bottom = image[r0 + 1][:, c0] * (1 - fc) + image[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def _smooth_on_plane(field, plane: SlicePlane, step: int = 8) -> np.ndarray:
    """A smooth field of LPS points evaluated on blocks of `step` x `step` pixels and interpolated bilinearly."""
    coarse = _reduced(plane, step)
    values = field(coarse.pixel_centres().reshape(-1, 3)).reshape(coarse.rows, coarse.columns)
    return _upsample(values.astype(np.float32), (plane.rows, plane.columns), step)

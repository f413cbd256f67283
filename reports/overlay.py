"""The measured slice with the outline of each mask drawn on it, as an RGB array: the one drawing behind the DICOM
key image, the dashboard's key image and `plvi analyze --out`'s overlay.png (they differ only in the output format
and in what is written around the outlines), so a reader sees the same picture in each."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

from reports.seg import STRUCTURES

# Colours of the outlines (RGB), those of the SEG's segments; the dashboard's legend uses the same ones.
OUTLINE_COLOURS: dict[str, tuple[int, int, int]] = {s.mask_key: s.display_rgb for s in STRUCTURES}


def outlined_rgb(image: np.ndarray, masks: dict[str, np.ndarray], factor: int) -> np.ndarray:
    """`image` (any numeric 2D array) windowed to its 1st-99.5th percentile and enlarged `factor` times (an integer,
    so outlines stay on pixel edges), with a two-pixel outline of each mask drawn inside its edge.

    A mask that is missing, empty or not the shape of `image` is not drawn."""
    pixels = image.astype(np.float64)
    low, high = np.percentile(pixels, [1.0, 99.5]) if pixels.size else (0.0, 1.0)
    grey = np.clip((pixels - low) / max(high - low, 1e-9), 0.0, 1.0)
    grey8 = np.kron((grey * 255).round().astype(np.uint8), np.ones((factor, factor), dtype=np.uint8))
    rgb = np.repeat(grey8[:, :, np.newaxis], 3, axis=2)
    for name, colour in OUTLINE_COLOURS.items():
        mask = masks.get(name)
        if mask is None or mask.shape != image.shape or not mask.any():
            continue
        large = np.kron(mask.astype(np.uint8), np.ones((factor, factor), dtype=np.uint8)).astype(bool)
        edge = find_boundaries(large, mode="inner")
        edge = edge | np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)  # two pixels wide
        rgb[edge & large] = colour
    return rgb

"""Small helpers of the segmentation: 0..1 evidence terms for its confidence, and a fast opening."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at ``zero_at``, 1 at ``one_at``, linear between and clipped outside (either direction)."""
    return float(np.clip((value - zero_at) / (one_at - zero_at), 0.0, 1.0))


def band(value: float, zero_below: float, one_from: float, one_to: float, zero_above: float) -> float:
    """1 inside [one_from, one_to], falling linearly to 0 at ``zero_below`` and ``zero_above``."""
    return min(ramp(value, zero_below, one_from), ramp(value, zero_above, one_to))


def open_by_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary opening by a Euclidean disc of ``radius`` pixels, through two distance transforms.

    Same result as an opening with ``skimage.morphology.disk(radius)``, at a cost that does not grow with the
    radius (the segmentation opens a few dozen masks per slice).
    """
    margin = int(np.ceil(radius)) + 1
    padded = np.pad(mask, margin)  # outside the image counts as background, as in binary_opening
    eroded = ndi.distance_transform_edt(padded) > radius
    if not eroded.any():
        return np.zeros_like(mask, dtype=bool)
    opened = ndi.distance_transform_edt(~eroded) <= radius
    return opened[margin:-margin, margin:-margin]


def ellipse_fit(mask: np.ndarray) -> float:
    """Dice overlap of a mask with the ellipse of the same area and second moments (1 = an exact ellipse).

    A psoas or a lumbar body in cross-section is close to an ellipse (about 0.93-0.98); a mask that took in a
    neighbour (a vessel, a pedicle, a band of disc) or lost part of its structure falls well below.
    """
    rows, columns = np.nonzero(mask)
    if rows.size < 10:
        return 0.0
    centre = np.array([rows.mean(), columns.mean()])
    covariance = np.cov(np.vstack([rows, columns]))
    if not np.all(np.isfinite(covariance)) or np.linalg.det(covariance) <= 0:
        return 0.0
    inverse = np.linalg.inv(covariance)
    grid_rows, grid_columns = np.indices(mask.shape)
    offsets = np.stack([grid_rows - centre[0], grid_columns - centre[1]], axis=-1)
    # A uniform ellipse has covariance (semi-axis^2 / 4) along each axis: inside where d^2 <= 4.
    distance = np.einsum("...i,ij,...j->...", offsets, inverse, offsets)
    ellipse = distance <= 4.0
    return float(2.0 * np.logical_and(ellipse, mask).sum() / (ellipse.sum() + mask.sum()))

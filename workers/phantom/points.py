"""Sample points in the spine frame, and the pixel centres of a slice plane mapped into it cheaply."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.phantom.anatomy import Anatomy
from workers.phantom.stacks import SlicePlane


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


def _linear_weights(knots: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left knot, right knot and fraction for interpolating values at integer knots onto 0..size-1.

    (Gathers rather than a matrix product: BLAS threads cost more than they save on a shared machine.)"""
    positions = np.arange(size, dtype=np.float64)
    right = np.clip(np.searchsorted(knots, positions, side="right"), 1, knots.size - 1)
    left = right - 1
    fraction = ((positions - knots[left]) / (knots[right] - knots[left])).astype(np.float32)
    return left, right, fraction

"""Slice geometry as a scanner prescribes it: planes in patient coordinates (LPS, mm) and stacks of them.

DICOM conventions (PS3.3 C.7.6.2): ImagePositionPatient is the centre of the first transmitted pixel;
ImageOrientationPatient holds the row direction (towards increasing column index) then the column direction
(towards increasing row index); PixelSpacing is (spacing between rows, spacing between columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlicePlane:
    """One image: position of pixel (0, 0), orientation, matrix, pixel spacing and slice thickness."""

    position: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    thickness: float
    group: int = 0  # the stack (slice group) within its series

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def centre(self) -> np.ndarray:
        return (
            self.position
            + self.row_direction * (self.columns - 1) / 2 * self.pixel_spacing[1]
            + self.column_direction * (self.rows - 1) / 2 * self.pixel_spacing[0]
        )

    def pixel_centres(self) -> np.ndarray:
        """LPS points (rows, columns, 3) of the pixel centres."""
        r = np.arange(self.rows)[:, None, None] * self.pixel_spacing[0]
        c = np.arange(self.columns)[None, :, None] * self.pixel_spacing[1]
        return self.position + r * self.column_direction + c * self.row_direction


def _orthonormal(normal: np.ndarray, row_hint: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column directions in the plane of `normal`, the row as close as possible to `row_hint`."""
    normal = normal / np.linalg.norm(normal)
    row = row_hint - np.dot(row_hint, normal) * normal
    row /= np.linalg.norm(row)
    column = np.cross(normal, row)
    return normal, row, column


def stack(
    centre: np.ndarray,
    normal: np.ndarray,
    row_hint: np.ndarray,
    offsets_mm: np.ndarray,
    *,
    matrix: tuple[int, int],
    pixel_mm: float,
    thickness: float,
    group: int = 0,
) -> list[SlicePlane]:
    """Parallel slices centred (in plane) on `centre`, at `offsets_mm` along `normal`, in the order given."""
    normal, row, column = _orthonormal(np.asarray(normal, float), np.asarray(row_hint, float))
    rows, columns = matrix
    planes = []
    for offset in offsets_mm:
        middle = centre + offset * normal
        position = middle - row * (columns - 1) / 2 * pixel_mm - column * (rows - 1) / 2 * pixel_mm
        planes.append(
            SlicePlane(position, row, column, rows, columns, (pixel_mm, pixel_mm), thickness, group)
        )
    return planes


def tilt(vector: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate `vector` about `axis` (Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    angle = np.radians(degrees)
    return (
        vector * np.cos(angle)
        + np.cross(axis, vector) * np.sin(angle)
        + axis * np.dot(axis, vector) * (1 - np.cos(angle))
    )

"""Patient-coordinate geometry of DICOM images (LPS, mm).

Every conversion between pixel indices and patient millimetres goes through here, so the rest of the analysis never
does bare index arithmetic. Conventions follow PS3.3 C.7.6.2.1.1: ImageOrientationPatient holds the direction of a
row (increasing column index) then the direction of a column (increasing row index); ImagePositionPatient is the
centre of the first transmitted pixel; PixelSpacing is (distance between rows, distance between columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Vector = np.ndarray

# Patient axes in LPS: +x left, +y posterior, +z superior (head).
PATIENT_LEFT = np.array([1.0, 0.0, 0.0])
PATIENT_POSTERIOR = np.array([0.0, 1.0, 0.0])
PATIENT_SUPERIOR = np.array([0.0, 0.0, 1.0])


def unit(vector: Sequence[float] | Vector) -> Vector:
    """The vector scaled to length 1; a zero vector is a fault in the header, not something to guess around."""
    array = np.asarray(vector, dtype=float)
    length = float(np.linalg.norm(array))
    if length < 1e-9:
        raise ValueError("zero-length direction vector (ImageOrientationPatient is broken)")
    return array / length


def angle_between_degrees(a: Sequence[float] | Vector, b: Sequence[float] | Vector) -> float:
    """Unsigned angle between two directions, ignoring their sense (a plane's normal may point either way)."""
    cosine = abs(float(np.dot(unit(a), unit(b))))
    return float(np.degrees(np.arccos(min(1.0, cosine))))


@dataclass(frozen=True)
class Plane:
    """A plane in patient space: a point on it and its unit normal."""

    point: Vector
    normal: Vector

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "point_mm": [round(float(v), 2) for v in self.point],
            "normal": [round(float(v), 4) for v in self.normal],
        }


def slice_normal(orientation: Sequence[float]) -> Vector:
    """Unit normal of an image plane from its ImageOrientationPatient (row direction x column direction)."""
    row_direction = unit(orientation[:3])
    column_direction = unit(orientation[3:6])
    return unit(np.cross(row_direction, column_direction))


@dataclass(frozen=True)
class SliceGeometry:
    """Where one 2D image lies in patient space."""

    position: Vector  # centre of pixel (row 0, column 0), mm
    row_direction: Vector  # unit vector along a row: the way the column index grows
    column_direction: Vector  # unit vector down a column: the way the row index grows
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    rows: int
    columns: int

    @property
    def normal(self) -> Vector:
        return unit(np.cross(self.row_direction, self.column_direction))

    def index_to_patient(self, row: float, column: float) -> Vector:
        """Patient position (mm) of a (row, column) pixel index, fractional indices allowed."""
        return (
            self.position
            + column * self.pixel_spacing[1] * self.row_direction
            + row * self.pixel_spacing[0] * self.column_direction
        )

    def patient_to_index(self, point: Sequence[float] | Vector) -> tuple[float, float, float]:
        """(row, column, signed mm out of the plane) of a patient point projected onto this image."""
        offset = np.asarray(point, dtype=float) - self.position
        column = float(np.dot(offset, self.row_direction)) / self.pixel_spacing[1]
        row = float(np.dot(offset, self.column_direction)) / self.pixel_spacing[0]
        return row, column, float(np.dot(offset, self.normal))

    @property
    def centre(self) -> Vector:
        """Patient position of the image centre: what "the slice lies at" means for slice choice."""
        return self.index_to_patient((self.rows - 1) / 2.0, (self.columns - 1) / 2.0)

    @property
    def plane(self) -> Plane:
        return Plane(point=self.centre, normal=self.normal)

    def in_plane_direction(self, direction: Sequence[float] | Vector) -> tuple[float, float]:
        """A patient direction expressed as a unit (row, column) step in index space.

        Gives e.g. which way the patient's left points on the image, for any orientation, including oblique stacks.
        """
        vector = np.asarray(direction, dtype=float)
        step = np.array(
            [
                float(np.dot(vector, self.column_direction)) / self.pixel_spacing[0],
                float(np.dot(vector, self.row_direction)) / self.pixel_spacing[1],
            ]
        )
        length = float(np.linalg.norm(step))
        if length < 1e-9:
            raise ValueError("direction is perpendicular to the image plane")
        return float(step[0] / length), float(step[1] / length)


def slice_geometry(
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    rows: int,
    columns: int,
) -> SliceGeometry:
    """SliceGeometry from the DICOM header values of one image."""
    return SliceGeometry(
        position=np.asarray(position, dtype=float),
        row_direction=unit(orientation[:3]),
        column_direction=unit(orientation[3:6]),
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        rows=int(rows),
        columns=int(columns),
    )


def position_along(point: Sequence[float] | Vector, direction: Sequence[float] | Vector) -> float:
    """Coordinate of a point along a direction (mm): how slices of one stack are ordered, never by SliceLocation."""
    return float(np.dot(np.asarray(point, dtype=float), unit(direction)))


@dataclass(frozen=True)
class VolumeGeometry:
    """A stack of parallel slices: index (slice, row, column) <-> patient mm."""

    first: SliceGeometry
    slice_step: Vector  # patient displacement from one slice to the next, mm

    def index_to_patient(self, slice_index: float, row: float, column: float) -> Vector:
        return self.first.index_to_patient(row, column) + slice_index * self.slice_step

    @property
    def slice_spacing_mm(self) -> float:
        return float(np.linalg.norm(self.slice_step))


def volume_geometry(slices: Sequence[SliceGeometry]) -> VolumeGeometry:
    """Geometry of slices already sorted along their normal; the step is the mean spacing between them."""
    if len(slices) < 2:
        return VolumeGeometry(first=slices[0], slice_step=np.zeros(3))
    step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    return VolumeGeometry(first=slices[0], slice_step=step)

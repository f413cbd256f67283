"""Small DICOM series written with pydicom for tests of series choice and the pipeline's refusals.

Images are 64x64 noise: these series test headers and geometry, not segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def tilted_axial(degrees: float) -> tuple[float, ...]:
    """Axial orientation tilted about the patient's left-right axis (as a per-disc stack is)."""
    angle = np.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))


def write_series(
    folder: Path,
    *,
    study_uid: str,
    frame_of_reference_uid: str,
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float] = AXIAL,
    description: str = "T2 TSE AX",
    echo_time: float | None = 100.0,
    repetition_time: float | None = 4000.0,
    modality: str = "MR",
    body_part: str = "LSPINE",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M"),
    pixel_spacing: Sequence[float] | None = (0.8, 0.8),
    size: int = 64,
    series_uid: str | None = None,
    slice_locations: Sequence[float] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write one single-frame image per position; returns the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for number, position in enumerate(positions, start=1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = modality
        ds.PatientID = "TEST-SYNTHETIC"
        ds.PatientName = "Test^Synthetic"
        ds.PatientBirthDate = "19500101"
        ds.PatientSex = "F"
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC-SYNTHETIC"
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.Manufacturer = "synthetic"
        ds.SeriesDescription = description
        ds.BodyPartExamined = body_part
        ds.ImageType = list(image_type)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        if slice_locations is not None:
            ds.SliceLocation = float(slice_locations[number - 1])
        if pixel_spacing is not None:
            ds.PixelSpacing = [float(v) for v in pixel_spacing]
        if echo_time is not None:
            ds.EchoTime = echo_time
        if repetition_time is not None:
            ds.RepetitionTime = repetition_time
        ds.ScanningSequence = "SE"
        ds.SliceThickness = 4.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 400, (size, size), dtype=np.uint16).tobytes()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_positions(z_values: Sequence[float], size: int = 64, spacing: float = 0.8) -> list[tuple[float, float, float]]:
    """Positions of axial slices centred on x = y = 0 at the given heights (mm)."""
    half = (size - 1) / 2 * spacing
    return [(-half, -half, float(z)) for z in z_values]

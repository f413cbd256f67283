"""Small, fast, deterministic DICOM studies for listener tests and the ingest benchmark.

Not anatomy (the phantom generator does that): just valid MR image instances with realistic headers, in the transfer
syntax asked for, so the network path can be tested and timed. 300 instances of 512x512 take a few seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
# Compressed syntaxes we can encode here: pydicom's own encoders (RLE, JPEG 2000 through pylibjpeg-openjpeg) and
# Pillow for 8-bit JPEG baseline, which pydicom cannot encode.
PYDICOM_ENCODED = (RLELossless, JPEG2000Lossless, JPEG2000)
ENCODABLE_TRANSFER_SYNTAXES = (*UNCOMPRESSED, *PYDICOM_ENCODED, JPEGBaseline8Bit)

UID_PREFIX = "1.2.826.0.1.3680043.10.1457."  # pydicom's test root plus a project number; deterministic per seed


def _uid(*parts: object) -> UID:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(part) for part in parts])


def write_mr_study(
    out_dir: Path,
    *,
    series: int = 2,
    instances_per_series: int = 5,
    rows: int = 64,
    cols: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> list[Path]:
    """Write one MR study (`series` x `instances_per_series` axial slices) under `out_dir/<series>/<n>.dcm`.

    The same seed gives the same UIDs and pixels; a different seed gives a different study."""
    if transfer_syntax not in ENCODABLE_TRANSFER_SYNTAXES:
        raise ValueError(f"cannot encode {transfer_syntax}; choose one of {ENCODABLE_TRANSFER_SYNTAXES}")
    rng = np.random.default_rng(seed)
    study_uid = _uid("study", seed)
    bits = 8 if transfer_syntax == JPEGBaseline8Bit else 16
    paths: list[Path] = []
    for series_index in range(series):
        dataset = _mr_series_template(study_uid, _uid("series", seed, series_index), series_index, rows, cols, bits)
        base = _smooth_image(rng, rows, cols, maximum=200 if bits == 8 else 2000)
        folder = out_dir / f"series{series_index + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, instances_per_series + 1):
            dataset.SOPInstanceUID = _uid("instance", seed, series_index, number)
            dataset.InstanceNumber = number
            dataset.ImagePositionPatient = [-0.5 * cols, -0.5 * rows, 4.0 * number]
            dataset.SliceLocation = 4.0 * number
            noise = rng.integers(0, 16, size=(rows, cols), dtype=np.uint16)
            pixels = (base + noise).astype(np.uint8 if bits == 8 else np.uint16)
            _set_pixels(dataset, pixels, transfer_syntax)
            path = folder / f"{number:04d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def write_secondary_capture(path: Path, *, seed: int = 0) -> Path:
    """A Secondary Capture image: a SOP class the listener does not accept."""
    dataset = _mr_series_template(_uid("sc-study", seed), _uid("sc-series", seed), 0, 16, 16, 16)
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = _uid("sc-instance", seed)
    dataset.Modality = "OT"
    _set_pixels(dataset, np.zeros((16, 16), np.uint16), ExplicitVRLittleEndian)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def data_set_bytes(path: Path) -> bytes:
    """The bytes after the file meta group (PS3.10 7.1): what travels in a C-STORE, whoever wrote the file."""
    content = path.read_bytes()
    if content[128:132] != b"DICM" or content[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path} does not start with a preamble and a (0002,0000) group length")
    group_length = int.from_bytes(content[140:144], "little")
    return content[144 + group_length :]


def _mr_series_template(study_uid: str, series_uid: str, series_index: int, rows: int, cols: int, bits: int) -> Dataset:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.SOPClassUID = MRImageStorage
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = _uid("frame", study_uid)
    dataset.PatientName = "LISTENER^TEST"
    dataset.PatientID = "LISTENER-" + study_uid[-6:]
    dataset.PatientBirthDate = "19500101"
    dataset.PatientSex = "F"
    dataset.StudyDate = "20260101"
    dataset.StudyTime = "120000"
    dataset.AccessionNumber = "ACC" + study_uid[-6:]
    dataset.StudyID = "1"
    dataset.ReferringPhysicianName = ""
    dataset.Modality = "MR"
    dataset.Manufacturer = "PLVI test factory"
    dataset.SeriesNumber = series_index + 1
    dataset.SeriesDescription = f"t2_tse_tra series {series_index + 1}"
    dataset.ScanningSequence = "SE"
    dataset.SequenceVariant = "SK"
    dataset.ScanOptions = ""
    dataset.MRAcquisitionType = "2D"
    dataset.EchoTime = 100.0
    dataset.RepetitionTime = 4000.0
    dataset.EchoTrainLength = 16
    dataset.MagneticFieldStrength = 1.5
    dataset.SliceThickness = 4.0
    dataset.PixelSpacing = [0.7, 0.7]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PositionReferenceIndicator = ""
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = rows
    dataset.Columns = cols
    dataset.BitsAllocated = bits
    dataset.BitsStored = 8 if bits == 8 else 12
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    return dataset


def _smooth_image(rng: np.random.Generator, rows: int, cols: int, *, maximum: int) -> np.ndarray:
    """A bright ellipse on a dark background: compresses like an image rather than like noise."""
    y, x = np.ogrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
    radius = float(rng.uniform(0.6, 0.9))
    inside = (x / radius) ** 2 + (y / (radius * 0.8)) ** 2 < 1.0
    return (inside * maximum * 0.8 + (1 - np.hypot(x, y) / 1.5).clip(0) * maximum * 0.1).astype(np.uint16)


def _set_pixels(dataset: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    if transfer_syntax in PYDICOM_ENCODED:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        lossy = {"j2k_cr": [20]} if transfer_syntax == JPEG2000 else {}
        dataset.compress(transfer_syntax, pixels, generate_instance_uid=False, **lossy)
        if lossy:
            dataset.LossyImageCompression = "01"
    elif transfer_syntax == JPEGBaseline8Bit:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
        dataset.PixelData = encapsulate([buffer.getvalue()])
        dataset["PixelData"].VR = "OB"
        dataset.LossyImageCompression = "01"
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        dataset.PixelData = pixels.tobytes()
        dataset["PixelData"].VR = "OW"
        dataset.file_meta.TransferSyntaxUID = transfer_syntax

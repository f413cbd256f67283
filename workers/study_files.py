"""Read one study from DICOM files or folders: headers of everything first, pixels only of what was chosen.

Reading headers with `stop_before_pixels` keeps a 500-image study well under a second; the analysis then loads the
pixels of the sagittal series and of one axial slice only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from workers.analysis.series import InstanceHeader, SeriesHeader

# Files that sit beside DICOM in exported folders and are not worth a warning.
NON_DICOM_SUFFIXES = {".png", ".jpg", ".jpeg", ".json", ".txt", ".md", ".nii", ".gz", ".npz", ".csv", ".xml", ".html"}


class StudyFilesError(Exception):
    """The paths do not hold one readable study; the message says what to give instead."""


@dataclass
class StudyFiles:
    study_instance_uid: str
    series: list[SeriesHeader]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def _float_or_none(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int_or_none(value: object) -> int | None:
    number = _float_or_none(value)
    return int(number) if number is not None else None


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _files_under(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() not in NON_DICOM_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


def _instance_header(path: Path, dataset: pydicom.Dataset) -> InstanceHeader:
    return InstanceHeader(
        path=path,
        sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        instance_number=_int_or_none(dataset.get("InstanceNumber")),
        position=_floats(dataset.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(dataset.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(dataset.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
        image_type=tuple(str(v) for v in (dataset.get("ImageType") or ())),
        number_of_frames=_int_or_none(dataset.get("NumberOfFrames")) or 1,
        echo_time=_float_or_none(dataset.get("EchoTime")),
        acquisition_number=_int_or_none(dataset.get("AcquisitionNumber")),
        slice_thickness=_float_or_none(dataset.get("SliceThickness")),
    )


def read_study_headers(paths: Iterable[Path]) -> StudyFiles:
    """Headers of every DICOM image under the paths, grouped by series; exactly one study is expected."""
    files, unreadable = _files_under(list(paths))
    by_series: dict[tuple[str, str], list[tuple[Path, pydicom.Dataset]]] = {}
    for path in files:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as error:
            unreadable.append((path, f"{type(error).__name__}: {error}"))
            continue
        if "Rows" not in dataset or "SeriesInstanceUID" not in dataset:
            continue  # SR, presentation states, KOs: not images
        key = (str(dataset.get("StudyInstanceUID", "")), str(dataset.SeriesInstanceUID))
        by_series.setdefault(key, []).append((path, dataset))
    studies = sorted({study for study, _ in by_series})
    if not studies:
        raise StudyFilesError(
            "no readable DICOM images found in the given paths"
            + (f" ({len(unreadable)} unreadable, e.g. {unreadable[0][0]}: {unreadable[0][1]})" if unreadable else "")
            + "; give the files or folder of one MR study"
        )
    if len(studies) > 1:
        raise StudyFilesError(
            f"the paths hold {len(studies)} studies ({', '.join(studies[:3])}); analyse one study at a time"
        )
    series = []
    for (study_uid, series_uid), members in sorted(by_series.items()):
        first = members[0][1]
        series.append(
            SeriesHeader(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                modality=str(first.get("Modality", "")),
                series_description=str(first.get("SeriesDescription", "") or ""),
                body_part=str(first.get("BodyPartExamined", "") or ""),
                echo_time=_float_or_none(first.get("EchoTime")),
                repetition_time=_float_or_none(first.get("RepetitionTime")),
                inversion_time=_float_or_none(first.get("InversionTime")),
                scanning_sequence="\\".join(str(v) for v in _as_list(first.get("ScanningSequence"))),
                frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
                series_number=_int_or_none(first.get("SeriesNumber")),
                instances=tuple(_instance_header(path, dataset) for path, dataset in members),
            )
        )
    return StudyFiles(study_instance_uid=studies[0], series=series, unreadable=unreadable)


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def read_dataset(path: Path) -> pydicom.Dataset:
    """The whole dataset of one file (the reports need the chosen source slice's header)."""
    return pydicom.dcmread(path)


def load_image(instance: InstanceHeader) -> np.ndarray:
    """Pixels of one single-frame image as float32 with the modality rescale applied, checked against its header."""
    dataset = pydicom.dcmread(instance.path)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # a codec missing or broken pixel data: say which file
        raise StudyFilesError(f"cannot decode the pixels of {instance.path}: {error}") from error
    if pixels.ndim != 2 or pixels.shape != (instance.rows, instance.columns):
        raise StudyFilesError(
            f"{instance.path}: pixel array shape {pixels.shape} does not match Rows x Columns "
            f"{instance.rows} x {instance.columns}; only single-frame images are supported"
        )
    slope = _float_or_none(dataset.get("RescaleSlope")) or 1.0
    intercept = _float_or_none(dataset.get("RescaleIntercept")) or 0.0
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def load_volume(instances: Sequence[InstanceHeader]) -> np.ndarray:
    """Pixels of a stack (already sorted along its normal) as a (slice, row, column) float32 array."""
    return np.stack([load_image(instance) for instance in instances])

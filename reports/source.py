"""What the new objects take from the source image, and what a sparse or unusual source still allows.

Images from a PACS are often sparse: a Type 2 attribute (PS3.5 7.4: present, may be empty) is sometimes left out
altogether, and highdicom reads the patient and study attributes unconditionally. Some sources also carry dates,
times or a sex that highdicom refuses (`2023-01-01`, `U`). The new objects copy what the source has, rewrite the
historical ACR-NEMA forms `YYYY.MM.DD` and `HH:MM:SS` into the current ones, and write empty what is missing or
cannot be made valid: never an invented value. Names and identifiers are copied as they are, even when longer than
their VR allows: a PACS matches the objects to the study by them. Which objects a source allows is decided here, so
a result is always reported by its SR even when the source cannot carry a SEG or a key image.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom import Dataset, config
from pydicom.valuerep import TM

from plvi.logs import kv

log = logging.getLogger(__name__)

# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that the new objects copy.
PATIENT_AND_STUDY_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def conforming_date(value: str) -> str:
    """A DA value as YYYYMMDD (from YYYYMMDD or the ACR-NEMA YYYY.MM.DD), or "" when it is no calendar date."""
    value = value.strip()
    if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", value):
        value = value.replace(".", "")
    try:
        return value if re.fullmatch(r"\d{8}", value) and datetime.strptime(value, "%Y%m%d") else ""
    except ValueError:
        return ""


def conforming_time(value: str) -> str:
    """A TM value as HH[MM[SS[.F]]] (also from the ACR-NEMA HH:MM:SS), or "" when it is no time of day."""
    value = value.strip()
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", value):
        value = value.replace(":", "")
    try:
        TM(value, validation_mode=config.RAISE)  # raises on a value that is not a time of day
    except ValueError:
        return ""
    return value


def conforming_sex(value: str) -> str:
    """Patient's Sex is M, F or O (PS3.3 C.7.1.1); anything else, e.g. "U", is written empty."""
    value = value.strip().upper()
    return value if value in ("M", "F", "O") else ""


_CONFORMING: dict[str, Callable[[str], str]] = {
    "PatientBirthDate": conforming_date,
    "StudyDate": conforming_date,
    "StudyTime": conforming_time,
    "PatientSex": conforming_sex,
}


def copyable_source(source: Dataset) -> Dataset:
    """`source` itself when every copied Type 2 attribute is present and valid, else a copy in which the missing
    ones are present and empty and the others are as valid as they can be made without inventing anything.

    The caller's dataset is never changed. Each emptied value is logged by keyword, never by value."""
    replacements: dict[str, str] = {}
    for keyword in PATIENT_AND_STUDY_TYPE_2:
        if keyword not in source:
            replacements[keyword] = ""
        elif keyword in _CONFORMING and not source[keyword].is_empty:
            original = str(source[keyword].value)
            conforming = _CONFORMING[keyword](original)
            if conforming != original:
                replacements[keyword] = conforming
            if not conforming:
                log.warning(kv("source_value_not_copied", keyword=keyword, why="not_valid_for_its_vr",
                               source_sop_instance_uid=source.get("SOPInstanceUID", "")))
    if not replacements:
        return source
    completed = copy.deepcopy(source)
    for keyword, value in replacements.items():
        setattr(completed, keyword, value)
    return completed


def is_multi_frame(source: Dataset) -> bool:
    """A multi-frame image (e.g. Enhanced MR): its geometry lives in functional groups, one per frame."""
    return int(source.get("NumberOfFrames") or 1) > 1


def segmentation_obstacle(source: Dataset) -> str | None:
    """Why no SEG can be placed on `source` (a word for the log), or None when one can.

    The SEG copies the single-frame source's plane geometry; masks of one frame of a multi-frame image would need
    that frame's functional groups instead, which the analysis never produces (it measures single-frame slices)."""
    if is_multi_frame(source):
        return "multi_frame_source"
    for keyword in ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if keyword not in source or source[keyword].is_empty:
            return f"source_without_{keyword}"
    return None


@dataclass(frozen=True)
class DisplayedFrame:
    """The one frame a key image shows, with the in-plane geometry of that frame."""

    pixels: np.ndarray
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float] | None


def key_image_obstacle(source: Dataset, *, with_masks: bool) -> str | None:
    """Why no key image can be drawn from `source` (a word for the log), or None when one can.

    Masks belong to a single-frame slice (the analysis measures no other), so a multi-frame source gets a key image
    only without outlines."""
    if "PixelData" not in source:
        return "source_without_PixelData"
    if source.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        return "source_not_greyscale"  # e.g. an earlier key image (RGB) sent back with the study
    if int(source.get("BitsAllocated") or 0) == 1:
        return "source_is_a_bitmap"  # e.g. an earlier SEG sent back with the study
    if is_multi_frame(source) and with_masks:
        return "masks_on_multi_frame_source"
    if _frame_attribute(source, "PlaneOrientationSequence", "ImageOrientationPatient") is None:
        return "source_without_ImageOrientationPatient"
    return None


def displayed_frame(source: Dataset) -> DisplayedFrame:
    """The source's image, or the middle frame of a multi-frame source, with its orientation and pixel spacing."""
    pixels = source.pixel_array
    frame = 0
    if is_multi_frame(source):
        frame = int(source.NumberOfFrames) // 2
        pixels = pixels[frame]
    if source.get("PhotometricInterpretation") == "MONOCHROME1":  # low values are bright: show it as read
        pixels = pixels.max() - pixels.astype(np.float64)  # in float: a signed range could overflow its type
    orientation = _frame_attribute(source, "PlaneOrientationSequence", "ImageOrientationPatient", frame)
    spacing = _frame_attribute(source, "PixelMeasuresSequence", "PixelSpacing", frame)
    return DisplayedFrame(
        pixels=pixels,
        orientation=tuple(float(value) for value in orientation),  # type: ignore[union-attr]
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
    )


def _frame_attribute(source: Dataset, macro: str, keyword: str, frame: int = 0) -> object | None:
    """A geometry attribute of one frame: top level (classic image), else the frame's or the shared functional group
    (enhanced image, PS3.3 C.7.6.16). None when absent or empty."""
    if source.get(keyword):
        return source.get(keyword)
    groups = [source.get("PerFrameFunctionalGroupsSequence", [])[frame:frame + 1],
              source.get("SharedFunctionalGroupsSequence", [])[:1]]
    for group in (item for items in groups for item in items):
        for item in group.get(macro, [])[:1]:
            if item.get(keyword):
                return item.get(keyword)
    return None

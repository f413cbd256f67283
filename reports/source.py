"""What the new objects take from the source image, and what a sparse or unusual source still allows.

Images from a PACS are often sparse: a Type 2 attribute (PS3.5 7.4: present, may be empty) is sometimes left out
altogether, and highdicom reads the patient and study attributes unconditionally. The new objects copy what the
source has and write the rest empty, never an invented value. Which objects a source allows is decided here, so a
result is always reported by its SR even when the source cannot carry a SEG or a key image.
"""

from __future__ import annotations

import copy

from pydicom import Dataset

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


def copyable_source(source: Dataset) -> Dataset:
    """`source` itself when it has every copied Type 2 attribute, else a copy with the missing ones present and empty.

    The caller's dataset is never changed."""
    missing = [keyword for keyword in PATIENT_AND_STUDY_TYPE_2 if keyword not in source]
    if not missing:
        return source
    completed = copy.deepcopy(source)
    for keyword in missing:
        setattr(completed, keyword, "")
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


def key_image_obstacle(source: Dataset) -> str | None:
    """Why no key image can be drawn from `source` (a word for the log), or None when one can."""
    if "PixelData" not in source:
        return "source_without_pixel_data"
    if is_multi_frame(source):
        return "multi_frame_source"
    if "ImageOrientationPatient" not in source or source["ImageOrientationPatient"].is_empty:
        return "source_without_ImageOrientationPatient"
    return None

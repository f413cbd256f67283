"""DICOM Segmentation of the measured slice: left psoas, right psoas and the L4 vertebral body as three binary
segments whose geometry is copied from the source image, so any viewer overlays them where they were measured."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from reports import codes
from reports.instance import NewInstance


@dataclass(frozen=True)
class Structure:
    """One measured structure: its mask key, the result key of its area, and how DICOM names it."""

    mask_key: str
    area_key: str
    label: str
    property_type: hd.sr.CodedConcept
    anatomic_region: hd.sr.CodedConcept
    laterality: hd.sr.CodedConcept | None
    display_rgb: tuple[int, int, int]


# Segment numbers are the positions in this tuple plus one; the SR refers to segments by these numbers.
STRUCTURES: tuple[Structure, ...] = (
    Structure("psoas_left", "psoas_left_mm2", "Left psoas major", codes.PSOAS_MAJOR_MUSCLE,
              codes.SKELETAL_MUSCLE, codes.LEFT, (255, 64, 64)),
    Structure("psoas_right", "psoas_right_mm2", "Right psoas major", codes.PSOAS_MAJOR_MUSCLE,
              codes.SKELETAL_MUSCLE, codes.RIGHT, (64, 160, 255)),
    Structure("vertebra", "vertebra_mm2", "L4 vertebral body", codes.L4_VERTEBRAL_BODY,
              codes.L4_VERTEBRA, None, (255, 220, 0)),
)


def build_segmentation(
    source: Dataset,
    masks: dict[str, np.ndarray],
    instance: NewInstance,
) -> hd.seg.Segmentation:
    """A BINARY Segmentation of `source` (one single-frame image) with one frame per structure, in segment order.

    Parameters
    ----------
    source:
        The measured slice (highdicom copies its geometry, patient and study).
    masks:
        Boolean arrays of the source's (Rows, Columns) shape under the keys `psoas_left`, `psoas_right`, `vertebra`.
    instance:
        UIDs, algorithm and analysis time of the new object.

    Returns
    -------
    highdicom.seg.Segmentation
        Frame n holds segment n even when a mask is empty (`omit_empty_frames=False`), so segment numbers and
        frame numbers coincide.
    """
    shape = (int(source.Rows), int(source.Columns))
    for structure in STRUCTURES:
        mask = masks.get(structure.mask_key)
        if mask is None or mask.shape != shape or mask.dtype != bool:
            raise ValueError(
                f"masks[{structure.mask_key!r}] must be a bool array of the source's shape {shape}, "
                f"got {None if mask is None else (mask.dtype, mask.shape)}"
            )
    # (frames, rows, columns, segments): one source frame, the last axis in segment-number order.
    pixel_array = np.stack([masks[s.mask_key] for s in STRUCTURES], axis=-1)[np.newaxis].astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=instance.algorithm_name, family=codes.ALGORITHM_FAMILY, version=instance.algorithm_version
    )
    descriptions = []
    for number, structure in enumerate(STRUCTURES, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=structure.label,
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=structure.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[structure.anatomic_region],
            display_color=hd.color.CIELabColor.from_rgb(*structure.display_rgb),
        )
        if structure.laterality is not None:
            # PS3.3 C.8.20.2: laterality of a paired structure modifies the segmented property type, inside its item.
            # Copies: highdicom puts the shared code objects themselves into the dataset.
            property_type = copy.deepcopy(description.SegmentedPropertyTypeCodeSequence[0])
            property_type.SegmentedPropertyTypeModifierCodeSequence = [copy.deepcopy(structure.laterality)]
            description.SegmentedPropertyTypeCodeSequence = [property_type]
        descriptions.append(description)
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=instance.series_instance_uid,
        series_number=9002,
        sop_instance_uid=instance.sop_instance_uid,
        instance_number=1,
        manufacturer=instance.manufacturer,
        manufacturer_model_name=instance.algorithm_name,
        software_versions=instance.algorithm_version,
        device_serial_number="1",
        omit_empty_frames=False,
        content_label="PLVI",
        content_description="Psoas and L4 vertebral body on the PLVI slice",
        series_description="PLVI segmentation",
        coding_schemes=[codes.coding_scheme_identification()],
        **instance.dates(),
    )

"""The SEG: three binary segments on the measured slice that overlay the source exactly (not flipped, not shifted)."""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
import numpy as np
import pytest

from reports.objects import build_result_objects, write_result_objects
from tests.plvi_result_case import dciodvfy, real_slice_case

ORDER = ("psoas_left", "psoas_right", "vertebra")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    source, masks, result = real_slice_case()
    objects = build_result_objects(
        result, masks, source, algorithm_version="0.1.0", instance_set_hash="c" * 64,
        analysed_at=datetime(2026, 12, 1, 18, 0, 0),
    )
    folder = tmp_path_factory.mktemp("seg")
    write_result_objects(objects, folder)
    path = folder / source.StudyInstanceUID / f"{objects.seg.SOPInstanceUID}.dcm"
    return source, masks, path


def patient_point(ds_plane, row: float, column: float) -> np.ndarray:
    """Patient coordinates (LPS, mm) of a pixel centre from a plane's position, orientation and spacing."""
    position, orientation, spacing = ds_plane
    row_direction, column_direction = np.array(orientation[:3]), np.array(orientation[3:])
    return np.array(position) + column * spacing[1] * row_direction + row * spacing[0] * column_direction


def test_each_segment_frame_equals_its_mask(written):
    source, masks, path = written
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    assert seg.pixel_array.shape == (3, source.Rows, source.Columns)
    for frame, key in enumerate(ORDER):
        assert np.array_equal(seg.pixel_array[frame].astype(bool), masks[key]), key
        frame_item = seg.PerFrameFunctionalGroupsSequence[frame]
        assert frame_item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == frame + 1
    by_source = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1, 2, 3]
    )
    assert np.array_equal(by_source[0].astype(bool), np.stack([masks[k] for k in ORDER], axis=-1))


def test_segment_geometry_is_the_source_plane(written):
    source, _, path = written
    seg = hd.seg.segread(path)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in source.ImageOrientationPatient],
    )
    assert np.allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing], [float(v) for v in source.PixelSpacing]
    )
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-4)
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)


def test_left_psoas_segment_lies_on_the_patients_left(written):
    """Anatomy as a flip check: in LPS, +x is the patient's left, so the left psoas has the larger x."""
    _, _, path = written
    seg = hd.seg.segread(path)
    shared = seg.SharedFunctionalGroupsSequence[0]
    plane = (
        [float(v) for v in seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient],
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
    )
    centres = {}
    for frame, key in enumerate(ORDER):
        rows, columns = np.nonzero(seg.pixel_array[frame])
        centres[key] = patient_point(plane, rows.mean(), columns.mean())
    assert centres["psoas_left"][0] > centres["vertebra"][0] > centres["psoas_right"][0]


def test_segments_are_described_with_codes_and_laterality(written):
    _, _, path = written
    seg = hd.seg.segread(path)
    described = []
    for item in seg.SegmentSequence:
        property_type = item.SegmentedPropertyTypeCodeSequence[0]
        modifier = property_type.get("SegmentedPropertyTypeModifierCodeSequence")
        described.append((
            int(item.SegmentNumber), item.SegmentLabel, property_type.CodeMeaning,
            modifier[0].CodeMeaning if modifier else None, item.SegmentAlgorithmType,
        ))
    assert described == [
        (1, "Left psoas major", "Psoas major muscle", "Left", "AUTOMATIC"),
        (2, "Right psoas major", "Psoas major muscle", "Right", "AUTOMATIC"),
        (3, "L4 vertebral body", "Structure of body of fourth lumbar vertebra", None, "AUTOMATIC"),
    ]


def test_seg_passes_dciodvfy(written):
    _, _, path = written
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == []

"""The key image: the measured slice with outlines and numbers burned in, in the source study, valid per dciodvfy."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pydicom
import pytest
from scipy.ndimage import binary_erosion
from skimage.segmentation import find_boundaries

from reports.keyimage import patient_orientation
from reports.objects import build_result_objects, write_result_objects
from reports.seg import STRUCTURES
from tests.plvi_result_case import dciodvfy, not_measurable, real_slice_case

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "ReferringPhysicianName",
)


def build(result, masks, source):
    return build_result_objects(
        result, masks, source, algorithm_version="0.1.0", instance_set_hash="d" * 64,
        analysed_at=datetime(2026, 12, 1, 18, 0, 0),
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    source, masks, result = real_slice_case()
    objects = build(result, masks, source)
    folder = tmp_path_factory.mktemp("key")
    write_result_objects(objects, folder)
    path = folder / source.StudyInstanceUID / f"{objects.key_image.SOPInstanceUID}.dcm"
    return source, masks, result, objects, pydicom.dcmread(path), path


def test_key_image_keeps_the_source_patient_and_study_in_its_own_series(written):
    source, _, _, objects, key, _ = written
    assert key.SOPClassUID == SECONDARY_CAPTURE
    for keyword in PATIENT_AND_STUDY:
        assert key.get(keyword) == source.get(keyword), keyword
    series = {key.SeriesInstanceUID, objects.sr.SeriesInstanceUID, objects.seg.SeriesInstanceUID,
              source.SeriesInstanceUID}
    assert len(series) == 4


def test_outlines_are_burned_in_at_each_mask_edge_in_its_colour(written):
    source, masks, _, _, key, _ = written
    pixels = key.pixel_array
    factor = key.Rows // source.Rows
    assert (key.Rows, key.Columns) == (source.Rows * factor, source.Columns * factor) and factor >= 2
    for structure in STRUCTURES:
        large = np.kron(masks[structure.mask_key], np.ones((factor, factor), dtype=bool))
        edge = find_boundaries(large, mode="inner")
        coloured = np.all(pixels[edge] == structure.display_rgb, axis=-1)
        assert coloured.mean() > 0.95, structure.mask_key
        inside = pixels[binary_erosion(large, iterations=4)]  # away from the two-pixel outline
        assert len(inside) > 0
        assert np.all(inside[:, 0] == inside[:, 1]) and np.all(inside[:, 1] == inside[:, 2]), "anatomy stays grey"


def test_numbers_are_burned_in_and_repeated_in_the_comments(written):
    _, _, result, _, key, _ = written
    assert key.BurnedInAnnotation == "YES"
    assert f"PLVI {result['plvi']:.2f} (cut-off 0.79)" in key.ImageComments
    assert f"L psoas {result['psoas_left_mm2']:.0f} mm2" in key.ImageComments
    band = key.pixel_array[: key.Rows // 8, : key.Columns // 2]
    assert np.count_nonzero(np.all(band == 255, axis=-1)) > 200  # white text on the top-left band


def test_key_image_passes_dciodvfy(written):
    *_, path = written
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == []


def test_not_measurable_key_image_says_so_without_outlines(tmp_path):
    source, _, result = real_slice_case()
    objects = build(not_measurable(result), {}, source)
    key = objects.key_image
    assert "NOT MEASURABLE: The axial stack does not reach" in key.ImageComments
    pixels = key.pixel_array
    for structure in STRUCTURES:
        assert not np.any(np.all(pixels == structure.display_rgb, axis=-1)), structure.mask_key
    (path,) = [p for p in write_result_objects(objects, tmp_path) if p.stem == key.SOPInstanceUID]
    errors, warnings = dciodvfy(path)
    assert errors == [] and warnings == []


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], ("L", "P")),  # the usual axial: patient's right on the image left
        ([-1, 0, 0, 0, 1, 0], ("R", "P")),  # mirrored axial
        ([0.9848, 0, -0.1736, 0, 1, 0], ("L", "P")),  # tilted 10 degrees, still axial
        ([0, 1, 0, 0, 0, -1], ("P", "F")),  # sagittal
    ],
)
def test_side_markers_follow_image_orientation_patient(orientation, expected):
    source = pydicom.Dataset()
    source.ImageOrientationPatient = orientation
    assert patient_orientation(source) == expected

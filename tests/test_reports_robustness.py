"""Sources as a PACS sends them: sparse headers, odd pixel formats, compressed, multi-frame, CT. Every study that was
screened gets its SR, and every object built passes dciodvfy; nothing about the patient is invented."""

from __future__ import annotations

import copy
import logging
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from reports import codes
from reports.keyimage import patient_orientation, render_key_image, summary_lines
from reports.objects import build_result_objects, write_result_objects
from reports.source import PATIENT_AND_STUDY_TYPE_2
from tests.plvi_result_case import CASE, dciodvfy, not_measurable, real_slice_case
from tests.real_data import REAL_DATA
from workers.pipeline import analyze_paths
from workers.study_files import read_dataset

REAL_CASES = sorted(path.name for path in REAL_DATA.glob("*") if (path / "dicom").is_dir())


@pytest.fixture(scope="module")
def case():
    return real_slice_case()


def build(result, masks, source):
    return build_result_objects(
        result, masks, source, algorithm_version="0.1.0", instance_set_hash="f" * 64,
        analysed_at=datetime(2026, 12, 1, 19, 0, 0),
    )


def errors_of(objects, folder: Path) -> dict[str, list[str]]:
    """dciodvfy's errors per object kind (SR, SEG, OT), written as the sender would."""
    return {pydicom.dcmread(path).Modality: dciodvfy(path)[0] for path in write_result_objects(objects, folder)}


def as_spooled(dataset: pydicom.Dataset, folder: Path) -> pydicom.Dataset:
    """The dataset as the worker reads it: written to a Part 10 file and read back."""
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def with_pixels(source: pydicom.Dataset, pixels: np.ndarray, photometric: str, bits_stored: int) -> pydicom.Dataset:
    variant = copy.deepcopy(source)
    variant.set_pixel_data(pixels, photometric, bits_stored)
    return variant


def test_type_2_attributes_the_source_lacks_are_written_empty_in_every_object(case, tmp_path):
    source, masks, result = case
    sparse = copy.deepcopy(source)
    for keyword in PATIENT_AND_STUDY_TYPE_2:
        del sparse[keyword]
    objects = build(result, masks, sparse)
    assert objects.seg is not None and objects.key_image is not None
    for dataset in objects.datasets():
        for keyword in PATIENT_AND_STUDY_TYPE_2:
            assert keyword in dataset and dataset[keyword].is_empty, (dataset.Modality, keyword)
    assert all(keyword not in sparse for keyword in PATIENT_AND_STUDY_TYPE_2)  # the caller's source is untouched
    assert errors_of(objects, tmp_path) == {"SR": [], "SEG": [], "OT": []}


def test_patient_and_study_values_the_source_has_are_copied_not_replaced(case):
    source, masks, result = case
    partial = copy.deepcopy(source)
    del partial.PatientBirthDate, partial.AccessionNumber
    partial.PatientSex = "F"
    for dataset in build(result, masks, partial).datasets():
        copied = (dataset.PatientID, dataset.PatientName, dataset.PatientSex)
        assert copied == (source.PatientID, source.PatientName, "F")
        assert dataset["PatientBirthDate"].is_empty and dataset["AccessionNumber"].is_empty


@pytest.mark.parametrize(("keyword", "value", "written"), [
    ("StudyDate", "2023.01.01", "20230101"),  # ACR-NEMA date: the same date, in today's form
    ("StudyTime", "10:10:10", "101010"),  # ACR-NEMA time
    ("StudyDate", "2023-01-01", ""),  # not a DA value
    ("PatientBirthDate", "19500000", ""),  # no calendar date
    ("StudyTime", "256070", ""),  # no time of day
    ("PatientSex", "U", ""),  # not M, F or O
    ("PatientSex", "f", "F"),
])
def test_dates_times_and_sex_are_made_valid_or_written_empty_never_guessed(case, tmp_path, caplog, keyword, value,
                                                                          written):
    source, masks, result = case
    odd = copy.deepcopy(source)
    setattr(odd, keyword, value)
    with caplog.at_level(logging.WARNING, logger="reports.source"):
        objects = build(result, masks, as_spooled(odd, tmp_path))
    for dataset in objects.datasets():
        assert str(dataset[keyword].value or "") == written, dataset.Modality
    ours = " ".join(record.getMessage() for record in caplog.records if record.name == "reports.source")
    assert (f"source_value_not_copied keyword={keyword}" in ours) == (written == "")
    assert value not in ours  # the log names the attribute, never the patient's value
    assert errors_of(objects, tmp_path / "objects") == {"SR": [], "SEG": [], "OT": []}


def test_source_without_pixel_spacing_is_reported_not_measurable_with_a_key_image(case, tmp_path):
    source, _, result = case
    unspaced = copy.deepcopy(source)
    del unspaced.PixelSpacing
    unmeasured = not_measurable(result) | {
        "reason": "no_pixel_spacing",
        "reason_text": "The axial images carry no PixelSpacing, so areas in mm2 cannot be given.",
    }
    objects = build(unmeasured, {}, unspaced)
    assert objects.seg is None and objects.key_image is not None
    assert "PixelSpacing" not in objects.key_image
    assert errors_of(objects, tmp_path) == {"SR": [], "OT": []}


@pytest.mark.parametrize("variant", ["monochrome1", "signed_16_bit", "8_bit", "rle", "jpeg_2000"])
def test_pixel_formats_give_sr_seg_and_key_image_that_pass_dciodvfy(case, tmp_path, variant):
    source, masks, result = case
    pixels = source.pixel_array
    if variant == "monochrome1":
        changed = with_pixels(source, pixels, "MONOCHROME1", int(source.BitsStored))
    elif variant == "signed_16_bit":
        changed = with_pixels(source, pixels.astype(np.int16) - 1024, "MONOCHROME2", 16)
    elif variant == "8_bit":
        changed = with_pixels(source, (pixels * (255.0 / pixels.max())).astype(np.uint8), "MONOCHROME2", 8)
    else:
        changed = copy.deepcopy(source)
        changed.compress(RLELossless if variant == "rle" else JPEG2000Lossless)
    spooled = as_spooled(changed, tmp_path)
    objects = build(result, masks, spooled)
    assert objects.seg is not None and objects.key_image is not None
    assert errors_of(objects, tmp_path / "objects") == {"SR": [], "SEG": [], "OT": []}


def test_monochrome1_key_image_shows_low_values_bright(case):
    source, masks, result = case
    inverted = with_pixels(source, source.pixel_array, "MONOCHROME1", int(source.BitsStored))
    background = (slice(-40, -8), slice(-60, -30))  # air below the patient, clear of text and side markers
    normal = build(result, masks, source).key_image.pixel_array[background]
    shown = build(result, masks, inverted).key_image.pixel_array[background]
    assert normal.mean() < 40 and shown.mean() > 215


@pytest.mark.parametrize("missing", ["ImageOrientationPatient", "PixelData"])
def test_source_that_cannot_carry_a_key_image_still_gets_its_sr_and_the_log_says_why(case, tmp_path, caplog, missing):
    source, _, result = case
    lacking = copy.deepcopy(source)
    del lacking[missing]
    with caplog.at_level(logging.INFO, logger="reports.objects"):
        objects = build(not_measurable(result), {}, lacking)
    assert objects.key_image is None and objects.seg is None
    assert f"result_object_skipped kind=keyimage why=source_without_{missing}" in caplog.text
    assert errors_of(objects, tmp_path) == {"SR": []}


def test_objects_of_an_earlier_analysis_as_the_only_image_of_the_study_still_give_an_sr(case, tmp_path, caplog):
    source, masks, result = case
    earlier = write_result_objects(build(result, masks, source), tmp_path / "earlier")
    why = {}
    for path in earlier:
        previous = pydicom.dcmread(path)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="reports.objects"):
            objects = build(not_measurable(result), {}, previous)
        assert objects.seg is None and objects.key_image is None
        assert errors_of(objects, tmp_path / previous.Modality) == {"SR": []}
        why[previous.Modality] = caplog.text.split("why=")[1].split()[0]
    assert why == {"SR": "source_without_PixelData", "SEG": "source_is_a_bitmap", "OT": "source_not_greyscale"}


def enhanced(paths: list[Path], folder: Path) -> pydicom.Dataset:
    """These images as one Legacy Converted Enhanced MR image (geometry in functional groups), read back."""
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(path) for path in paths], series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1,
    )
    return as_spooled(image, folder)


@pytest.fixture(scope="module")
def multi_frame(tmp_path_factory):
    """The whole axial series as one multi-frame image."""
    return enhanced(sorted((CASE / "dicom").glob("*.dcm")), tmp_path_factory.mktemp("multi-frame"))


def test_enhanced_image_of_one_frame_gets_a_key_image_from_its_functional_groups(case, tmp_path):
    _, _, result = case
    single = enhanced([CASE / "dicom" / "IM-0001-0005.dcm"], tmp_path)
    assert int(single.NumberOfFrames) == 1 and "ImageOrientationPatient" not in single
    objects = build(not_measurable(result), {}, single)
    assert objects.key_image is not None and "PixelSpacing" in objects.key_image
    assert errors_of(objects, tmp_path / "objects") == {"SR": [], "OT": []}


def test_multi_frame_source_gets_its_sr_and_a_key_image_of_its_middle_frame(case, multi_frame, tmp_path):
    _, _, result = case
    objects = build(not_measurable(result), {}, multi_frame)
    assert objects.seg is None and objects.key_image is not None
    assert objects.sr.StudyInstanceUID == objects.key_image.StudyInstanceUID == multi_frame.StudyInstanceUID
    frame = multi_frame.PerFrameFunctionalGroupsSequence[int(multi_frame.NumberOfFrames) // 2]
    position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    middle = next(ds for ds in map(pydicom.dcmread, sorted((CASE / "dicom").glob("*.dcm")))
                  if [float(v) for v in ds.ImagePositionPatient] == position)
    orientation = patient_orientation(middle)
    lines = summary_lines(not_measurable(result), "PLVI screening", "0.1.0")
    assert np.array_equal(objects.key_image.pixel_array, render_key_image(middle.pixel_array, {}, lines, orientation))
    factor = objects.key_image.Rows // middle.Rows
    assert [float(v) * factor for v in objects.key_image.PixelSpacing] == pytest.approx(
        [float(v) for v in middle.PixelSpacing])
    assert tuple(objects.key_image.PatientOrientation) == orientation
    assert errors_of(objects, tmp_path) == {"SR": [], "OT": []}


def test_masks_on_a_multi_frame_source_keep_their_areas_in_the_sr_and_log_the_missing_seg(case, multi_frame,
                                                                                            tmp_path, caplog):
    _, masks, result = case
    measured = result | {"slice": result["slice"] | {"sop_instance_uid": str(multi_frame.SOPInstanceUID)}}
    with caplog.at_level(logging.INFO, logger="reports.objects"):
        objects = build(measured, masks, multi_frame)
    assert objects.seg is None and objects.key_image is None
    assert "result_object_skipped kind=seg why=multi_frame_source" in caplog.text
    assert "result_object_skipped kind=keyimage why=masks_on_multi_frame_source" in caplog.text
    paths = write_result_objects(objects, tmp_path)
    (sr_path,) = [path for path in paths if path.stem == objects.sr.SOPInstanceUID]
    groups = hd.sr.srread(sr_path).content.get_image_measurement_groups()
    areas = sorted(m.value for group in groups for m in group.get_measurements() if m.name == codes.AREA)
    assert areas == sorted([result["psoas_left_mm2"], result["psoas_right_mm2"], result["vertebra_mm2"]])
    assert dciodvfy(sr_path)[0] == []


@pytest.mark.skipif(not REAL_CASES, reason=f"no real cases in {REAL_DATA}")
@pytest.mark.parametrize("name", REAL_CASES)
def test_every_real_case_is_analysed_and_reported_with_valid_objects(name, tmp_path):
    analysis = analyze_paths([REAL_DATA / name / "dicom"], cutoff=0.79)
    source_path = analysis.source_path or analysis.study_image_path
    objects = build_result_objects(
        analysis.result, analysis.masks, read_dataset(source_path), algorithm_version="0.1.0",
        instance_set_hash="0" * 64, analysed_at=datetime(2026, 12, 1, 19, 0, 0),
    )
    errors = errors_of(objects, tmp_path)
    assert errors["SR"] == []
    assert all(found == [] for found in errors.values()), errors

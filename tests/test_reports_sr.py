"""The TID 1500 SR: each number readable by highdicom with its unit, in the source study, valid per dciodvfy."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from reports import codes
from reports.objects import build_result_objects, write_named_files, write_result_objects
from tests.plvi_result_case import dciodvfy, not_measurable, real_slice_case

ANALYSED_AT = datetime(2026, 12, 1, 18, 30, 5)


@pytest.fixture(scope="module")
def case():
    return real_slice_case()


def build(result, masks, source, **overrides):
    options = dict(algorithm_version="0.1.0", instance_set_hash="a" * 64, analysed_at=ANALYSED_AT) | overrides
    return build_result_objects(result, masks, source, **options)


def read_sr(objects, tmp_path: Path) -> hd.sr.Comprehensive3DSR:
    paths = write_result_objects(objects, tmp_path)
    return hd.sr.srread(next(p for p in paths if p.stem == objects.sr.SOPInstanceUID))


def test_each_area_reads_back_with_its_value_unit_and_segment(case, tmp_path):
    source, masks, result = case
    objects = build(result, masks, source)
    report = read_sr(objects, tmp_path).content
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == 3
    expected = {
        ("Psoas major muscle", "Left"): (result["psoas_left_mm2"], 1),
        ("Psoas major muscle", "Right"): (result["psoas_right_mm2"], 2),
        ("Structure of body of fourth lumbar vertebra", None): (result["vertebra_mm2"], 3),
    }
    seen = {}
    for group in groups:
        site = group.finding_sites[0]
        laterality = site.laterality.meaning if site.laterality is not None else None
        (area,) = group.get_measurements()
        assert area.name == codes.AREA
        assert area.unit.value == "mm2" and area.unit.scheme_designator == "UCUM"
        reference = group.referenced_segmentation_frame
        assert reference.referenced_sop_instance_uid == objects.seg.SOPInstanceUID
        assert reference.source_image_for_segmentation.referenced_sop_instance_uid == source.SOPInstanceUID
        seen[(group.finding_type.meaning, laterality)] = (area.value, *reference.referenced_segment_numbers)
    assert seen == expected


def test_plvi_cutoff_flag_and_status_read_back(case, tmp_path):
    source, masks, result = case
    report = read_sr(build(result, masks, source), tmp_path).content
    (outcome,) = report.get_image_measurement_groups()
    numbers = {m.name.value: (m.value, m.unit.value) for m in outcome.get_measurements()}
    assert numbers == {"PLVI": (result["plvi"], "{ratio}"), "PLVI-CUTOFF": (0.79, "{ratio}")}
    evaluations = {q.name.value: q.value for q in outcome.get_qualitative_evaluations()}
    assert evaluations["LOW-PSOAS"] == (codes.YES if result["low_psoas_mass"] else codes.NO)
    assert evaluations["STATUS"].value == "ok"
    assert "STATUS-REASON" not in evaluations


def test_low_psoas_mass_is_yes_when_plvi_is_below_the_cutoff(case, tmp_path):
    source, masks, result = case
    flagged = result | {"cutoff": result["plvi"] + 0.2, "low_psoas_mass": True}
    (outcome,) = read_sr(build(flagged, masks, source), tmp_path).content.get_image_measurement_groups()
    evaluations = {q.name.value: q.value for q in outcome.get_qualitative_evaluations()}
    assert evaluations["LOW-PSOAS"] == codes.YES


def test_not_measurable_result_still_produces_an_sr_saying_why_and_no_seg(case, tmp_path):
    source, _, result = case
    unmeasured = not_measurable(result)
    objects = build(unmeasured, {}, source)
    assert objects.seg is None
    report = read_sr(objects, tmp_path).content
    assert report.get_planar_roi_measurement_groups() == []
    (outcome,) = report.get_image_measurement_groups()
    assert [m.name.value for m in outcome.get_measurements()] == ["PLVI-CUTOFF"]
    evaluations = {q.name.value: q.value for q in outcome.get_qualitative_evaluations()}
    assert evaluations["STATUS"].value == "not_measurable"
    assert evaluations["STATUS-REASON"].value == "l4_not_covered"
    assert evaluations["STATUS-REASON"].meaning == unmeasured["reason_text"]
    assert "LOW-PSOAS" not in evaluations
    errors, warnings = dciodvfy(tmp_path / source.StudyInstanceUID / f"{objects.sr.SOPInstanceUID}.dcm")
    assert errors == [] and warnings == []


def test_sr_is_in_the_source_study_with_the_algorithm_named(case):
    source, masks, result = case
    sr = build(result, masks, source).sr
    assert (sr.PatientID, sr.PatientName, sr.StudyInstanceUID) == (
        source.PatientID, source.PatientName, source.StudyInstanceUID)
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    text = str(sr)
    assert "PLVI screening" in text and "0.1.0" in text  # algorithm name and version (TID 4019)


def test_sr_passes_dciodvfy(case, tmp_path):
    source, masks, result = case
    objects = build(result, masks, source)
    write_result_objects(objects, tmp_path)
    errors, warnings = dciodvfy(tmp_path / source.StudyInstanceUID / f"{objects.sr.SOPInstanceUID}.dcm")
    assert errors == [] and warnings == []


def test_a_retry_writes_byte_identical_objects(case, tmp_path):
    source, masks, result = case
    first = write_result_objects(build(result, masks, source), tmp_path / "first")
    second = write_result_objects(build(result, masks, source), tmp_path / "second")
    assert [p.name for p in first] == [p.name for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))


def test_a_reanalysis_gets_new_instance_and_series_uids(case):
    source, masks, result = case
    old = build(result, masks, source)
    new = build(result, masks, source, instance_set_hash="b" * 64)
    upgraded = build(result, masks, source, algorithm_version="0.2.0")
    for objects in (new, upgraded):
        for before, after in zip(old.datasets(), objects.datasets(), strict=True):
            assert after.SOPInstanceUID != before.SOPInstanceUID
            assert after.SeriesInstanceUID != before.SeriesInstanceUID
            assert after.StudyInstanceUID == before.StudyInstanceUID


def test_needs_review_keeps_the_numbers_and_says_why(case, tmp_path):
    source, masks, result = case
    review = result | {"status": "needs_review", "reason": "asymmetric_psoas",
                       "reason_text": "Left and right psoas areas differ by more than expected."}
    report = read_sr(build(review, masks, source), tmp_path).content
    assert len(report.get_planar_roi_measurement_groups()) == 3
    (outcome,) = report.get_image_measurement_groups()
    evaluations = {q.name.value: q.value for q in outcome.get_qualitative_evaluations()}
    assert evaluations["STATUS"].value == "needs_review"
    assert (evaluations["STATUS-REASON"].value, evaluations["STATUS-REASON"].meaning) == (
        "asymmetric_psoas", review["reason_text"])


def test_analyze_out_names_the_files_sr_seg_and_keyimage(case, tmp_path):
    source, masks, result = case
    paths = write_named_files(build(result, masks, source), tmp_path)
    assert [p.name for p in paths] == ["sr.dcm", "seg.dcm", "keyimage.dcm"]
    assert [pydicom.dcmread(p).Modality for p in paths] == ["SR", "SEG", "OT"]
    unmeasured = write_named_files(build(not_measurable(result), {}, source), tmp_path / "unmeasured")
    assert [p.name for p in unmeasured] == ["sr.dcm", "keyimage.dcm"]


def test_areas_without_masks_are_reported_without_a_region(case, tmp_path):
    source, _, result = case
    objects = build(result, {}, source)
    assert objects.seg is None
    report = read_sr(objects, tmp_path).content
    assert report.get_planar_roi_measurement_groups() == []
    groups = report.get_image_measurement_groups()
    areas = sorted(m.value for g in groups for m in g.get_measurements() if m.name == codes.AREA)
    assert areas == sorted([result["psoas_left_mm2"], result["psoas_right_mm2"], result["vertebra_mm2"]])
    errors, warnings = dciodvfy(tmp_path / source.StudyInstanceUID / f"{objects.sr.SOPInstanceUID}.dcm")
    assert errors == [] and warnings == []

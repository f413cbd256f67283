"""The phantom generator: valid vendor-like DICOM, exact geometry, truth that agrees with the images, options honoured."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from workers.phantom import PhantomOptions, PhantomTruth, generate_study

DCIODVFY = shutil.which("dciodvfy")


def _read_series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        series[ds.SeriesInstanceUID].append(ds)
    return series


def _role(truth: PhantomTruth, series_uid: str) -> str:
    return next(s.role for s in truth.series if s.series_instance_uid == series_uid)


def _axial(truth: PhantomTruth, folder: Path) -> list[pydicom.Dataset]:
    return [ds for uid, datasets in _read_series(folder).items() if _role(truth, uid) == "axial_t2" for ds in datasets]


def _normal(ds: pydicom.Dataset) -> np.ndarray:
    orientation = np.array(ds.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def _distance_to_endplate(ds: pydicom.Dataset, truth: PhantomTruth) -> float:
    """Where the slice plane meets the endplate's normal line through its centre: signed distance (mm)."""
    point = np.array(truth.l4_upper_endplate_point_mm)
    normal = np.array(truth.l4_upper_endplate_normal)
    slice_normal = _normal(ds)
    position = np.array(ds.ImagePositionPatient, dtype=float)
    return float(np.dot(position - point, slice_normal) / np.dot(normal, slice_normal))


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def default_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[PhantomTruth, Path]:
    folder = tmp_path_factory.mktemp("default")
    return generate_study(11, folder, PhantomOptions(axial_layout="stack", vendor="siemens")), folder


@pytest.fixture(scope="module")
def per_disc_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[PhantomTruth, Path]:
    folder = tmp_path_factory.mktemp("per-disc")
    options = PhantomOptions(
        hard=True,
        axial_layout="per_disc",
        axial_series_per_stack=False,
        sagittal=None,
        pixel_spacing=False,
        localizer=False,
        vendor="ge",
    )
    return generate_study(12, folder, options), folder


@pytest.fixture(scope="module")
def uncovered_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[PhantomTruth, Path]:
    folder = tmp_path_factory.mktemp("uncovered")
    options = PhantomOptions(
        cover_l4=False,
        sagittal="t1",
        localizer=False,
        lumbar_vertebrae=6,
        vertebra_condition="cemented",
        vendor="ge",
    )
    return generate_study(13, folder, options), folder


@pytest.fixture(scope="module")
def hard_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[PhantomTruth, Path]:
    folder = tmp_path_factory.mktemp("hard")
    options = PhantomOptions(
        hard=True, vendor="philips", pixel_spacing=True, cover_l4=True, axial_layout="stack", derived_series=True
    )
    return generate_study(14, folder, options), folder


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is needed: apt-get install dicom3tools")
def test_every_written_file_passes_dciodvfy(default_study, uncovered_study, hard_study) -> None:
    for truth, folder in (default_study, uncovered_study, hard_study):
        for path in sorted(folder.rglob("*.dcm")):
            assert _dciodvfy_errors(path) == [], path


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is needed: apt-get install dicom3tools")
def test_missing_pixel_spacing_is_the_only_error_when_asked_for(per_disc_study) -> None:
    truth, folder = per_disc_study
    for ds in _axial(truth, folder):
        assert "PixelSpacing" not in ds
    path = next(folder.rglob("*.dcm"))
    assert _dciodvfy_errors(path) == [
        "Error - Missing attribute Type 1 Required Element=<PixelSpacing> Module=<ImagePlane>"
    ]


def test_headers_are_vendor_like_and_say_what_each_series_is(default_study, uncovered_study, hard_study) -> None:
    for truth, folder in (default_study, uncovered_study, hard_study):
        for uid, datasets in _read_series(folder).items():
            role = _role(truth, uid)
            ds = datasets[0]
            assert ds.SOPClassUID == pydicom.uid.MRImageStorage
            assert ds.Modality == "MR" and ds.Manufacturer and ds.SeriesDescription
            assert ds.Manufacturer == truth.vendor
            if role in ("axial_t2", "sagittal_t2"):
                assert float(ds.EchoTime) > 80 and float(ds.RepetitionTime) > 2500
                assert "SE" in ds.ScanningSequence
            if role == "sagittal_t1":
                assert float(ds.EchoTime) < 20 and float(ds.RepetitionTime) < 800
            if role == "localizer":
                assert len({tuple(d.ImageOrientationPatient) for d in datasets}) == 3
            if role.startswith("sagittal"):
                assert abs(_normal(ds)[0]) > 0.9


def test_one_study_one_frame_of_reference_and_unique_instances(default_study) -> None:
    truth, folder = default_study
    datasets = [ds for series in _read_series(folder).values() for ds in series]
    assert {ds.StudyInstanceUID for ds in datasets} == {truth.study_instance_uid}
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert {len(series) for series in _read_series(folder).values()} >= {3}


def test_axial_stack_geometry_is_consistent(default_study) -> None:
    truth, folder = default_study
    axial = sorted(_axial(truth, folder), key=lambda ds: int(ds.InstanceNumber))
    assert len(axial) == len(truth.slices) >= 20
    normal = _normal(axial[0])
    orientation = np.array(axial[0].ImageOrientationPatient, dtype=float)
    assert abs(np.linalg.norm(orientation[:3]) - 1) < 1e-5 and abs(np.linalg.norm(orientation[3:]) - 1) < 1e-5
    assert abs(np.dot(orientation[:3], orientation[3:])) < 1e-5
    assert normal[2] > np.cos(np.radians(20)), "an axial stack tilted by at most 20 degrees"
    positions = np.array([np.array(ds.ImagePositionPatient, dtype=float) for ds in axial])
    along = positions @ normal
    steps = np.diff(along)
    assert np.allclose(np.abs(steps), float(axial[0].SpacingBetweenSlices), atol=1e-3)
    assert np.all(steps > 0) or np.all(steps < 0)
    in_plane = positions - np.outer(along, normal)
    assert np.allclose(in_plane, in_plane[0], atol=1e-3), "the slices of one stack are aligned"
    for ds in axial:
        assert float(ds.SliceThickness) == pytest.approx(4.0)
        assert np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), orientation, atol=1e-6)


def _slab_top_above_endplate(ds: pydicom.Dataset, truth: PhantomTruth) -> float:
    """How far the top of the slice's slab reaches above the L4 endplate surface (rim, and the dished centre)."""
    normal = np.array(truth.l4_upper_endplate_normal)
    slice_normal = _normal(ds)
    top = np.array(ds.ImagePositionPatient, dtype=float) + slice_normal * float(ds.SliceThickness) / 2
    rim = np.array(truth.l4_endplate_rim_mm)
    centre = np.array(truth.l4_upper_endplate_point_mm)
    cosine = np.dot(normal, slice_normal)
    above_rim = ((top - rim) @ slice_normal) / cosine
    above_centre = np.dot(top - centre, slice_normal) / cosine + truth.endplate_concavity_mm
    return float(max(above_rim.max(), above_centre))


def test_reference_slice_is_the_first_whose_slab_lies_wholly_below_the_l4_endplate(default_study) -> None:
    truth, folder = default_study
    by_uid = {ds.SOPInstanceUID: ds for ds in _axial(truth, folder)}
    reference = by_uid[truth.reference_sop_instance_uid]
    distance = _distance_to_endplate(reference, truth)
    assert -truth.l4_body_height_mm / 2 <= distance <= -(2.0 + truth.endplate_concavity_mm)
    assert _slab_top_above_endplate(reference, truth) <= 1e-3
    assert truth.reference.vertebra_mm2 > 800
    for ds in by_uid.values():
        if _distance_to_endplate(ds, truth) > distance:
            assert _slab_top_above_endplate(ds, truth) > 0, "a more cranial slice also lies wholly in L4"
    assert truth.reference_sop_instance_uid in truth.acceptable_sop_instance_uids
    assert len(truth.acceptable_sop_instance_uids) >= 2
    for uid in truth.acceptable_sop_instance_uids:
        assert -truth.l4_body_height_mm / 2 <= _distance_to_endplate(by_uid[uid], truth) < 0


def test_truth_masks_agree_with_the_stated_areas_and_the_image(default_study) -> None:
    truth, folder = default_study
    reference = truth.reference
    ds = pydicom.dcmread(folder / reference.path)
    pixel_area = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1])
    stored = np.load(folder / "truth_masks.npz")
    image = ds.pixel_array.astype(float)
    for name, stated in (
        ("psoas_left", reference.psoas_left_mm2),
        ("psoas_right", reference.psoas_right_mm2),
        ("vertebra", reference.vertebra_mm2),
    ):
        mask = stored[name]
        assert mask.shape == image.shape and mask.dtype == bool
        assert mask.sum() * pixel_area == pytest.approx(stated, rel=0.03), name
    assert reference.plvi == pytest.approx(
        (reference.psoas_left_mm2 + reference.psoas_right_mm2) / reference.vertebra_mm2
    )
    columns = {name: np.nonzero(stored[name])[1].mean() for name in ("psoas_left", "psoas_right", "vertebra")}
    assert columns["psoas_right"] < columns["vertebra"] < columns["psoas_left"], "patient left at the image right"
    assert image[stored["psoas_left"]].mean() < image[stored["vertebra"]].mean(), "muscle is darker than marrow"
    by_slice = np.load(folder / "truth_masks_by_slice.npz")
    for name in ("psoas_left", "psoas_right", "vertebra"):
        assert np.array_equal(by_slice[f"{reference.sop_instance_uid}/{name}"], stored[name])
    for s in truth.slices:
        mask = by_slice[f"{s.sop_instance_uid}/psoas_left"]
        assert mask.sum() * pixel_area == pytest.approx(s.psoas_left_mm2, rel=0.05, abs=20.0)
    written = json.loads((folder / "truth.json").read_text())
    assert written["plvi"] == pytest.approx(reference.plvi)
    assert written["l4_upper_endplate"]["point_mm"] == list(truth.l4_upper_endplate_point_mm)


def test_every_axial_slice_has_truth_and_l4_appears_only_around_the_endplate(default_study) -> None:
    truth, folder = default_study
    assert {s.sop_instance_uid for s in truth.slices} == {ds.SOPInstanceUID for ds in _axial(truth, folder)}
    for s in truth.slices:
        assert s.psoas_left_mm2 >= 0 and s.psoas_right_mm2 >= 0
        if s.vertebra_mm2 > 0:
            assert -truth.l4_body_height_mm - 8 < s.distance_to_endplate_mm < 8
        if s.vertebra_mm2 < 200:
            assert s.plvi is None


def test_same_seed_same_bytes_other_seed_other_study(tmp_path: Path) -> None:
    options = PhantomOptions(sagittal=None, localizer=False, axial_slices=3)
    first = generate_study(5, tmp_path / "a", options)
    second = generate_study(5, tmp_path / "b", options)
    other = generate_study(6, tmp_path / "c", options)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert first.to_json() == second.to_json()
    assert other.study_instance_uid != first.study_instance_uid
    with_localizer = generate_study(5, tmp_path / "d", replace(options, localizer=True))
    assert [s.psoas_left_mm2 for s in with_localizer.slices] == [s.psoas_left_mm2 for s in first.slices]
    for mine, theirs in zip(first.slices, with_localizer.slices, strict=True):
        same = pydicom.dcmread(tmp_path / "a" / mine.path).pixel_array
        assert np.array_equal(same, pydicom.dcmread(tmp_path / "d" / theirs.path).pixel_array), "streams are independent"


def test_per_disc_stacks_are_one_series_angled_along_each_disc(per_disc_study) -> None:
    truth, folder = per_disc_study
    axial = _axial(truth, folder)
    assert len({ds.SeriesInstanceUID for ds in axial}) == 1
    assert not any(s.role.startswith("sagittal") for s in truth.series), "no sagittal series was asked for"
    by_stack: dict[int, list[pydicom.Dataset]] = defaultdict(list)
    for s in truth.slices:
        by_stack[s.stack].append(next(ds for ds in axial if ds.SOPInstanceUID == s.sop_instance_uid))
    assert len(by_stack) >= 4
    normals = [_normal(datasets[0]) for datasets in by_stack.values()]
    for datasets, normal in zip(by_stack.values(), normals, strict=True):
        for ds in datasets:
            assert np.allclose(_normal(ds), normal, atol=1e-6)
    angles = [np.degrees(np.arccos(np.clip(np.dot(a, b), -1, 1))) for a, b in zip(normals, normals[1:])]
    assert max(angles) > 3.0, "stacks follow the lordosis"
    assert truth.reference is not None and truth.plvi is not None
    assert truth.expected_reason == "no_pixel_spacing"


def test_per_disc_stacks_can_be_written_as_one_series_each(tmp_path: Path) -> None:
    options = PhantomOptions(axial_layout="per_disc", axial_series_per_stack=True, sagittal=None, localizer=False)
    truth = generate_study(15, tmp_path, options)
    series = _read_series(tmp_path)
    assert len(series) == len({s.stack for s in truth.slices}) >= 4
    for datasets in series.values():
        assert sorted(int(ds.InstanceNumber) for ds in datasets) == list(range(1, len(datasets) + 1))
        assert len({tuple(np.round(_normal(ds), 6)) for ds in datasets}) == 1
    assert len({s.sop_instance_uid for s in truth.slices}) == len(truth.slices)
    assert truth.reference is not None


def test_study_whose_axial_stack_misses_l4_has_no_reference(uncovered_study) -> None:
    truth, folder = uncovered_study
    assert truth.reference_sop_instance_uid is None and truth.acceptable_sop_instance_uids == ()
    assert truth.plvi is None
    assert not any(-truth.l4_body_height_mm / 2 <= s.distance_to_endplate_mm < 0 for s in truth.slices)
    assert truth.expected_reason == "l4_not_covered"
    assert truth.lumbar_vertebrae == 6
    name, kind = truth.vertebra_condition
    assert kind == "cemented" and name in ("T12", "L1", "L2", "L3")
    assert json.loads((folder / "truth.json").read_text())["plvi"] is None


def test_hard_studies_are_still_measurable_with_a_reference_and_stated_difficulty(hard_study) -> None:
    truth, folder = hard_study
    assert truth.hard and truth.expected_reason is None
    assert truth.reference is not None and 0.2 < truth.plvi < 2.0
    written = json.loads((folder / "truth.json").read_text())
    assert written["hard"] is True and written["reference_rule"]


def test_a_derived_reformat_repeats_the_axial_positions_in_its_own_series(hard_study) -> None:
    truth, folder = hard_study
    derived_uid = next(s.series_instance_uid for s in truth.series if s.role == "axial_t2_derived")
    series = _read_series(folder)
    derived = series[derived_uid]
    assert all(ds.ImageType[0] == "DERIVED" for ds in derived)
    axial = _axial(truth, folder)
    assert {tuple(ds.ImagePositionPatient) for ds in derived} == {tuple(ds.ImagePositionPatient) for ds in axial}
    assert not {ds.SOPInstanceUID for ds in derived} & {s.sop_instance_uid for s in truth.slices}


def test_command_line_writes_one_study_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from workers.phantom.__main__ import main

    assert main([str(tmp_path), "--seeds", "3", "--sagittal", "none", "--no-localizer"]) == 0
    assert (tmp_path / "phantom-0003" / "truth.json").exists()
    assert "seed=3 plvi=" in capsys.readouterr().out


def test_regenerating_into_a_folder_leaves_no_stale_series(tmp_path: Path) -> None:
    generate_study(8, tmp_path, PhantomOptions(sagittal=None, axial_layout="per_disc"))
    (tmp_path / "notes.txt").write_text("not the phantom's")
    options = PhantomOptions(sagittal=None, localizer=False, axial_layout="stack", axial_slices=3)
    truth = generate_study(8, tmp_path, options)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == len(truth.slices) == 3
    assert (tmp_path / "notes.txt").exists()

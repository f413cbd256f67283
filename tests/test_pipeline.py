"""The whole analysis of one study: every real case gets a sensible status, bad input the right reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.real_data import REAL_DATA
from tests.synthetic_series import SAGITTAL, axial_positions, write_series
from workers.pipeline import analyze_paths, empty_result

RESULT_KEYS = set(empty_result("", 0.79))
EXPECTED_REAL = {
    "musclemap-t2ax": ("not_measurable", "no_sagittal"),
    "tum01-water": ("not_measurable", "no_sagittal"),
    "tum02-water": ("not_measurable", "no_sagittal"),
    "chaos10-t2spir": ("not_measurable", "no_sagittal"),
    "chaos12-t2spir": ("not_measurable", "no_sagittal"),
    "totalseg-ct": ("not_measurable", "not_mri"),
    "ivd11-t2sag": ("not_measurable", "no_axial_t2"),
    "ivd46-t2sag": ("not_measurable", "no_axial_t2"),
    "ivd25-t2sag": ("not_measurable", "no_axial_t2"),
    "ivd42-t2sag": ("not_measurable", "no_axial_t2"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED_REAL))
def test_every_real_case_gets_a_result_with_every_key_and_a_sensible_reason(case: str) -> None:
    if not (REAL_DATA / case).exists():
        pytest.skip(f"{case} is not on this machine")
    analysis = analyze_paths([REAL_DATA / case], cutoff=0.79)
    result = analysis.result
    assert set(result) >= RESULT_KEYS
    assert (result["status"], result["reason"]) == EXPECTED_REAL[case]
    assert result["reason_text"]
    json.dumps(result, allow_nan=False)
    if case.startswith("ivd"):
        # A sagittal series without an axial T2 still says where L4 is.
        assert result["level_method"] == "sagittal"
        assert len(result["level"]["l4_upper_endplate"]["point_mm"]) == 3
        assert result["level"]["lumbar_vertebrae_counted"] >= 3
    else:
        assert result["level"] is None
    assert result["timings_ms"]["total"] < 5000


def _study() -> dict[str, str]:
    return {"study_uid": generate_uid(), "frame_of_reference_uid": generate_uid()}


def test_a_study_without_an_axial_series_is_no_axial_t2(tmp_path: Path) -> None:
    write_series(tmp_path, **_study(), orientation=SAGITTAL, description="T2 SAG",
                 positions=[(x, -30.0, 30.0) for x in (-4, 0, 4)])
    assert analyze_paths([tmp_path], 0.79).result["reason"] == "no_axial_t2"


def test_a_cervical_study_is_not_measured(tmp_path: Path) -> None:
    write_series(tmp_path, **_study(), body_part="CSPINE", positions=axial_positions(range(0, 40, 4)))
    result = analyze_paths([tmp_path], 0.79).result
    assert (result["status"], result["reason"]) == ("not_measurable", "not_lumbar_spine")
    assert "CSPINE" in result["reason_text"]


def test_axial_images_without_pixel_spacing_are_no_pixel_spacing(tmp_path: Path) -> None:
    write_series(tmp_path, **_study(), pixel_spacing=None, positions=axial_positions(range(0, 40, 4)))
    assert analyze_paths([tmp_path], 0.79).result["reason"] == "no_pixel_spacing"


def test_a_single_axial_slice_is_single_slice(tmp_path: Path) -> None:
    write_series(tmp_path, **_study(), positions=axial_positions([0.0]))
    assert analyze_paths([tmp_path], 0.79).result["reason"] == "single_slice"


def _ivd_study_with_axial(tmp_path: Path, case: str, z_values: list[float]) -> tuple[Path, dict]:
    """A real sagittal case plus a synthetic axial T2 stack in the same study and frame of reference."""
    folder = tmp_path / "study"
    shutil.copytree(REAL_DATA / case / "dicom", folder / "sagittal")
    first = pydicom.dcmread(next((folder / "sagittal").glob("*.dcm")), stop_before_pixels=True)
    write_series(folder / "axial", study_uid=first.StudyInstanceUID,
                 frame_of_reference_uid=first.FrameOfReferenceUID, size=128, pixel_spacing=(1.5, 1.5),
                 positions=axial_positions(z_values, size=128, spacing=1.5))
    reference = json.loads((REAL_DATA / case / "reference.json").read_text())["reference"]["l4_upper_endplate"]
    return folder, reference


@pytest.mark.skipif(not (REAL_DATA / "ivd46-t2sag").exists(), reason="real sagittal case missing")
def test_the_axial_slice_just_below_the_l4_endplate_found_on_the_sagittal_is_segmented(tmp_path: Path) -> None:
    folder, reference = _ivd_study_with_axial(tmp_path, "ivd46-t2sag", list(np.arange(-60.0, 20.0, 4.0)))
    analysis = analyze_paths([folder], 0.79)
    result = analysis.result
    endplate_z = reference["point_mm"][2]
    chosen = pydicom.dcmread(analysis.source_path, stop_before_pixels=True)
    assert result["level_method"] == "sagittal"
    assert endplate_z - 8.0 <= chosen.ImagePositionPatient[2] < endplate_z + 2.0
    assert 0.0 < result["slice"]["slice_to_endplate_mm"] <= 10.0
    assert result["slice"]["sop_instance_uid"] == chosen.SOPInstanceUID
    assert set(analysis.masks) == {"psoas_left", "psoas_right", "vertebra"}
    assert all(mask.shape == (128, 128) and mask.dtype == bool for mask in analysis.masks.values())
    # Noise has no psoas: the gate must refuse or flag it, never call it ok.
    assert result["status"] in ("needs_review", "not_measurable")
    assert {"find_level", "choose_slice", "segment", "total"} <= set(result["timings_ms"])


@pytest.mark.skipif(not (REAL_DATA / "ivd46-t2sag").exists(), reason="real sagittal case missing")
def test_an_axial_stack_that_misses_the_top_of_l4_is_l4_not_covered(tmp_path: Path) -> None:
    folder, _ = _ivd_study_with_axial(tmp_path, "ivd46-t2sag", [40.0, 44.0, 48.0, 52.0])
    result = analyze_paths([folder], 0.79).result
    assert (result["status"], result["reason"]) == ("not_measurable", "l4_not_covered")
    assert result["level"] is not None


PHANTOM_SEEDS = (1, 2, 3, 4, 5, 6)


@pytest.fixture(scope="module")
def phantom_studies(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, dict]]:
    from workers.phantom.study import generate_study

    root = tmp_path_factory.mktemp("phantoms")
    studies = []
    for seed in PHANTOM_SEEDS:
        generate_study(seed, root / f"seed-{seed}")
        studies.append((root / f"seed-{seed}", json.loads((root / f"seed-{seed}" / "truth.json").read_text())))
    return studies


PHANTOM_PLVI_TOLERANCE = 0.08  # today's errors on these seeds' acceptable slices: 0.00-0.05
PHANTOM_AREA_TOLERANCE = 0.15  # relative; today's: 0-8 %


def test_on_phantoms_the_slice_areas_and_plvi_agree_with_the_truth_and_a_wrong_slice_is_never_ok(
    phantom_studies: list[tuple[Path, dict]],
) -> None:
    rows = []
    for folder, truth in phantom_studies:
        result = analyze_paths([folder], 0.79).result
        chosen = (result["slice"] or {}).get("sop_instance_uid")
        on_slice = next((s for s in truth["slices"] if s["sop_instance_uid"] == chosen), None)
        rows.append((truth["seed"], result, chosen in truth["acceptable_sop_instance_uids"],
                     chosen == truth["reference_sop_instance_uid"], on_slice))
    print("\nseed status          reason                  acceptable reference plvi   truth")
    for seed, result, acceptable, reference, on_slice in rows:
        print(f"{seed:4d} {result['status']:15s} {result['reason']!s:23s} {acceptable!s:10s} {reference!s:9s} "
              f"{result['plvi']!s:6s} {on_slice and on_slice['plvi']}")
    # Level finding on these phantoms is not yet reliable enough (see the benchmark): at least half must land on an
    # acceptable slice, and a result on any other slice must never be reported as ok.
    assert sum(acceptable for _, _, acceptable, _, _ in rows) >= len(rows) / 2
    assert all(acceptable for _, result, acceptable, _, _ in rows if result["status"] == "ok"), "ok on a wrong slice"
    assert all(result["status"] != "ok" or result["reason"] is None for _, result, _, _, _ in rows)
    measured = [(result, on_slice) for _, result, acceptable, _, on_slice in rows if acceptable and result["plvi"]]
    assert len(measured) >= 2
    for result, on_slice in measured:
        assert result["plvi"] == pytest.approx(on_slice["plvi"], abs=PHANTOM_PLVI_TOLERANCE)
        for key in ("psoas_left_mm2", "psoas_right_mm2", "vertebra_mm2"):
            assert result[key] == pytest.approx(on_slice[key], rel=PHANTOM_AREA_TOLERANCE), key


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"pixel_spacing": False}, "no_pixel_spacing"), ({"axial_t2": False}, "no_axial_t2")],
)
def test_a_phantom_that_cannot_be_measured_gets_the_reason_its_truth_expects(
    tmp_path: Path, options: dict, reason: str
) -> None:
    from workers.phantom.study import PhantomOptions, generate_study

    truth = generate_study(7, tmp_path, PhantomOptions(**options))
    assert truth.expected_reason == reason
    result = analyze_paths([tmp_path], 0.79).result
    assert (result["status"], result["reason"]) == ("not_measurable", reason)

"""`plvi analyze` as an operator runs it: the real console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.real_data import REAL_DATA
from tests.test_pipeline import RESULT_KEYS, _ivd_study_with_axial

PLVI = Path(sys.executable).parent / "plvi"


def run_analyze(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PLVI), "analyze", *map(str, args)], check=False, capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.skipif(not (REAL_DATA / "musclemap-t2ax").exists(), reason="real case missing")
def test_json_output_is_only_the_result_object_on_stdout(tmp_path: Path) -> None:
    completed = run_analyze(REAL_DATA / "musclemap-t2ax", "--json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)  # fails if anything but the JSON object is on stdout
    assert set(result) >= RESULT_KEYS
    assert (result["status"], result["reason"]) == ("not_measurable", "no_sagittal")


@pytest.mark.skipif(not (REAL_DATA / "ivd46-t2sag").exists(), reason="real sagittal case missing")
def test_out_writes_the_result_the_overlay_the_masks_and_the_dicom_objects_of_the_chosen_slice(tmp_path: Path) -> None:
    folder, _ = _ivd_study_with_axial(tmp_path, "ivd46-t2sag", list(np.arange(-60.0, 20.0, 4.0)))
    out = tmp_path / "out"
    completed = run_analyze(folder, "--json", "--out", out, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout)
    assert json.loads((out / "result.json").read_text()) == printed
    with np.load(out / "masks.npz") as masks:
        assert set(masks.files) == {"psoas_left", "psoas_right", "vertebra"}
        assert all(masks[name].dtype == bool and masks[name].shape == (128, 128) for name in masks.files)
    assert Image.open(out / "overlay.png").size == (128, 128)
    assert {"sr.dcm", "seg.dcm", "keyimage.dcm"} <= {path.name for path in out.iterdir()}


def test_human_readable_output_states_the_status_and_the_reason(tmp_path: Path) -> None:
    if not (REAL_DATA / "totalseg-ct").exists():
        pytest.skip("real case missing")
    completed = run_analyze(REAL_DATA / "totalseg-ct", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "not_measurable" in completed.stdout and "not_mri" in completed.stdout


def test_paths_without_dicom_fail_with_a_message_that_says_what_to_give(tmp_path: Path) -> None:
    (tmp_path / "notes.dcm").write_text("not a DICOM file")
    completed = run_analyze(tmp_path, "--json", cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "no readable DICOM images" in completed.stderr and "notes.dcm" in completed.stderr

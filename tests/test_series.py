"""Series choice from headers: orientation, weighting, skipped series, per-disc stacks, duplicates; and geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.synthetic_series import (
    AXIAL,
    CORONAL,
    SAGITTAL,
    axial_positions,
    tilted_axial,
    write_series,
)
from workers.analysis.geometry import PATIENT_LEFT, PATIENT_POSTERIOR, slice_geometry
from workers.analysis.series import choose_series, classify_series, orientation_class
from workers.study_files import read_study_headers


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (AXIAL, "axial"),
        (tilted_axial(15), "axial"),
        (tilted_axial(-19), "axial"),
        (tilted_axial(30), "oblique"),
        (SAGITTAL, "sagittal"),
        (CORONAL, "coronal"),
    ],
)
def test_orientation_comes_from_the_image_normal_with_oblique_stacks_up_to_20_degrees_still_axial(
    orientation: tuple[float, ...], expected: str
) -> None:
    assert orientation_class(orientation) == expected


def _study(tmp_path: Path) -> tuple[str, str]:
    return generate_uid(), generate_uid()


def test_weighting_comes_from_echo_and_repetition_time_not_from_the_description(tmp_path: Path) -> None:
    study, frame = _study(tmp_path)
    write_series(tmp_path / "a", study_uid=study, frame_of_reference_uid=frame, positions=axial_positions([0, 4]),
                 description="T1 AX (renamed)", echo_time=110.0, repetition_time=4500.0)
    write_series(tmp_path / "b", study_uid=study, frame_of_reference_uid=frame, positions=axial_positions([0, 4]),
                 description="AX T2 FSE", echo_time=12.0, repetition_time=600.0)
    by_description = {s.series_description: classify_series(s) for s in read_study_headers([tmp_path]).series}
    assert by_description["T1 AX (renamed)"].weighting == "T2"
    assert by_description["AX T2 FSE"].weighting == "T1"
    assert by_description["AX T2 FSE"].weighting_from == "headers"


def test_description_is_only_a_hint_used_when_timing_is_missing(tmp_path: Path) -> None:
    study, frame = _study(tmp_path)
    write_series(tmp_path, study_uid=study, frame_of_reference_uid=frame, positions=axial_positions([0, 4]),
                 description="t2_tse_tra", echo_time=None, repetition_time=None)
    verdict = classify_series(read_study_headers([tmp_path]).series[0])
    assert (verdict.weighting, verdict.weighting_from) == ("T2", "description")


def test_localizers_and_derived_series_are_skipped_and_the_axial_t2_is_chosen(tmp_path: Path) -> None:
    study, frame = _study(tmp_path)
    t2 = write_series(tmp_path / "t2", study_uid=study, frame_of_reference_uid=frame,
                      positions=axial_positions(range(0, 40, 4)))
    write_series(tmp_path / "loc", study_uid=study, frame_of_reference_uid=frame,
                 positions=axial_positions([0, 10, 20]), description="3-plane loc", image_type=("ORIGINAL", "PRIMARY"))
    write_series(tmp_path / "mpr", study_uid=study, frame_of_reference_uid=frame,
                 positions=axial_positions(range(0, 80, 2)), image_type=("DERIVED", "SECONDARY", "MPR"),
                 description="T2 AX MPR")
    write_series(tmp_path / "t1", study_uid=study, frame_of_reference_uid=frame,
                 positions=axial_positions(range(0, 80, 4)), description="T1 AX", echo_time=10.0,
                 repetition_time=500.0)
    choice = choose_series(read_study_headers([tmp_path]).series)
    skipped = {entry["description"]: entry["skipped"] for entry in choice.classified.values()}
    assert skipped["3-plane loc"] == "localizer"
    assert skipped["T2 TSE AX"] == ""
    assert skipped["T2 AX MPR"] == "derived"
    assert choice.axial_weighting == "T2"
    assert sorted(s.header.path for s in choice.axial_slices) == sorted(t2)


def test_short_axial_stacks_angled_per_disc_form_one_logical_set_sorted_caudal_to_cranial(tmp_path: Path) -> None:
    study, frame = _study(tmp_path)
    for disc, (z, tilt) in enumerate([(0.0, 18.0), (40.0, 8.0), (80.0, -5.0)]):
        write_series(tmp_path / f"disc{disc}", study_uid=study, frame_of_reference_uid=frame,
                     positions=axial_positions([z - 8, z - 4, z, z + 4, z + 8]), orientation=tilted_axial(tilt),
                     description=f"T2 AX disc {disc}")
    choice = choose_series(read_study_headers([tmp_path]).series)
    assert len(choice.axial_series_uids) == 3
    assert len(choice.axial_slices) == 15
    heights = [s.geometry.centre[2] for s in choice.axial_slices]
    assert heights == sorted(heights)


def test_duplicate_slice_positions_keep_one_image_each(tmp_path: Path) -> None:
    study, frame = _study(tmp_path)
    write_series(tmp_path, study_uid=study, frame_of_reference_uid=frame,
                 positions=axial_positions([0, 4, 8, 4, 8, 12]))
    choice = choose_series(read_study_headers([tmp_path]).series)
    assert len(choice.axial_slices) == 4
    assert choice.duplicate_positions_dropped == 2


def test_sagittal_t2_is_preferred_for_level_finding(tmp_path: Path) -> None:
    study, frame = _study(tmp_path)
    for name, te, tr in (("T1 SAG", 10.0, 550.0), ("T2 SAG", 100.0, 3500.0)):
        write_series(tmp_path / name, study_uid=study, frame_of_reference_uid=frame, orientation=SAGITTAL,
                     positions=[(x, -30.0, 30.0) for x in (-4, 0, 4)], description=name, echo_time=te,
                     repetition_time=tr)
    choice = choose_series(read_study_headers([tmp_path]).series)
    assert choice.sagittal is not None and choice.sagittal.series_description == "T2 SAG"
    assert choice.axial_slices == []


def test_index_and_patient_coordinates_round_trip_and_in_plane_directions_follow_the_orientation() -> None:
    geometry = slice_geometry((-100.0, -80.0, 12.0), tilted_axial(10), (0.7, 0.9), 256, 200)
    point = geometry.index_to_patient(31.5, 77.25)
    row, column, out_of_plane = geometry.patient_to_index(point)
    assert (round(row, 6), round(column, 6), round(out_of_plane, 6)) == (31.5, 77.25, 0.0)
    usual = slice_geometry((0.0, 0.0, 0.0), AXIAL, (1.0, 1.0), 64, 64)
    assert np.allclose(usual.in_plane_direction(PATIENT_LEFT), (0.0, 1.0))
    assert np.allclose(usual.in_plane_direction(-PATIENT_POSTERIOR), (-1.0, 0.0))


def test_per_disc_blocks_in_one_series_are_axial_even_when_l5_s1_is_tilted_40_degrees(tmp_path: Path) -> None:
    study, frame = generate_uid(), generate_uid()
    for block, (z, tilt) in enumerate([(0.0, 40.0), (40.0, 12.0), (80.0, -5.0)]):
        write_series(tmp_path / f"block{block}", study_uid=study, frame_of_reference_uid=frame, series_uid="1.2.3.4",
                     positions=axial_positions([z - 4, z, z + 4]), orientation=tilted_axial(tilt), seed=block)
    [series] = read_study_headers([tmp_path]).series
    assert classify_series(series).orientation == "axial"
    assert classify_series(series).skip_reason is None
    assert len(choose_series([series]).axial_slices) == 9


def test_a_stack_whose_positions_step_sideways_is_not_trusted(tmp_path: Path) -> None:
    study, frame = generate_uid(), generate_uid()
    write_series(tmp_path, study_uid=study, frame_of_reference_uid=frame,
                 positions=[(-25.0 + 5 * n, -25.0, 0.0) for n in range(6)])  # axial orientation, moving left
    [series] = read_study_headers([tmp_path]).series
    assert classify_series(series).skip_reason == "geometry_inconsistent"
    assert choose_series([series]).axial_slices == []

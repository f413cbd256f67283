"""L4 localisation on real sagittal T2 (manual truth) and slice choice by 3D geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.real_data import REAL_DATA
from tests.synthetic_series import AXIAL, tilted_axial
from workers.analysis.geometry import Plane, angle_between_degrees, slice_geometry, unit
from workers.analysis.slices import MAX_CAUDAL_MM, choose_axial_slice
from workers.pipeline import MIN_LEVEL_CONFIDENCE, _find_level
from workers.study_files import read_study_headers

IVD_CASES = sorted(path.name for path in REAL_DATA.glob("ivd*-t2sag"))
CRANIOCAUDAL_TOLERANCE_MM = 4.0
ANGLE_TOLERANCE_DEGREES = 15.0


def _endplate_errors(case: str) -> tuple[float, float, float]:
    """(craniocaudal error mm, angle error degrees, confidence) of the L4 upper endplate found on a real case."""
    reference = json.loads((REAL_DATA / case / "reference.json").read_text())["reference"]["l4_upper_endplate"]
    study = read_study_headers([REAL_DATA / case / "dicom"])
    finding = _find_level(study.series[0])
    assert finding.upper_endplate_l4 is not None, f"{case}: {finding.reason}"
    truth = Plane(np.array(reference["point_mm"]), unit(reference["normal"]))
    error = float(np.dot(finding.upper_endplate_l4.point - truth.point, truth.normal))
    return error, angle_between_degrees(finding.upper_endplate_l4.normal, truth.normal), finding.confidence


@pytest.mark.skipif(not IVD_CASES, reason="the real sagittal cases are not on this machine")
def test_l4_upper_endplate_is_found_on_real_sagittal_t2_and_a_wrong_level_is_never_confident() -> None:
    rows = [(case, *_endplate_errors(case)) for case in IVD_CASES]
    print("\ncase          craniocaudal_mm  angle_deg  confidence")
    for case, error, angle, confidence in rows:
        print(f"{case:13s} {error:+15.1f} {angle:10.1f} {confidence:11.2f}")
    found = [row for row in rows if abs(row[1]) <= CRANIOCAUDAL_TOLERANCE_MM]
    assert len(found) >= len(rows) - 1, "more than one real case missed L4"
    assert all(angle <= ANGLE_TOLERANCE_DEGREES for _, _, angle, _ in found)
    for case, error, _, confidence in rows:
        if abs(error) > CRANIOCAUDAL_TOLERANCE_MM:
            assert confidence < MIN_LEVEL_CONFIDENCE, f"{case}: wrong level ({error:+.0f} mm) reported confidently"


def _stack(z_values: list[float], orientation: tuple[float, ...] = AXIAL) -> list:
    """Axial slices 256x256 at 1 mm whose centres lie on the z axis at the given heights."""
    slices = []
    for z in z_values:
        geometry = slice_geometry((0.0, 0.0, 0.0), orientation, (1.0, 1.0), 256, 256)
        slices.append(slice_geometry(np.array([0.0, 0.0, z]) - (geometry.centre - geometry.position), orientation,
                                     (1.0, 1.0), 256, 256))
    return slices


def test_the_most_cranial_slice_whose_slab_lies_wholly_below_the_endplate_is_chosen() -> None:
    endplate = Plane(np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 1.0]))
    stack = _stack([-2.0, 2.0, 6.0, 8.5, 14.0, 18.0])
    # 4 mm slabs: the one centred 1.5 mm below the endplate still reaches into the disc; 1 mm slabs do not.
    choice = choose_axial_slice(stack, endplate, [4.0] * len(stack))
    assert (choice.index, choice.slice_to_endplate_mm) == (2, pytest.approx(4.0))
    assert choose_axial_slice(stack, endplate, [1.0] * len(stack)).index == 3


def test_a_slice_tilted_against_the_endplate_must_lie_deeper_for_its_slab_to_clear_the_rim() -> None:
    # 4 mm slabs crossing the axis 3 mm below the endplate: level, the slab's top is 1 mm below the centre; tilted
    # 10 degrees it rises 17 sin(10) = 2.95 mm towards the rim, which stands only 1 mm higher: it cuts the disc.
    endplate = Plane(np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 1.0]))
    assert choose_axial_slice(_stack([7.0, 2.0]), endplate, [4.0, 4.0]).index == 0
    assert choose_axial_slice(_stack([7.0, 2.0], tilted_axial(10)), endplate, [4.0, 4.0]).index == 1


def test_the_next_slice_up_is_offered_when_the_endplate_is_too_uncertain_to_tell_the_two_apart() -> None:
    endplate = Plane(np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 1.0]))
    # 4 mm slabs: 1.2 mm below the endplate misses clearing it by 0.8 mm, within the endplate's uncertainty.
    close = choose_axial_slice(_stack([8.8, 4.4]), endplate, [4.0, 4.0])
    assert (close.index, close.cranial_alternative) == (1, 0)
    clear = choose_axial_slice(_stack([9.5, 5.1]), endplate, [4.0, 4.0])
    assert (clear.index, clear.cranial_alternative) == (1, None)


def test_with_thick_slices_and_none_wholly_below_the_deepest_caudal_slice_is_taken() -> None:
    endplate = Plane(np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 1.0]))
    stack = _stack([4.0, 12.0, 20.0])
    assert choose_axial_slice(stack, endplate, [8.0] * 3).slice_to_endplate_mm == pytest.approx(6.0)
    assert choose_axial_slice(stack, endplate, [14.0] * 3).slice_to_endplate_mm == pytest.approx(6.0)


def test_an_angled_slice_is_placed_where_it_crosses_the_vertebral_body_not_where_its_field_of_view_is_centred() -> None:
    # The endplate centre is 60 mm posterior of the image centre and the slices are tilted 5 degrees: one centred
    # 3 mm above the endplate height crosses the vertebral body 2.25 mm below it, and the other way round.
    endplate = Plane(np.array([0.0, 60.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    crossing_below = choose_axial_slice(_stack([3.0], tilted_axial(-5)), endplate)
    assert crossing_below.slice_to_endplate_mm == pytest.approx(60 * np.tan(np.radians(5)) - 3.0, abs=0.01)
    assert choose_axial_slice(_stack([-3.0], tilted_axial(5)), endplate).reason == "l4_not_covered"


def test_no_slice_within_reach_below_the_endplate_is_l4_not_covered() -> None:
    endplate = Plane(np.array([0.0, 0.0, 10.0]), np.array([0.0, 0.0, 1.0]))
    assert choose_axial_slice(_stack([12.0, 16.0, 20.0]), endplate).reason == "l4_not_covered"
    assert choose_axial_slice(_stack([10.0 - MAX_CAUDAL_MM - 1, 30.0]), endplate).reason == "l4_not_covered"


def test_a_sagittal_series_without_a_spine_is_l4_not_found_not_a_fault() -> None:
    from workers.analysis.geometry import volume_geometry
    from workers.analysis.levels import find_l4_upper_endplate

    geometry = volume_geometry(
        [slice_geometry((x, -50.0, 50.0), (0, 1, 0, 0, 0, -1), (1.0, 1.0), 96, 96) for x in (-3.0, 0.0, 3.0)]
    )
    noise = np.random.default_rng(0).uniform(0, 100, (3, 96, 96))
    for volume in (np.zeros((3, 96, 96)), noise):
        finding = find_l4_upper_endplate(volume, geometry)
        assert (finding.upper_endplate_l4, finding.reason) == (None, "l4_not_found")


def test_the_series_is_most_mirror_symmetric_about_its_midsagittal_slab() -> None:
    from workers.analysis.levels import _mirror_symmetry

    # Eleven 3 mm slabs through a body whose left and right halves mirror each other about slab 6, not the
    # centre of the series (5): structures differ from slab to slab, but equally on both sides.
    rng = np.random.default_rng(1)
    patterns = [rng.uniform(0, 100, (64, 64)) for _ in range(7)]
    volume = np.stack([patterns[abs(slab - 6)] for slab in range(11)])
    scores = _mirror_symmetry(volume, 3.0)
    assert int(np.argmax(scores)) == 6
    assert np.isneginf(scores[[0, 1, 2, 8, 9, 10]]).all()  # too near an edge to have slabs 10 mm out on both sides


def test_a_full_height_disc_stands_out_from_bone_more_than_a_fused_sacral_junction() -> None:
    from workers.analysis.levels import _disc_band_contrast

    # Along a straight column (grid column 40): bone at 100, a 10 mm disc at 30 (L5-S1) starting at row 80 and a
    # 2 mm line at 85 (the S1-S2 junction) at row 120, the body of S1 between them continuous bone.
    image = np.full((200, 80), 100.0)
    image[:40] = 20.0  # soft tissue above the field's bone gives the image its range
    image[80:90] = 30.0
    image[120:122] = 85.0
    disc, junction = _disc_band_contrast(image, np.full(200, 40.0), [80, 120])
    assert disc > 2 * junction


@pytest.mark.parametrize("marrow", [90.0, 140.0])  # the edge out of the dark line weaker or stronger than into it
def test_the_endplate_is_placed_on_its_dark_line_whichever_of_the_line_s_edges_is_stronger(marrow: float) -> None:
    from workers.analysis.levels import _caudal_endplate_row, endplate_response, tilted_edge_responses

    # Along a straight column: marrow, a T2-bright disc from row 60 to 70, the endplate's dark line at rows 70-71,
    # then the marrow of the body below.
    image = np.full((160, 80), marrow)
    image[60:70] = 200.0
    image[70:72] = 10.0
    response = endplate_response(tilted_edge_responses(image))[0]
    row = _caudal_endplate_row(response, image, np.full(160, 40.0), 62)
    assert 70.0 <= row <= 71.5

"""The quality gate: a clean case passes, and each rule changes the status once its limit is crossed."""

from __future__ import annotations

import numpy as np
import pytest

from workers.analysis.measure import measure_plvi
from workers.analysis.quality import DEFAULT_LIMITS, QualityVerdict, assess_next_slice, assess_quality
from workers.analysis.segmentation import SliceSegmentation

SHAPE = (256, 256)
SPACING = (1.0, 1.0)


def ellipse(centre: tuple[int, int], area_mm2: float, aspect: float = 1.3) -> np.ndarray:
    """An ellipse of the given area (1 mm pixels), ``aspect`` times wider than deep."""
    semi_depth = np.sqrt(area_mm2 / (np.pi * aspect))
    rows, columns = np.ogrid[: SHAPE[0], : SHAPE[1]]
    return ((rows - centre[0]) / semi_depth) ** 2 + ((columns - centre[1]) / (semi_depth * aspect)) ** 2 <= 1.0


def segmentation(left_mm2: float = 900, right_mm2: float = 950, vertebra_mm2: float = 1600,
                 confidence: float = 0.9, psoas_left: np.ndarray | None = None) -> SliceSegmentation:
    return SliceSegmentation(
        psoas_left=ellipse((128, 175), left_mm2, 0.9) if psoas_left is None else psoas_left,
        psoas_right=ellipse((128, 81), right_mm2, 0.9),
        vertebra=ellipse((128, 128), vertebra_mm2),
        confidence=confidence,
        evidence={},
    )


def verdict(seg: SliceSegmentation, *, slice_to_endplate_mm: float | None = 3.0,
            lumbar_vertebrae_counted: int | None = 5, level_method: str = "sagittal") -> QualityVerdict:
    return assess_quality(measure_plvi(seg, SPACING, 0.79), seg, slice_to_endplate_mm=slice_to_endplate_mm,
                          lumbar_vertebrae_counted=lumbar_vertebrae_counted, level_method=level_method)


def test_a_plausible_confident_measurement_at_the_right_level_is_ok() -> None:
    result = verdict(segmentation())
    assert (result.status, result.reason, result.reason_text) == ("ok", None, None)
    assert all(check["pass"] for check in result.checks.values())
    assert set(result.checks["vertebra_area_mm2"]) == {"value", "limit", "pass"}


@pytest.mark.parametrize(
    ("area_mm2", "status"),
    [(DEFAULT_LIMITS.psoas_mm2[0] + 20, "ok"), (DEFAULT_LIMITS.psoas_mm2[0] - 20, "needs_review"),
     (DEFAULT_LIMITS.psoas_mm2[1] - 50, "ok"), (DEFAULT_LIMITS.psoas_mm2[1] + 50, "needs_review")],
)
def test_psoas_area_outside_the_adult_range_needs_review(area_mm2: float, status: str) -> None:
    vertebra_mm2 = 2900 if area_mm2 > 2000 else 1600  # keeps PLVI itself in range
    result = verdict(segmentation(left_mm2=area_mm2, right_mm2=area_mm2, vertebra_mm2=vertebra_mm2))
    assert result.status == status
    if status != "ok":
        assert result.reason == "segmentation_implausible"


@pytest.mark.parametrize(("vertebra_mm2", "status"), [(850, "ok"), (750, "needs_review"),
                                                      (2950, "ok"), (3100, "needs_review")])
def test_vertebral_body_area_outside_the_adult_range_needs_review(vertebra_mm2: float, status: str) -> None:
    result = verdict(segmentation(left_mm2=vertebra_mm2 * 0.4, right_mm2=vertebra_mm2 * 0.4,
                                  vertebra_mm2=vertebra_mm2))
    assert result.status == status
    assert result.checks["vertebra_area_mm2"]["pass"] is (status == "ok")


def test_plvi_outside_its_plausible_range_needs_review() -> None:
    result = verdict(segmentation(left_mm2=3000, right_mm2=3000, vertebra_mm2=2000))  # PLVI 3.0
    assert (result.status, result.reason) == ("needs_review", "segmentation_implausible")
    assert result.checks["plvi_range"]["pass"] is False


def test_a_ragged_psoas_mask_needs_review() -> None:
    crescent = ellipse((128, 175), 1400, 0.9) & ~ellipse((128, 190), 700, 0.9)  # a bite out of one side
    result = verdict(segmentation(psoas_left=crescent))
    assert result.status == "needs_review"
    assert result.checks["psoas_left_solidity"]["pass"] is False


def test_a_psoas_in_two_pieces_needs_review() -> None:
    two = ellipse((110, 175), 450, 0.9) | ellipse((150, 175), 450, 0.9)
    result = verdict(segmentation(psoas_left=two))
    assert result.checks["psoas_left_pieces"] == {"value": 2, "limit": 1, "pass": False}
    assert result.status == "needs_review"


def test_a_thin_strip_is_not_accepted_as_a_psoas() -> None:
    result = verdict(segmentation(psoas_left=ellipse((128, 175), 900, 5.0)))
    assert result.checks["psoas_left_eccentricity"]["pass"] is False
    assert result.status == "needs_review"


@pytest.mark.parametrize(("left_mm2", "status"), [(0.8 * 950, "ok"), (0.7 * 950, "needs_review")])
def test_left_right_asymmetry_beyond_the_limit_needs_review(left_mm2: float, status: str) -> None:
    result = verdict(segmentation(left_mm2=left_mm2, right_mm2=950, vertebra_mm2=1600))
    assert result.status == status
    if status != "ok":
        assert result.reason == "asymmetric_psoas"


@pytest.mark.parametrize(("distance_mm", "status"), [(-9.5, "ok"), (9.5, "ok"), (10.5, "needs_review"),
                                                     (-12.0, "needs_review")])
def test_a_slice_far_from_the_endplate_needs_review(distance_mm: float, status: str) -> None:
    result = verdict(segmentation(), slice_to_endplate_mm=distance_mm)
    assert result.status == status
    if status != "ok":
        assert result.reason == "slice_far_from_endplate"


@pytest.mark.parametrize("counted", [4, 6])
def test_transitional_anatomy_needs_review(counted: int) -> None:
    result = verdict(segmentation(), lumbar_vertebrae_counted=counted)
    assert (result.status, result.reason) == ("needs_review", "transitional_anatomy")


def test_a_level_found_without_a_sagittal_series_needs_review() -> None:
    result = verdict(segmentation(), slice_to_endplate_mm=None, lumbar_vertebrae_counted=None,
                     level_method="axial_only")
    assert (result.status, result.reason) == ("needs_review", "level_unverified")
    assert "lumbar_vertebrae_counted" not in result.checks


@pytest.mark.parametrize(("confidence", "status", "reason"), [
    (DEFAULT_LIMITS.min_confidence_ok + 0.01, "ok", None),
    (DEFAULT_LIMITS.min_confidence_ok - 0.01, "needs_review", "doubtful_segmentation"),
    (DEFAULT_LIMITS.min_confidence_any - 0.01, "not_measurable", "low_confidence"),
])
def test_confidence_decides_between_ok_review_and_no_number(confidence: float, status: str,
                                                            reason: str | None) -> None:
    result = verdict(segmentation(confidence=confidence))
    assert (result.status, result.reason) == (status, reason)


def test_a_missing_structure_gives_no_number() -> None:
    seg = segmentation()
    seg = SliceSegmentation(seg.psoas_left, seg.psoas_right, np.zeros(SHAPE, dtype=bool), 0.9, {})
    result = verdict(seg)
    assert (result.status, result.reason) == ("not_measurable", "structure_not_found")
    assert result.reason_text


@pytest.mark.parametrize(
    ("next_plvi", "status", "reason"),
    [(1.0 + DEFAULT_LIMITS.max_next_slice_plvi_change - 0.01, "ok", None),
     (1.0 - DEFAULT_LIMITS.max_next_slice_plvi_change - 0.01, "needs_review", "slice_sensitive"),
     (None, "ok", None)],  # no body on the next slice up: it cuts the disc
)
def test_a_number_that_depends_on_which_of_two_slices_is_right_needs_review(
    next_plvi: float | None, status: str, reason: str | None
) -> None:
    result = assess_next_slice(verdict(segmentation()), 1.0, next_plvi)
    assert (result.status, result.reason) == (status, reason)
    assert result.checks["next_slice_plvi_change"]["limit"] == DEFAULT_LIMITS.max_next_slice_plvi_change


def test_the_next_slice_does_not_lift_a_verdict_that_already_failed() -> None:
    failed = verdict(segmentation(left_mm2=500))
    assert assess_next_slice(failed, 1.0, 1.5).reason == failed.reason == "asymmetric_psoas"

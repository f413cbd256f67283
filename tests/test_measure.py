"""PLVI arithmetic: areas from pixel counts and PixelSpacing, the ratio, and the flag against the cut-off."""

from __future__ import annotations

import numpy as np
import pytest

from workers.analysis.measure import measure_plvi
from workers.analysis.segmentation import SliceSegmentation


def segmentation_with(left_px: int, right_px: int, vertebra_px: int) -> SliceSegmentation:
    def mask(count: int) -> np.ndarray:
        flat = np.zeros(100 * 100, dtype=bool)
        flat[:count] = True
        return flat.reshape(100, 100)

    return SliceSegmentation(mask(left_px), mask(right_px), mask(vertebra_px), 0.9, {})


def test_areas_are_pixel_count_times_row_and_column_spacing() -> None:
    measurement = measure_plvi(segmentation_with(800, 700, 2000), (0.5, 0.8), cutoff=0.79)
    assert measurement.psoas_left_mm2 == pytest.approx(800 * 0.4)
    assert measurement.psoas_right_mm2 == pytest.approx(700 * 0.4)
    assert measurement.vertebra_mm2 == pytest.approx(2000 * 0.4)


def test_plvi_is_the_sum_of_both_psoas_over_the_vertebral_body() -> None:
    measurement = measure_plvi(segmentation_with(800, 700, 2000), (0.9375, 0.9375), cutoff=0.79)
    assert measurement.plvi == pytest.approx(1500 / 2000)


def test_low_psoas_mass_is_plvi_below_the_cutoff_the_caller_gives() -> None:
    segmentation = segmentation_with(800, 700, 2000)  # PLVI 0.75
    assert measure_plvi(segmentation, (1.0, 1.0), cutoff=0.79).low_psoas_mass is True
    assert measure_plvi(segmentation, (1.0, 1.0), cutoff=0.603).low_psoas_mass is False
    assert measure_plvi(segmentation, (1.0, 1.0), cutoff=0.75).low_psoas_mass is False
    assert measure_plvi(segmentation, (1.0, 1.0), cutoff=0.603).cutoff == 0.603


def test_no_vertebral_body_gives_no_plvi_and_no_flag() -> None:
    measurement = measure_plvi(segmentation_with(800, 700, 0), (1.0, 1.0), cutoff=0.79)
    assert measurement.plvi is None
    assert measurement.low_psoas_mass is None


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (1.0, -1.0), (float("nan"), 1.0)])
def test_invalid_pixel_spacing_is_refused(spacing: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        measure_plvi(segmentation_with(1, 1, 1), spacing, cutoff=0.79)

"""Segmentation of both psoas muscles and the L4 vertebral body on one axial slice.

Specification by evidence: on a real axial T2 (MuscleMap, model labels of the psoas) the masks overlap the
reference, and an image with no vertebra in it is refused by the quality gate rather than measured.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi
from skimage.morphology import disk

from tests.real_data import REAL_DATA
from workers.analysis.measure import measure_plvi
from workers.analysis.outline import refine_star_outline
from workers.analysis.quality import assess_quality
from workers.analysis.segmentation import SliceSegmentation, canonical_view, segment_slice
from workers.analysis.vertebra import _fill_notches
from workers.phantom.study import PhantomOptions, generate_study

MUSCLEMAP = REAL_DATA / "musclemap-t2ax"
USUAL_AXIAL = {"patient_left": (0.0, 1.0), "patient_anterior": (-1.0, 0.0)}


def read_nifti_labels(path: Path) -> np.ndarray:
    """A NIfTI-1 label volume as (k, j, i) = (slice, row, column); enough of the format for these files."""
    data = gzip.decompress(path.read_bytes())
    dims = struct.unpack("<8h", data[40:56])
    datatype = struct.unpack("<h", data[70:72])[0]
    offset = int(struct.unpack("<f", data[108:112])[0])
    dtype = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 512: np.uint16}[datatype]
    count = dims[1] * dims[2] * dims[3]
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(dims[3], dims[2], dims[1])


def dice(found: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.logical_and(found, truth).sum() / max(found.sum() + truth.sum(), 1)


def index_directions(dataset: pydicom.Dataset) -> dict[str, tuple[float, float]]:
    """Patient left (+x) and anterior (-y, LPS) as (row, column) index vectors, from ImageOrientationPatient."""
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    along_row, along_column = orientation[:3], orientation[3:]  # directions of increasing column, row index
    return {
        "patient_left": (float(along_column[0]), float(along_row[0])),
        "patient_anterior": (float(-along_column[1]), float(-along_row[1])),
    }


def refused(seg: SliceSegmentation, spacing: tuple[float, float]) -> bool:
    verdict = assess_quality(measure_plvi(seg, spacing, 0.79), seg, slice_to_endplate_mm=2.0,
                             lumbar_vertebrae_counted=5, level_method="sagittal")
    return verdict.status == "not_measurable"


@pytest.mark.skipif(not MUSCLEMAP.is_dir(), reason="real data folder not present")
@pytest.mark.parametrize("instance", [15, 16, 17, 18, 19])
def test_psoas_masks_overlap_the_musclemap_labels_on_l4_slices(instance: int) -> None:
    """Labels 5/6 = psoas right/left; instances 15-20 lie in the L4 body (reference.json, levels by eye)."""
    dataset = pydicom.dcmread(MUSCLEMAP / "dicom" / f"IM-0001-{instance:04d}.dcm")
    labels = read_nifti_labels(MUSCLEMAP / "labels.nii.gz")[instance - 1]
    seg = segment_slice(dataset.pixel_array, tuple(dataset.PixelSpacing), **USUAL_AXIAL)
    assert dice(seg.psoas_right, labels == 5) >= 0.9
    assert dice(seg.psoas_left, labels == 6) >= 0.86
    assert not np.any(seg.vertebra & (seg.psoas_left | seg.psoas_right))
    assert seg.confidence >= 0.15


@pytest.mark.skipif(not MUSCLEMAP.is_dir(), reason="real data folder not present")
def test_a_body_with_marrow_as_dark_as_the_psoas_is_kept_apart_from_them() -> None:
    """Instance 20 (top of L4): this young subject's red marrow is nearly as dark as muscle there, and a body
    joined to both psoas used to leave no vertebra and no psoas at all (Dice 0). Bounds sit below the measured
    0.88 / 0.87."""
    dataset = pydicom.dcmread(MUSCLEMAP / "dicom" / "IM-0001-0020.dcm")
    labels = read_nifti_labels(MUSCLEMAP / "labels.nii.gz")[20 - 1]
    seg = segment_slice(dataset.pixel_array, tuple(dataset.PixelSpacing), **USUAL_AXIAL)
    assert dice(seg.psoas_right, labels == 5) >= 0.82
    assert dice(seg.psoas_left, labels == 6) >= 0.8
    assert not np.any(seg.vertebra & (seg.psoas_left | seg.psoas_right))


@pytest.mark.skipif(not MUSCLEMAP.is_dir(), reason="real data folder not present")
def test_a_body_with_marrow_as_dark_as_the_psoas_is_measured_on_its_cortex() -> None:
    """Instance 20 again: the marrow is only 0.08 of the fat-to-muscle range brighter than the psoas, but the
    dark cortex between them stands well out of the noise, so the good masks get a number (the confidence was 0
    when edges were judged against the signal range; 0.51 measured)."""
    dataset = pydicom.dcmread(MUSCLEMAP / "dicom" / "IM-0001-0020.dcm")
    seg = segment_slice(dataset.pixel_array, tuple(dataset.PixelSpacing), **USUAL_AXIAL)
    assert seg.confidence >= 0.15
    assert not refused(seg, tuple(float(value) for value in dataset.PixelSpacing))


@pytest.mark.skipif(not MUSCLEMAP.is_dir(), reason="real data folder not present")
def test_left_and_right_follow_the_patient_not_the_image() -> None:
    """The same slice stored mirrored (patient left at the image left) gives the same masks, mirrored."""
    dataset = pydicom.dcmread(MUSCLEMAP / "dicom" / "IM-0001-0016.dcm")
    spacing = tuple(dataset.PixelSpacing)
    usual = segment_slice(dataset.pixel_array, spacing, **USUAL_AXIAL)
    mirrored = segment_slice(dataset.pixel_array[:, ::-1], spacing, patient_left=(0.0, -1.0),
                             patient_anterior=(-1.0, 0.0))
    assert usual.psoas_left.any() and usual.psoas_right.any()
    assert dice(mirrored.psoas_left[:, ::-1], usual.psoas_left) > 0.95
    assert dice(mirrored.psoas_right[:, ::-1], usual.psoas_right) > 0.95
    # The patient's left psoas lies at the image right in the usual orientation.
    assert np.nonzero(usual.psoas_left)[1].mean() > np.nonzero(usual.psoas_right)[1].mean()


@pytest.mark.skipif(not MUSCLEMAP.is_dir(), reason="real data folder not present")
@pytest.mark.parametrize("view", ["crop", "transposed", "anisotropic"])
def test_odd_views_of_a_real_slice_segment_without_error(view: str) -> None:
    """Crops that cut the anatomy, transposed storage and unequal pixel spacing: a result, never an exception."""
    pixels = pydicom.dcmread(MUSCLEMAP / "dicom" / "IM-0001-0017.dcm").pixel_array
    if view == "crop":
        seg = segment_slice(pixels[60:180, 40:150], (0.9375, 0.9375), **USUAL_AXIAL)
    elif view == "transposed":
        seg = segment_slice(pixels.T, (0.9375, 0.9375), patient_left=(1.0, 0.0), patient_anterior=(0.0, -1.0))
        usual = segment_slice(pixels, (0.9375, 0.9375), **USUAL_AXIAL)
        assert dice(seg.psoas_left.T, usual.psoas_left) > 0.95
    else:
        seg = segment_slice(pixels[:, ::2], (0.9375, 1.875), **USUAL_AXIAL)
        assert seg.psoas_left.any() and seg.vertebra.any()
    assert 0.0 <= seg.confidence <= 1.0


@pytest.mark.parametrize("image", [
    np.zeros((256, 256), dtype=np.uint16),
    np.random.default_rng(7).rayleigh(20.0, (256, 256)),
    np.random.default_rng(8).normal(500.0, 150.0, (256, 256)).clip(0),
], ids=["blank", "rician_background", "noise"])
def test_an_image_without_a_vertebra_gets_low_confidence_and_is_refused(image: np.ndarray) -> None:
    seg = segment_slice(image, (1.0, 1.0), **USUAL_AXIAL)
    assert seg.confidence < 0.15
    assert refused(seg, (1.0, 1.0))


def test_a_body_whose_marrow_darkens_towards_the_back_is_outlined_on_its_edge_all_round() -> None:
    """Red marrow bright in front (0.9) and dark behind (0.3) against dark tissue (0): judged against one level
    for the whole body, the back's marrow is already half-way down and the outline is cut 8 mm short there; with
    each ray's own marrow level it lies on the edge within a millimetre or two."""
    rows, columns = np.indices((100, 100))
    body = (rows - 50) ** 2 + (columns - 50) ** 2 <= 20**2
    marrow = 0.9 - 0.6 * np.clip((rows - 30) / 40, 0.0, 1.0)
    image = ndi.gaussian_filter(np.where(body, marrow, 0.0), 1.0)
    rough = ndi.binary_erosion(body, disk(3))
    settings = {"inside_level": float(np.median(image[rough])), "minimum_step": 0.15, "max_shift_mm": 4.0}
    one_level, _ = refine_star_outline(image, rough, **settings)
    per_ray, _ = refine_star_outline(image, rough, **settings, local_inside_mm=6.0)
    assert np.nonzero(one_level[:, 50])[0].max() < 65
    assert np.nonzero(per_ray[:, 50])[0].max() >= 68
    assert 2 * (per_ray & body).sum() / (per_ray.sum() + body.sum()) >= 0.97


def rounded_rectangle(half_width: float, half_depth: float, corner: float) -> np.ndarray:
    """A convex lumbar body of 2 * half_width by 2 * half_depth mm (1 mm grid), canonical view, centre (50, 60)."""
    rows, columns = np.indices((100, 120))
    inner_rows = np.maximum(np.abs(rows - 50) - (half_depth - corner), 0)
    inner_columns = np.maximum(np.abs(columns - 60) - (half_width - corner), 0)
    return inner_rows**2 + inner_columns**2 <= corner**2


def test_a_wedge_of_darker_marrow_cut_out_of_the_side_of_the_body_is_given_back() -> None:
    """A darker patch at the side stops the ray search at the patch's border: an 8 mm deep wedge is missing."""
    body = rounded_rectangle(24, 17, 6)
    rows, columns = np.indices(body.shape)
    wedge = (columns < 46) & (np.abs(rows - 50) < (columns - 36))
    filled = _fill_notches(body & ~wedge)
    assert (filled & body).sum() >= 0.99 * body.sum()
    assert not (filled & ~body).any()


def test_the_concave_back_wall_of_the_body_is_left_as_it_is() -> None:
    """Straight back (higher rows) the body's wall dips towards the canal: anatomy, not a patch of marrow."""
    body = rounded_rectangle(24, 17, 6)
    rows, columns = np.indices(body.shape)
    canal_side = (rows - 72) ** 2 + (columns - 60) ** 2 <= 9**2
    assert np.array_equal(_fill_notches(body & ~canal_side), body & ~canal_side)


def test_canonical_view_turns_any_axis_aligned_orientation_back_to_anterior_up_left_at_right() -> None:
    image = np.arange(12).reshape(3, 4)
    view = canonical_view(patient_left=(0.0, -1.0), patient_anterior=(1.0, 0.0))  # flipped both ways
    assert np.array_equal(view.forward(image), image[::-1, ::-1])
    transposed = canonical_view(patient_left=(1.0, 0.0), patient_anterior=(0.0, -1.0))
    assert np.array_equal(transposed.forward(image), image.T)
    for orientation in (view, transposed):
        assert np.array_equal(orientation.backward(orientation.forward(image)), image)


def test_orientation_vectors_along_one_axis_are_refused() -> None:
    with pytest.raises(ValueError, match="not axial"):
        segment_slice(np.zeros((64, 64)), (1.0, 1.0), patient_left=(0.0, 1.0), patient_anterior=(0.0, -1.0))


PHANTOM_SEEDS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def phantom_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Segment, measure and gate the reference slice of a few ordinary phantom studies (axial T2 only)."""
    results = []
    for seed in PHANTOM_SEEDS:
        folder = tmp_path_factory.mktemp(f"phantom-{seed}")
        truth = generate_study(seed, folder, PhantomOptions(sagittal=None, localizer=False))
        reference = truth.reference
        dataset = pydicom.dcmread(folder / reference.path)
        spacing = tuple(float(value) for value in dataset.PixelSpacing)
        seg = segment_slice(dataset.pixel_array, spacing, **index_directions(dataset))
        measured = measure_plvi(seg, spacing, 0.79)
        verdict = assess_quality(measured, seg, slice_to_endplate_mm=reference.distance_to_endplate_mm,
                                 lumbar_vertebrae_counted=truth.lumbar_vertebrae, level_method="sagittal")
        results.append({
            "seed": seed,
            "status": verdict.status,
            "confidence": round(seg.confidence, 2),
            "dice_psoas_left": round(dice(seg.psoas_left, truth.masks["psoas_left"]), 3),
            "dice_psoas_right": round(dice(seg.psoas_right, truth.masks["psoas_right"]), 3),
            "dice_vertebra": round(dice(seg.vertebra, truth.masks["vertebra"]), 3),
            "psoas_ratio": (measured.psoas_left_mm2 + measured.psoas_right_mm2)
            / (reference.psoas_left_mm2 + reference.psoas_right_mm2),
            "vertebra_ratio": measured.vertebra_mm2 / reference.vertebra_mm2,
            "plvi_error": abs(measured.plvi - truth.plvi) if measured.plvi is not None else None,
        })
    return results


def test_what_the_gate_passes_on_phantoms_agrees_with_the_truth(phantom_results: list[dict]) -> None:
    """A result reported as ok overlaps the exact truth with Dice >= 0.88 per structure (a 1 mm band around a
    psoas of 600 mm2 is already 0.1 of Dice: 0.88 is about what two careful readers reach) and each area is
    within 12 % (the spread of repeated hand outlines of psoas CSA is about 5-10 %)."""
    passed = [result for result in phantom_results if result["status"] == "ok"]
    assert len(passed) >= 3, phantom_results
    for result in passed:
        assert min(result["dice_psoas_left"], result["dice_psoas_right"], result["dice_vertebra"]) >= 0.88, result
        assert 0.88 <= result["psoas_ratio"] <= 1.12, result
        assert 0.88 <= result["vertebra_ratio"] <= 1.12, result
        assert result["plvi_error"] <= 0.2, result


def test_phantom_structures_are_found_with_high_overlap_overall(phantom_results: list[dict]) -> None:
    """Median Dice over the seeds, whatever the verdict."""
    psoas = [result[key] for result in phantom_results for key in ("dice_psoas_left", "dice_psoas_right")]
    assert np.median(psoas) >= 0.92, phantom_results
    assert np.median([result["dice_vertebra"] for result in phantom_results]) >= 0.9, phantom_results

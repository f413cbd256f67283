"""Segment the left and right psoas and the L4 vertebral body on one axial T2-weighted slice.

Classical method (numpy, scipy.ndimage, scikit-image), CPU only. The slice is turned to a canonical view
(anterior up, the patient's left at the right of the image), resampled to a 1 mm grid so every anatomical prior
is written in millimetres, corrected for the receive-coil bias field, and then:

1. the vertebral body is found as the round, homogeneous region near the midline flanked by dark muscle on both
   sides (vertebra.py); pedicles and posterior elements are cut off by an opening wider than a pedicle;
2. each psoas is grown from a seed just lateral to the body as the dark (muscle) region there, split from the
   vessels, bowel and quadratus lumborum it touches, with holes filled so intramuscular fat counts (psoas.py);
3. both outlines are then placed between pixels, ray by ray, half-way between the structure and whatever lies
   beyond it (outline.py).

Every step records its evidence (0..1 terms in ``evidence``); ``confidence`` is the weakest structure's
confidence times the consistency of the three outlines, so the quality gate can refuse doubtful cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image
from skimage.transform import resize

from workers.analysis.evidence import ramp
from workers.analysis.psoas import find_psoas
from workers.analysis.vertebra import find_vertebral_body

WORK_SPACING_MM = 1.0
"""Pixel size of the working grid: the anatomical priors below are in millimetres, one pixel each."""

BIAS_SIGMA_MM = 25.0
"""Scale of the receive-coil bias field: far larger than a psoas, far smaller than the field of view."""


@dataclass(frozen=True)
class SliceSegmentation:
    """Masks on the input slice's own pixel grid, and how sure the method is of them.

    ``psoas_left`` and ``psoas_right`` are the patient's left and right psoas (not the image's), the outline
    including intramuscular fat; ``vertebra`` is the vertebral body without pedicles and posterior elements.
    ``confidence`` is 0 (nothing found) to 1; ``evidence`` holds the named figures it was derived from.
    """

    psoas_left: np.ndarray
    psoas_right: np.ndarray
    vertebra: np.ndarray
    confidence: float
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CanonicalView:
    """How the input grid maps onto the canonical one: anterior towards row 0, patient left towards higher columns."""

    transpose: bool
    flip_rows: bool
    flip_columns: bool

    def forward(self, image: np.ndarray) -> np.ndarray:
        view = image.T if self.transpose else image
        if self.flip_rows:
            view = view[::-1, :]
        if self.flip_columns:
            view = view[:, ::-1]
        return view

    def backward(self, image: np.ndarray) -> np.ndarray:
        view = image
        if self.flip_columns:
            view = view[:, ::-1]
        if self.flip_rows:
            view = view[::-1, :]
        return np.ascontiguousarray(view.T if self.transpose else view)


def canonical_view(patient_left: tuple[float, float], patient_anterior: tuple[float, float]) -> CanonicalView:
    """The axis permutation and flips that bring the slice to the canonical view.

    The direction vectors are (row, column) components in index space. Each is snapped to the nearest image
    axis: an in-plane rotation of a few degrees leaves anatomy recognisable and avoids interpolating the image.
    """
    left = np.asarray(patient_left, dtype=float)
    anterior = np.asarray(patient_anterior, dtype=float)
    if left.shape != (2,) or anterior.shape != (2,) or not (np.all(np.isfinite(left)) and np.all(np.isfinite(anterior))):
        raise ValueError("patient_left and patient_anterior must be finite (row, column) vectors")
    anterior_axis = int(np.argmax(np.abs(anterior)))
    left_axis = int(np.argmax(np.abs(left)))
    if anterior_axis == left_axis:
        raise ValueError(
            f"patient_left {tuple(left)} and patient_anterior {tuple(anterior)} point along the same image axis; "
            "the slice is not axial"
        )
    transpose = anterior_axis == 1
    return CanonicalView(
        transpose=transpose,
        flip_rows=bool(anterior[anterior_axis] > 0),
        flip_columns=bool(left[left_axis] < 0),
    )


def segment_slice(
    image: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    patient_left: tuple[float, float],
    patient_anterior: tuple[float, float],
) -> SliceSegmentation:
    """Outline both psoas muscles and the vertebral body on one axial slice.

    Parameters
    ----------
    image
        2D array of any numeric type (stored pixel values; MR intensities have no unit).
    pixel_spacing_mm
        (row spacing, column spacing) in mm, as DICOM PixelSpacing.
    patient_left, patient_anterior
        Unit vectors in (row, column) index space pointing to the patient's left and anterior; for the usual
        axial orientation 1\\0\\0\\0\\1\\0 they are (0, 1) and (-1, 0).

    Returns
    -------
    SliceSegmentation
        Boolean masks of ``image.shape``; empty masks and confidence 0 when no vertebra is found.
    """
    pixels = np.asarray(image)
    if pixels.ndim != 2 or min(pixels.shape) < 16:
        raise ValueError(f"image must be a 2D slice of at least 16x16 pixels, got shape {pixels.shape}")
    spacing = np.asarray(pixel_spacing_mm, dtype=float)
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"pixel_spacing_mm must be two positive numbers (row, column), got {pixel_spacing_mm}")

    view = canonical_view(patient_left, patient_anterior)
    canonical = view.forward(np.nan_to_num(pixels.astype(np.float64)))
    canonical_spacing = spacing[::-1] if view.transpose else spacing
    work_shape = tuple(max(int(round(size * step / WORK_SPACING_MM)), 16)
                       for size, step in zip(canonical.shape, canonical_spacing))
    work = resize(canonical, work_shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)

    corrected, body = correct_bias(work)
    empty = np.zeros(pixels.shape, dtype=bool)
    if body is None:
        return SliceSegmentation(empty, empty.copy(), empty.copy(), 0.0, {"body_found": 0.0})

    vertebra = find_vertebral_body(corrected, body)
    if vertebra is None:
        return SliceSegmentation(empty, empty.copy(), empty.copy(), 0.0, {"vertebra_found": 0.0})
    psoas_right, psoas_left = find_psoas(corrected, body, vertebra.mask)

    evidence = {"vertebra_found": 1.0, **vertebra.evidence, **psoas_right.evidence_for("right"),
                **psoas_left.evidence_for("left")}
    consistency = _consistency(vertebra.mask, psoas_right.mask, psoas_left.mask)
    evidence.update(consistency)
    confidence = min(vertebra.confidence, psoas_right.confidence, psoas_left.confidence)
    confidence = float(np.clip(confidence * consistency["consistency"], 0.0, 1.0))
    evidence["confidence"] = confidence

    def to_input_grid(mask: np.ndarray) -> np.ndarray:
        back = resize(mask.astype(np.float32), canonical.shape, order=1, mode="edge", anti_aliasing=False)
        return view.backward(back >= 0.5)

    return SliceSegmentation(
        psoas_left=to_input_grid(psoas_left.mask),
        psoas_right=to_input_grid(psoas_right.mask),
        vertebra=to_input_grid(vertebra.mask),
        confidence=confidence,
        evidence=evidence,
    )


def _consistency(vertebra: np.ndarray, psoas_right: np.ndarray, psoas_left: np.ndarray) -> dict[str, float]:
    """Whether the three outlines fit together as at L4 (canonical view, 1 mm grid), 0..1.

    At L4 both psoas straddle the body's front-to-back centre, and an adult L4 body is 30-40 mm deep. A body
    whose centre lies well behind the psoas centres, or that is shallow, has most likely lost a band in front or
    behind (a slice grazing the endplate), which would inflate PLVI.
    """
    if not (psoas_right.any() and psoas_left.any()):
        return {"consistency": 0.0}
    vertebra_rows = np.nonzero(vertebra)[0]
    psoas_centre = 0.5 * (np.nonzero(psoas_right)[0].mean() + np.nonzero(psoas_left)[0].mean())
    # Rows grow towards the back: a positive offset means the body lies behind the psoas.
    offset = float(vertebra_rows.mean() - psoas_centre)
    depth = float(vertebra_rows.max() - vertebra_rows.min() + 1)
    terms = {"vertebra_behind_psoas_mm": offset, "vertebra_depth_mm": depth,
             "centred_term": ramp(offset, 7.0, 3.5), "depth_term": ramp(depth, 24.0, 29.0)}
    return {**terms, "consistency": terms["centred_term"] * terms["depth_term"]}


def correct_bias(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Divide out the smooth receive-coil bias field; fat (the bright class on T2) comes out near 1.

    The field is estimated by normalised convolution over the bright tissue only: dividing by the plain local mean
    would also flatten the muscle-to-fat contrast the segmentation relies on. Returns the corrected image and the
    patient's body mask, or (image, None) when the slice holds no body (blank or pure noise).
    """
    smooth = ndi.gaussian_filter(image, 2.0)
    if not np.isfinite(smooth).all() or np.ptp(smooth) <= 0:
        return image, None
    threshold = threshold_otsu(smooth)
    labels, count = ndi.label(smooth > 0.3 * threshold)
    if count == 0:
        return image, None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    # Muscle on T2 can be as dark as the air outside, and the field of view often cuts the trunk, so filling holes
    # would leave the psoas outside; the trunk's cross-section is convex enough for its hull to stand in.
    body = convex_hull_image(labels == int(np.argmax(sizes)))
    if body.sum() < 2000:  # less than 20 cm2 of tissue: no abdomen in this slice
        return image, None
    bright = body & (smooth > threshold)
    weight = ndi.gaussian_filter(bright.astype(np.float64), BIAS_SIGMA_MM)
    field_estimate = ndi.gaussian_filter(image * bright, BIAS_SIGMA_MM) / np.maximum(weight, 1e-3)
    floor = np.percentile(image[bright], 5) if bright.any() else 1.0
    corrected = image / np.maximum(field_estimate, max(floor, 1e-6))
    return corrected, body

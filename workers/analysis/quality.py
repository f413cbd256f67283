"""The quality gate: decide whether a measurement may be reported as is, must be checked by a human, or has no number.

A surgeon may change care on this number, so every rule errs towards review. Status:

- ``ok``: every check passed;
- ``needs_review``: a number exists but something about it is unusual (a human must check it before use);
- ``not_measurable``: no trustworthy number (a structure was not found, or the evidence is too weak).

The reason is the first failed check in order of severity; every check is reported with its value and limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import label, regionprops

from workers.analysis.measure import Measurement
from workers.analysis.segmentation import SliceSegmentation


@dataclass(frozen=True)
class QualityLimits:
    """Limits of the gate, each with the reason it is where it is.

    psoas_mm2: one psoas at L4 in adults is about 400-800 mm2 in frail elderly women and up to 2500-3000 mm2 in
        young muscular men; below 200 mm2 or above 3500 mm2 a segmentation failure is likelier than the anatomy.
    vertebra_mm2: the L4 body is about 1200-2200 mm2 in adults (smaller in small women, larger in tall men);
        800-3000 mm2 leaves room for both while catching a body cut by the pedicle cut or leaking into the disc.
    plvi: the published cohort spreads roughly 0.3-1.5; outside 0.2-2.5 the ratio itself says something failed.
    min_psoas_ratio: smaller/larger psoas; in health the sides differ by about 5-10 % (rarely 20 %), so a
        ratio below 0.75 is either one-sided atrophy (old hip disease, radiculopathy, an abscess) or a mask that
        lost part of a muscle (a fatty cleft): either way a human should look.
    min_solidity: psoas and body are convex-ish (solidity about 0.9-0.97); a ragged mask leaked somewhere.
    max_eccentricity: a psoas at L4 is oval, rarely longer than about 2.5 times its width (eccentricity 0.92);
        the body is wider than deep (about 0.7); a thin strip is a vessel, a cleft or a leak.
    max_slice_to_endplate_mm: the first axial slice below the endplate is within one slice spacing (4-6 mm)
        of it; beyond 10 mm (a third of L4's height) the slice is no longer "just below the upper endplate".
    lumbar_vertebrae: five; a sacralised L5 or lumbarised S1 makes "L4" ambiguous.
    min_confidence_ok / min_confidence_any: below the first a human checks, below the second no number is given.
    max_next_slice_plvi_change: when the endplate's position cannot tell the measured slice from the next one up
        (see workers.analysis.slices), both are measured; psoas grow and the body narrows caudally, so PLVI may
        change 0.05-0.1 from one slice to the next, and with the segmentation's own error (about 0.03) a change
        above 0.05 could put the number more than 0.1 from the one on the right slice.
    """

    psoas_mm2: tuple[float, float] = (200.0, 3500.0)
    vertebra_mm2: tuple[float, float] = (800.0, 3000.0)
    plvi: tuple[float, float] = (0.2, 2.5)
    min_psoas_ratio: float = 0.75
    min_solidity: float = 0.85
    max_eccentricity: float = 0.95
    max_slice_to_endplate_mm: float = 10.0
    lumbar_vertebrae: int = 5
    min_confidence_ok: float = 0.5
    min_confidence_any: float = 0.15
    max_next_slice_plvi_change: float = 0.05


DEFAULT_LIMITS = QualityLimits()


@dataclass(frozen=True)
class QualityVerdict:
    """``checks`` maps each check's name to {"value", "limit", "pass"} (JSON-ready)."""

    status: str
    reason: str | None
    reason_text: str | None
    checks: dict[str, dict[str, Any]]


_SENTENCES = {
    "structure_not_found": "A psoas or the L4 vertebral body was not found on the chosen slice; no number is given.",
    "low_confidence": "The outlines rest on weak image evidence; no number is given.",
    "segmentation_implausible": "An area, shape or the PLVI is outside the adult range; check the outlines.",
    "asymmetric_psoas": "The left and right psoas differ more than is usual; check the outlines and the anatomy.",
    "transitional_anatomy": "The number of lumbar vertebrae is not five, so the level called L4 may be wrong.",
    "slice_far_from_endplate": "The measured slice is far from the L4 upper endplate; check the level.",
    "level_unverified": "L4 was located without a sagittal series; check the level before using the number.",
    "doubtful_segmentation": "The outlines rest on moderate image evidence; check them before using the number.",
    "slice_sensitive": "The PLVI on the next slice up differs by more than {limit}, and the L4 endplate's position "
    "cannot tell which of the two is just below it; check the slice.",
}


def assess_quality(
    measurement: Measurement,
    segmentation: SliceSegmentation,
    *,
    slice_to_endplate_mm: float | None,
    lumbar_vertebrae_counted: int | None,
    level_method: str,
    limits: QualityLimits = DEFAULT_LIMITS,
) -> QualityVerdict:
    """Run every check and return the verdict; ``level_method`` is "sagittal" or "axial_only"."""
    checks: dict[str, dict[str, Any]] = {}
    failed: list[str] = []

    def check(name: str, value: Any, limit: Any, passed: bool, reason: str) -> None:
        checks[name] = {"value": value, "limit": limit, "pass": bool(passed)}
        if not passed:
            failed.append(reason)

    masks = {"psoas_left": segmentation.psoas_left, "psoas_right": segmentation.psoas_right,
             "vertebra": segmentation.vertebra}
    found = {name: bool(np.any(mask)) for name, mask in masks.items()}
    check("structures_found", sorted(name for name, ok in found.items() if ok), sorted(masks),
          all(found.values()), "structure_not_found")
    confidence = round(float(segmentation.confidence), 3)
    check("confidence_minimum", confidence, limits.min_confidence_any,
          confidence >= limits.min_confidence_any, "low_confidence")

    for side, area in (("psoas_left", measurement.psoas_left_mm2), ("psoas_right", measurement.psoas_right_mm2)):
        check(f"{side}_area_mm2", round(area, 1), list(limits.psoas_mm2),
              limits.psoas_mm2[0] <= area <= limits.psoas_mm2[1], "segmentation_implausible")
    check("vertebra_area_mm2", round(measurement.vertebra_mm2, 1), list(limits.vertebra_mm2),
          limits.vertebra_mm2[0] <= measurement.vertebra_mm2 <= limits.vertebra_mm2[1], "segmentation_implausible")
    plvi = None if measurement.plvi is None else round(measurement.plvi, 4)
    check("plvi_range", plvi, list(limits.plvi), plvi is not None and limits.plvi[0] <= plvi <= limits.plvi[1],
          "segmentation_implausible")
    for name, mask in masks.items():
        if found[name]:
            solidity, eccentricity, pieces = _shape(mask)
            check(f"{name}_solidity", round(solidity, 3), limits.min_solidity, solidity >= limits.min_solidity,
                  "segmentation_implausible")
            check(f"{name}_eccentricity", round(eccentricity, 3), limits.max_eccentricity,
                  eccentricity <= limits.max_eccentricity, "segmentation_implausible")
            check(f"{name}_pieces", pieces, 1, pieces == 1, "segmentation_implausible")

    larger = max(measurement.psoas_left_mm2, measurement.psoas_right_mm2)
    ratio = min(measurement.psoas_left_mm2, measurement.psoas_right_mm2) / larger if larger > 0 else 0.0
    check("psoas_symmetry_ratio", round(ratio, 3), limits.min_psoas_ratio, ratio >= limits.min_psoas_ratio,
          "asymmetric_psoas")
    if lumbar_vertebrae_counted is not None:
        check("lumbar_vertebrae_counted", lumbar_vertebrae_counted, limits.lumbar_vertebrae,
              lumbar_vertebrae_counted == limits.lumbar_vertebrae, "transitional_anatomy")
    if slice_to_endplate_mm is not None:
        distance = round(abs(float(slice_to_endplate_mm)), 2)
        check("slice_to_endplate_mm", distance, limits.max_slice_to_endplate_mm,
              distance <= limits.max_slice_to_endplate_mm, "slice_far_from_endplate")
    check("level_method", level_method, "sagittal", level_method == "sagittal", "level_unverified")
    check("confidence", confidence, limits.min_confidence_ok, confidence >= limits.min_confidence_ok,
          "doubtful_segmentation")

    if not failed:
        return QualityVerdict("ok", None, None, checks)
    reason = failed[0]
    status = "not_measurable" if reason in ("structure_not_found", "low_confidence") else "needs_review"
    return QualityVerdict(status, reason, _SENTENCES[reason], checks)


def assess_next_slice(
    verdict: QualityVerdict, plvi: float | None, next_plvi: float | None, limits: QualityLimits = DEFAULT_LIMITS
) -> QualityVerdict:
    """Add the check of a measurement against the one on the slice next up, which may as well be the right one.

    Asked only for a verdict that is otherwise ok: it costs a second segmentation. A next slice without a number
    (no body found on it) cuts the disc, so it cannot be the slice just below the endplate: the check passes."""
    change = None if plvi is None or next_plvi is None else round(abs(plvi - next_plvi), 4)
    passed = change is None or change <= limits.max_next_slice_plvi_change
    checks = {**verdict.checks, "next_slice_plvi_change": {
        "value": change, "limit": limits.max_next_slice_plvi_change, "pass": passed}}
    if passed or verdict.status != "ok":
        return QualityVerdict(verdict.status, verdict.reason, verdict.reason_text, checks)
    text = _SENTENCES["slice_sensitive"].format(limit=limits.max_next_slice_plvi_change)
    return QualityVerdict("needs_review", "slice_sensitive", text, checks)


def _shape(mask: np.ndarray) -> tuple[float, float, int]:
    """Solidity and eccentricity of the largest piece, and the number of pieces."""
    labels = label(mask, connectivity=2)
    regions = regionprops(labels)
    largest = max(regions, key=lambda region: region.area)
    return float(largest.solidity), float(largest.eccentricity), len(regions)

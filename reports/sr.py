"""TID 1500 Measurement Report of one PLVI result as a Comprehensive 3D SR, in the source study.

Content (PS3.16 TID 1500, built with highdicom):

- one Planar ROI Measurements group (TID 1410) per structure (left psoas major, right psoas major, L4 vertebral
  body), each holding its Area in mm2 and referring to the matching segment of the SEG by its segment number;
- one Measurements group (TID 1501) for the study-level outcome: PLVI ({ratio}), the cut-off used ({ratio}),
  "Low psoas mass" Yes/No, the status, and the reason when the status is not `ok`;
- the algorithm's name and version in every group (TID 4019) and as the device observer.

A `not_measurable` result has no areas and no SEG: its SR holds only the outcome group, so the worklist shows that
the study was screened and why it has no number.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom import Dataset

from reports import codes
from reports.instance import NewInstance
from reports.seg import STRUCTURES, Structure


def build_sr(
    result: dict[str, Any],
    source: Dataset,
    *,
    segmentation: hd.seg.Segmentation | None,
    instance: NewInstance,
    tracking_uids: dict[str, str],
    device_uid: str,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR for `result` (DESIGN.md's result object).

    Parameters
    ----------
    source:
        The measured slice; for a result without one, any instance of the study (its patient and study are
        copied, and it is listed as evidence).
    segmentation:
        The SEG built from the same masks, or None when there are none.
    tracking_uids:
        A UID per tracking identifier (`psoas_left`, `psoas_right`, `vertebra`, `plvi`), derived by the caller so
        that a retry produces the same SR.
    """
    algorithm = hd.sr.AlgorithmIdentification(name=instance.algorithm_name, version=instance.algorithm_version)
    measured_slice = _is_measured_slice(result, source)
    groups: list[Any] = []
    for number, structure in enumerate(STRUCTURES, start=1):
        area = result.get(structure.area_key)
        if area is None:
            continue
        groups.append(
            _structure_group(
                structure, number, float(area), source, segmentation, tracking_uids[structure.mask_key], algorithm
            )
        )
    groups.append(_outcome_group(result, source if measured_slice else None, tracking_uids["plvi"], algorithm))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DEVICE_OBSERVER,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid,
            name=instance.algorithm_name,
            manufacturer_name=instance.manufacturer,
            model_name=instance.algorithm_version,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    evidence = [source] if segmentation is None else [source, segmentation]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=instance.series_instance_uid,
        series_number=9001,
        sop_instance_uid=instance.sop_instance_uid,
        instance_number=1,
        manufacturer=instance.manufacturer,
        is_complete=True,
        series_description="PLVI report",
        coding_schemes=[codes.coding_scheme_identification()],
        **instance.dates(),
    )
    _reference_segments_by_number(sr)
    return sr


def _reference_segments_by_number(item: Dataset) -> None:
    """Drop the frame number where a segment number is given.

    highdicom writes both into TID 1410's Referenced Segmentation Frame, but PS3.3 Table 10-3 (Image SOP Instance
    Reference Macro) makes Referenced Frame Number conditional on Referenced Segment Number being absent, and
    dciodvfy reports both together as an error. One frame per segment makes the segment number sufficient."""
    for child in item.get("ContentSequence", []):
        for reference in child.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in reference and "ReferencedFrameNumber" in reference:
                del reference.ReferencedFrameNumber
        _reference_segments_by_number(child)


def _is_measured_slice(result: dict[str, Any], source: Dataset) -> bool:
    chosen = result.get("slice") or {}
    return bool(chosen) and chosen.get("sop_instance_uid") == source.SOPInstanceUID


def _structure_group(
    structure: Structure,
    segment_number: int,
    area_mm2: float,
    source: Dataset,
    segmentation: hd.seg.Segmentation | None,
    tracking_uid: str,
    algorithm: hd.sr.AlgorithmIdentification,
) -> Any:
    """TID 1410 with the region given by the SEG segment; TID 1501 (no region) when there is no SEG."""
    finding_site = hd.sr.FindingSite(anatomic_location=structure.anatomic_region, laterality=structure.laterality)
    area = hd.sr.Measurement(
        name=codes.AREA,
        value=area_mm2,
        unit=codes.SQUARE_MILLIMETER,
        algorithm_id=algorithm,
        finding_sites=[finding_site],
    )
    common = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=structure.label),
        finding_type=structure.property_type,
        algorithm_id=algorithm,
        finding_sites=[finding_site],
        measurements=[area],
    )
    if segmentation is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        frame_number=segment_number,  # the SEG holds one frame per segment, in segment order
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)


def _outcome_group(
    result: dict[str, Any],
    measured_source: Dataset | None,
    tracking_uid: str,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """PLVI, the cut-off, the low psoas mass flag, the status and its reason."""
    measurements = []
    if result.get("plvi") is not None:
        measurements.append(
            hd.sr.Measurement(name=codes.PLVI, value=float(result["plvi"]), unit=codes.RATIO_UNIT, algorithm_id=algorithm)
        )
    measurements.append(
        hd.sr.Measurement(name=codes.PLVI_CUTOFF, value=float(result["cutoff"]), unit=codes.RATIO_UNIT)
    )
    evaluations = []
    if result.get("low_psoas_mass") is not None:
        flag = codes.YES if result["low_psoas_mass"] else codes.NO
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.LOW_PSOAS_MASS, value=flag))
    evaluations.append(hd.sr.QualitativeEvaluation(name=codes.STATUS, value=codes.status_code(result["status"])))
    if result.get("reason"):
        reason = codes.reason_code(result["reason"], result.get("reason_text"))
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.STATUS_REASON, value=reason))
    source_images = None
    if measured_source is not None:
        source_images = [
            hd.sr.SourceImageForMeasurementGroup(measured_source.SOPClassUID, measured_source.SOPInstanceUID)
        ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="PLVI"),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=source_images,
    )

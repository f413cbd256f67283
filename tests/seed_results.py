"""Analysed studies for the dashboard, HL7 and export tests: real DICOM files in the spool, Study/Instance rows and
Analysis rows whose `result` is DESIGN.md's result object, as the analysis pipeline stores them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy.engine import Engine

from plvi.db import session_scope
from plvi.models import Analysis, Instance, Series, Study
from plvi.settings import Settings
from reports.masks import store_masks

SIZE = 128
PIXEL_MM = 1.5


@dataclass(frozen=True)
class SeededStudy:
    patient_id: str
    patient_name: str
    accession: str
    study_uid: str
    sop_uid: str
    analysis_id: int
    plvi: float | None
    status: str


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def anatomy_masks(psoas_radius: float) -> dict[str, np.ndarray]:
    """Two psoas discs beside one vertebral body, in image (row, column) space; patient left is image right."""
    shape = (SIZE, SIZE)
    return {
        "vertebra": _disc(shape, (60, 64), 18),
        "psoas_left": _disc(shape, (68, 64 + 34), psoas_radius),
        "psoas_right": _disc(shape, (68, 64 - 34), psoas_radius),
    }


def write_slice(path: Path, *, patient_id: str, patient_name: str, study_uid: str, series_uid: str, sop_uid: str,
                accession: str, sex: str, age: int, study_date: str, masks: dict[str, np.ndarray]) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.PatientSex, ds.PatientAge, ds.PatientBirthDate = sex, f"{age:03d}Y", f"{int(study_date[:4]) - age}0101"
    ds.StudyDate, ds.AccessionNumber, ds.Modality, ds.InstanceNumber = study_date, accession, "MR", 1
    ds.Rows = ds.Columns = SIZE
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-96, -96, 40]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    image = np.full((SIZE, SIZE), 300, dtype=np.uint16)
    image[masks["vertebra"]] = 900
    image[masks["psoas_left"] | masks["psoas_right"]] = 600
    ds.PixelData = image.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def result_object(study_uid: str, series_uid: str, sop_uid: str, status: str, masks: dict[str, np.ndarray],
                  cutoff: float) -> dict[str, object]:
    """DESIGN.md's result object with the areas of the masks."""
    areas = {name: round(float(mask.sum()) * PIXEL_MM * PIXEL_MM, 1) for name, mask in masks.items()}
    measured = status != "not_measurable"
    plvi = round((areas["psoas_left"] + areas["psoas_right"]) / areas["vertebra"], 4) if measured else None
    reason = {"ok": None, "needs_review": "level_uncertain", "not_measurable": "no_axial_t2"}[status]
    checks = {
        "psoas_left_area_mm2": {"value": areas["psoas_left"], "limit": [200.0, 3500.0], "pass": True},
        "slice_to_endplate_mm": {"value": 3.1, "limit": 10.0, "pass": True},
        "lumbar_vertebrae_counted": {"value": 5, "limit": 5, "pass": True},
        "level_confidence": {"value": 0.31 if status == "needs_review" else 0.9, "limit": 0.5,
                             "pass": status != "needs_review"},
    }
    return {
        "study_instance_uid": study_uid,
        "status": status,
        "reason": reason,
        "reason_text": None if reason is None else f"explanation of {reason}",
        "plvi": plvi,
        "psoas_left_mm2": areas["psoas_left"] if measured else None,
        "psoas_right_mm2": areas["psoas_right"] if measured else None,
        "vertebra_mm2": areas["vertebra"] if measured else None,
        "cutoff": cutoff,
        "low_psoas_mass": (plvi < cutoff) if plvi is not None else None,
        "slice": {"series_instance_uid": series_uid, "sop_instance_uid": sop_uid, "instance_number": 1,
                  "slice_to_endplate_mm": 3.1} if measured else None,
        "level_method": "sagittal",
        "level": {
            "series_instance_uid": generate_uid(),
            "l4_upper_endplate": {"point_mm": [1.5, -20.0, 41.0], "normal": [0.0, 0.17, 0.98]},
            "lumbar_vertebrae_counted": 5,
        },
        "qc": {
            "series": {series_uid: {"description": "t2_tse_tra", "orientation": "axial", "weighting": "T2",
                                    "weighting_from": "headers", "skipped": "", "images": "1"}},
            "level": {"confidence": 0.9, "discs_found": 6.0},
            "checks": checks if measured else {},
        },
        "timings_ms": {"find_level": 400.0, "segment": 200.0, "total": 640.0},
        "algorithm_version": "0.1.0",
    }


def seed_study(settings: Settings, engine: Engine, *, index: int, psoas_radius: float, status: str = "ok",
               sex: str = "F", age: int = 70, analysed_at: datetime | None = None) -> SeededStudy:
    """One analysed study: spool file, Study/Series/Instance rows, masks file and the current Analysis row."""
    patient_id, patient_name = f"PID{index:05d}X", f"Testpatient^Name{index:03d}"
    accession = f"ACC{index:05d}"
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    masks = anatomy_masks(psoas_radius)
    relative = Path("spool") / study_uid / series_uid / f"{sop_uid}.dcm"
    write_slice(settings.data_dir / relative, patient_id=patient_id, patient_name=patient_name, study_uid=study_uid,
                series_uid=series_uid, sop_uid=sop_uid, accession=accession, sex=sex, age=age,
                study_date="20240315", masks=masks)
    result = result_object(study_uid, series_uid, sop_uid, status, masks, settings.cutoff)
    instance_set_hash = f"{index:064x}"
    if status != "not_measurable":
        store_masks(settings, study_uid, instance_set_hash, masks)
    with session_scope(engine) as session:
        session.add(Study(study_instance_uid=study_uid, patient_id=patient_id, accession_number=accession,
                          study_date="20240315", state="settled", instance_set_hash=instance_set_hash))
        session.add(Series(series_instance_uid=series_uid, study_instance_uid=study_uid, modality="MR",
                           series_number=3, series_description="t2_tse_tra"))
        session.add(Instance(sop_instance_uid=sop_uid, series_instance_uid=series_uid, study_instance_uid=study_uid,
                             sop_class_uid=MRImageStorage, transfer_syntax_uid=ExplicitVRLittleEndian,
                             path=str(relative), size_bytes=(settings.data_dir / relative).stat().st_size,
                             sha256="0" * 64))
        analysis = Analysis(study_instance_uid=study_uid, instance_set_hash=instance_set_hash, status=status,
                            reason=result["reason"], plvi=result["plvi"], low_psoas_mass=result["low_psoas_mass"],
                            result=result, algorithm_version="0.1.0", settings_used={"cutoff": settings.cutoff},
                            created_at=analysed_at or datetime.now(UTC))
        session.add(analysis)
        session.flush()
        analysis_id = analysis.id
    assert analysis_id is not None
    return SeededStudy(patient_id, patient_name, accession, study_uid, sop_uid, analysis_id, result["plvi"], status)


def seed_cohort(settings: Settings, engine: Engine, count: int, *, start: int = 0) -> list[SeededStudy]:
    """`count` studies with varied PLVI (flagged and not), sexes, ages and statuses."""
    studies = []
    base = datetime.now(UTC) - timedelta(hours=1)
    for index in range(start, start + count):
        status = "not_measurable" if index % 7 == 6 else "needs_review" if index % 5 == 4 else "ok"
        studies.append(seed_study(settings, engine, index=index, psoas_radius=9 + (index * 3) % 5, status=status,
                                  sex="FM"[index % 2], age=55 + (index * 7) % 40,
                                  analysed_at=base + timedelta(seconds=index)))
    return studies


def seed_phantom_study(settings: Settings, engine: Engine, seed: int, target_plvi: float) -> SeededStudy:
    """A phantom lumbar MRI study (workers/phantom) analysed by the real pipeline (workers/pipeline), stored as
    the worker stores it: files under the data folder, Study/Series/Instance rows, the Analysis row and the masks."""
    from workers.phantom.study import PhantomOptions, generate_study
    from workers.pipeline import analyze_paths

    folder = settings.data_dir / "spool" / f"phantom-{seed}"
    generate_study(seed, folder, PhantomOptions(target_plvi=target_plvi))
    analysed = analyze_paths([folder], settings.cutoff)
    result = analysed.result
    files = sorted(folder.rglob("*.dcm"))
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    first = headers[0]
    study_uid, instance_set_hash = str(first.StudyInstanceUID), f"phantom{seed:057d}"
    store_masks(settings, study_uid, instance_set_hash, analysed.masks)
    with session_scope(engine) as session:
        session.add(Study(study_instance_uid=study_uid, patient_id=str(first.PatientID),
                          accession_number=str(first.AccessionNumber), study_date=str(first.StudyDate),
                          state="settled", instance_set_hash=instance_set_hash))
        for series_uid in sorted({str(h.SeriesInstanceUID) for h in headers}):
            header = next(h for h in headers if str(h.SeriesInstanceUID) == series_uid)
            session.add(Series(series_instance_uid=series_uid, study_instance_uid=study_uid, modality="MR",
                               series_number=int(header.SeriesNumber),
                               series_description=str(header.get("SeriesDescription", ""))))
        for path, header in zip(files, headers, strict=True):
            session.add(Instance(sop_instance_uid=str(header.SOPInstanceUID),
                                 series_instance_uid=str(header.SeriesInstanceUID), study_instance_uid=study_uid,
                                 sop_class_uid=str(header.SOPClassUID),
                                 transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
                                 path=str(path.relative_to(settings.data_dir)), size_bytes=path.stat().st_size,
                                 sha256="0" * 64))
        analysis = Analysis(study_instance_uid=study_uid, instance_set_hash=instance_set_hash,
                            status=result["status"], reason=result["reason"], plvi=result["plvi"],
                            low_psoas_mass=result["low_psoas_mass"], result=result,
                            algorithm_version=str(result.get("algorithm_version", "")),
                            settings_used={"cutoff": settings.cutoff})
        session.add(analysis)
        session.flush()
        analysis_id = analysis.id
    assert analysis_id is not None
    return SeededStudy(str(first.PatientID), str(first.PatientName), str(first.AccessionNumber), study_uid,
                       str((result.get("slice") or {}).get("sop_instance_uid")), analysis_id, result["plvi"],
                       result["status"])


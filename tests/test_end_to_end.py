"""From the scanner to the PACS: a phantom study sent by dcmtk's storescu to `plvi serve` comes back to Orthanc, the
PACS, as an SR, a SEG (when something was outlined) and a key image in the same study, carrying the stored numbers.

Only the results travel to Orthanc (the phantom itself is not sent there), so the one study Orthanc holds is the
one our objects put there: proof that they carry the source's study and patient."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.models import Analysis
from reports import codes
from reports.seg import STRUCTURES
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import Orthanc, run_orthanc
from tests.serve_process import Serve, running_serve, wait_for
from workers.phantom import PhantomOptions, PhantomTruth, generate_study

# Small and quick: no localizer, one axial stack, 256x256. Seed 14 is measured today (a number with masks).
EASY = PhantomOptions(localizer=False, axial_layout="stack", vendor="siemens", lumbar_vertebrae=5,
                      vertebra_condition="none", misleading_descriptions=False, axial_tilt_deg=0.0)  # fmt: skip
MEASURED_SEED = 14
FLOAT_TOLERANCE = 1e-6  # the SR holds decimal strings (DS, 16 characters)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with run_orthanc(tmp_path / "orthanc") as pacs:
        yield pacs


@pytest.fixture
def serve(tmp_path: Path, database_url: str, orthanc: Orthanc) -> Iterator[Serve]:
    with running_serve(
        tmp_path,
        database_url,
        pacs=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        pacs_retry_base_seconds=1,
    ) as service:
        yield service


def send_phantom(serve: Serve, folder: Path, seed: int, options: PhantomOptions) -> PhantomTruth:
    truth = generate_study(seed, folder, options)
    sent = storescu(serve.port, [folder])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return truth


def stored_analysis(engine: Engine) -> Analysis | None:
    with Session(engine) as session:
        return session.exec(select(Analysis)).first()


def expected_modalities(analysis: Analysis) -> list[str]:
    """SR and key image always (a study not measured still says it was screened); SEG when outlines exist."""
    return sorted(["SR", "OT"] + (["SEG"] if analysis.plvi is not None else []))


def orthanc_series_by_modality(orthanc: Orthanc, study_uid: str, count: int) -> dict[str, dict[str, Any]]:
    """Wait until Orthanc's only study holds `count` series, and return them by modality."""

    def arrived() -> list[dict[str, Any]]:
        studies = orthanc.get("/studies")
        if len(studies) != 1:
            return []
        series = orthanc.get(f"/studies/{studies[0]}/series")
        return series if len(series) == count else []

    series = wait_for(arrived, timeout=60, what=f"{count} result series in Orthanc")
    [study_id] = orthanc.get("/studies")
    assert orthanc.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"] == study_uid
    by_modality = {s["MainDicomTags"]["Modality"]: s for s in series}
    assert len(by_modality) == count
    assert all(len(s["Instances"]) == 1 for s in series)
    return by_modality


def instance_tags(orthanc: Orthanc, series: dict[str, Any]) -> dict[str, Any]:
    return orthanc.get(f"/instances/{series['Instances'][0]}/tags?simplify")


def read_sr(orthanc: Orthanc, series: dict[str, Any]) -> hd.sr.Comprehensive3DSR:
    dataset = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{series['Instances'][0]}/file")))
    return hd.sr.Comprehensive3DSR.from_dataset(dataset)


def sr_outcome(report: hd.sr.Comprehensive3DSR) -> tuple[dict[str, float], dict[str, str]]:
    """(numbers by code value, qualitative evaluations by code value) of the SR's image measurement group."""
    (outcome,) = report.content.get_image_measurement_groups()
    numbers = {m.name.value: m.value for m in outcome.get_measurements()}
    evaluations = {q.name.value: q.value.value for q in outcome.get_qualitative_evaluations()}
    return numbers, evaluations


def sr_areas(report: hd.sr.Comprehensive3DSR) -> dict[str, float]:
    """The three area measurements by structure, each outlined by a segment of the SEG."""
    areas = {}
    for group in report.content.get_planar_roi_measurement_groups():
        site = group.finding_sites[0]
        side = site.laterality.meaning.lower() if site.laterality is not None else None
        (area,) = group.get_measurements()
        areas[f"psoas_{side}_mm2" if side else "vertebra_mm2"] = area.value
    return areas


def test_measured_phantom_comes_back_to_the_pacs_as_sr_seg_and_key_image_with_the_stored_numbers(
    serve: Serve, orthanc: Orthanc, engine: Engine, tmp_path: Path
) -> None:
    truth = send_phantom(serve, tmp_path / "study", MEASURED_SEED, EASY)

    analysis = wait_for(lambda: stored_analysis(engine), timeout=120, what="the analysis stored")
    result = analysis.result
    assert analysis.plvi is not None, f"seed {MEASURED_SEED} is no longer measured: {result['reason_text']}"
    series = orthanc_series_by_modality(orthanc, truth.study_instance_uid, 3)
    assert sorted(series) == expected_modalities(analysis)

    report = read_sr(orthanc, series["SR"])
    numbers, evaluations = sr_outcome(report)
    assert numbers["PLVI"] == pytest.approx(analysis.plvi, abs=FLOAT_TOLERANCE)
    assert numbers["PLVI-CUTOFF"] == pytest.approx(result["cutoff"], abs=FLOAT_TOLERANCE)
    assert evaluations["STATUS"] == analysis.status
    assert evaluations.get("STATUS-REASON") == analysis.reason
    assert evaluations["LOW-PSOAS"] == (codes.YES if analysis.low_psoas_mass else codes.NO).value
    areas = sr_areas(report)
    assert areas == pytest.approx(
        {key: result[key] for key in ("psoas_left_mm2", "psoas_right_mm2", "vertebra_mm2")},
        abs=FLOAT_TOLERANCE,
    )

    seg = instance_tags(orthanc, series["SEG"])
    assert [segment["SegmentLabel"] for segment in seg["SegmentSequence"]] == [s.label for s in STRUCTURES]
    [referenced] = seg["ReferencedSeriesSequence"]
    assert referenced["SeriesInstanceUID"] == result["slice"]["series_instance_uid"]
    [source] = referenced["ReferencedInstanceSequence"]
    assert source["ReferencedSOPInstanceUID"] == result["slice"]["sop_instance_uid"]

    for tags in (instance_tags(orthanc, s) for s in series.values()):
        assert (tags["StudyInstanceUID"], tags["PatientID"]) == (
            truth.study_instance_uid,
            phantom_patient(tmp_path),
        )


def test_study_without_an_axial_t2_still_reaches_the_pacs_as_an_sr_saying_why_and_a_key_image(
    serve: Serve, orthanc: Orthanc, engine: Engine, tmp_path: Path
) -> None:
    truth = send_phantom(serve, tmp_path / "study", 3, PhantomOptions(localizer=False, axial_t2=False))

    analysis = wait_for(lambda: stored_analysis(engine), timeout=120, what="the analysis stored")
    assert (analysis.status, analysis.reason, analysis.plvi) == ("not_measurable", "no_axial_t2", None)
    series = orthanc_series_by_modality(orthanc, truth.study_instance_uid, 2)
    assert sorted(series) == expected_modalities(analysis)

    numbers, evaluations = sr_outcome(read_sr(orthanc, series["SR"]))
    assert numbers == {"PLVI-CUTOFF": pytest.approx(analysis.result["cutoff"], abs=FLOAT_TOLERANCE)}
    assert (evaluations["STATUS"], evaluations["STATUS-REASON"]) == ("not_measurable", "no_axial_t2")
    assert "LOW-PSOAS" not in evaluations
    for tags in (instance_tags(orthanc, s) for s in series.values()):
        assert (tags["StudyInstanceUID"], tags["PatientID"]) == (
            truth.study_instance_uid,
            phantom_patient(tmp_path),
        )


def phantom_patient(tmp_path: Path) -> str:
    """The PatientID the phantom wrote into its images (the results must carry the same patient)."""
    first = next((tmp_path / "study").rglob("*.dcm"))
    return str(pydicom.dcmread(first, stop_before_pixels=True).PatientID)

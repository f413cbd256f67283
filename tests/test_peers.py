"""The peer launchers themselves work: dcmtk's storescu reaches storescp and Orthanc, and Orthanc comes back after a
restart with what it stored. Every other integration test stands on these."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.conftest import free_port
from tests.dicom_factory import write_mr_study
from tests.peers.dcmtk import echoscu, run_storescp, storescu
from tests.peers.orthanc import run_orthanc


def sop_instance_uids(paths: list[Path]) -> set[str]:
    return {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in paths}


def test_storescu_sends_a_folder_that_storescp_writes_to_disk(tmp_path: Path) -> None:
    sent = write_mr_study(tmp_path / "study", series=2, instances_per_series=2)
    port = free_port()
    with run_storescp(port, tmp_path / "received", ae="ARCHIVE"):
        assert echoscu(port, called_ae="ARCHIVE").returncode == 0
        result = storescu(port, [tmp_path / "study"], called_ae="ARCHIVE")
    assert result.returncode == 0, result.stderr
    assert sop_instance_uids(list((tmp_path / "received").glob("*.dcm"))) == sop_instance_uids(sent)


def test_orthanc_accepts_a_c_store_lists_it_over_rest_and_keeps_it_across_a_restart(tmp_path: Path) -> None:
    (sent,) = write_mr_study(tmp_path / "study", series=1, instances_per_series=1)
    with run_orthanc(tmp_path / "orthanc", aet="PACS") as orthanc:
        result = storescu(orthanc.dicom_port, [sent], called_ae=orthanc.aet)
        assert result.returncode == 0, result.stderr
        (instance_id,) = orthanc.get("/instances")
        tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
        assert tags["SOPInstanceUID"] == pydicom.dcmread(sent).SOPInstanceUID

        orthanc.stop()
        assert echoscu(orthanc.dicom_port, called_ae=orthanc.aet).returncode != 0
        orthanc.start()
        assert orthanc.get("/instances") == [instance_id]


def test_orthanc_refuses_an_association_addressed_to_another_ae_title(tmp_path: Path) -> None:
    with run_orthanc(tmp_path / "orthanc", aet="PACS") as orthanc:
        assert echoscu(orthanc.dicom_port, called_ae="PACS").returncode == 0
        assert echoscu(orthanc.dicom_port, called_ae="SOMEONE_ELSE").returncode != 0

"""The peer launchers themselves work: dcmtk's storescu reaches storescp and Orthanc, and Orthanc comes back after a
restart with what it stored. Every other integration test stands on these."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.conftest import free_port
from tests.peers.dcmtk import echoscu, run_storescp, storescu
from tests.peers.orthanc import run_orthanc


def write_mr_instance(path: Path) -> pydicom.Dataset:
    """One small MR image (32x32) with the identifiers a PACS needs to index it."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PEERS-1"
    ds.PatientName = "Peers^Test"
    ds.Modality = "MR"
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(32 * 32, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_storescu_stores_a_file_in_storescp(tmp_path: Path) -> None:
    sent = write_mr_instance(tmp_path / "sent.dcm")
    port = free_port()
    with run_storescp(port, tmp_path / "received", ae="ARCHIVE"):
        assert echoscu(port, called_ae="ARCHIVE").returncode == 0
        result = storescu(port, [tmp_path / "sent.dcm"], called_ae="ARCHIVE")
    assert result.returncode == 0, result.stderr
    (received,) = (tmp_path / "received").glob("*.dcm")
    assert pydicom.dcmread(received).SOPInstanceUID == sent.SOPInstanceUID


def test_orthanc_accepts_a_c_store_and_keeps_it_across_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    sent = write_mr_instance(folder / "one.dcm")
    with run_orthanc(tmp_path / "orthanc", aet="PACS") as orthanc:
        result = storescu(orthanc.dicom_port, [folder], called_ae=orthanc.aet)
        assert result.returncode == 0, result.stderr
        (instance_id,) = orthanc.get("/instances")
        assert orthanc.get(f"/instances/{instance_id}/simplified-tags")["SOPInstanceUID"] == sent.SOPInstanceUID

        orthanc.stop()
        assert echoscu(orthanc.dicom_port, called_ae=orthanc.aet).returncode != 0
        orthanc.start()
        assert orthanc.get("/instances") == [instance_id]

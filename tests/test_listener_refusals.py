"""What the listener refuses, and how: unknown peers, bad data sets, unsupported SOP classes, a full disk.

dcmtk plays the peer wherever it can produce the input; pynetdicom sends raw bytes only where storescu would refuse
to send them at all (non-DICOM bytes, a data set without SOP Instance UID, a truncated data set).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from listener.received import (
    CANNOT_PARSE,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    MISSING_OR_INVALID_UID,
    SOP_INSTANCE_UID_MISMATCH,
)
from plvi.models import Instance
from plvi.settings import Settings
from tests.dicom_factory import data_set_bytes, write_mr_study, write_secondary_capture
from tests.peers.dcmtk import echoscu, storescu
from tests.test_listener import assert_sent, rows, running_listener


def with_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


# Association rejections (PS3.8 9.3.4), as dcmtk reports them.


def test_calling_ae_outside_the_allow_list_is_rejected_as_not_recognized(
    settings: Settings, sqlite_url: str
) -> None:
    settings = with_settings(settings, allowed_calling_aes=["PACS"])
    with running_listener(settings, sqlite_url):
        refused = echoscu(settings.port, calling_ae="INTRUDER")
        assert_sent(echoscu(settings.port, calling_ae="PACS"))
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stderr and "Calling AE Title Not Recognized" in refused.stderr


def test_allowed_network_admits_a_peer_with_any_ae_title(settings: Settings, sqlite_url: str) -> None:
    settings = with_settings(settings, allowed_calling_aes=["PACS"], allowed_networks=["127.0.0.0/8"])
    with running_listener(settings, sqlite_url):
        assert_sent(echoscu(settings.port, calling_ae="QUERYAE"))


def test_address_outside_the_allowed_networks_is_rejected(settings: Settings, sqlite_url: str) -> None:
    settings = with_settings(settings, allowed_networks=["10.0.0.0/8", "::1/128"])
    with running_listener(settings, sqlite_url):
        refused = echoscu(settings.port)
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stderr and "Reason: No Reason" in refused.stderr


# TLS


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server and a client certificate signed by it (EC keys: fast to make)."""
    folder.mkdir(parents=True, exist_ok=True)
    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", *key_options, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=PLVI test CA")
    for name in ("server", "client"):
        openssl("req", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2",
        )  # fmt: skip
    return {name: folder / name for name in ("ca.crt", "server.key", "server.crt", "client.key", "client.crt")}


def test_tls_association_works_with_a_test_certificate(settings: Settings, sqlite_url: str, tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "tls")
    settings = with_settings(
        settings,
        tls_cert=certificates["server.crt"],
        tls_key=certificates["server.key"],
        tls_ca=certificates["ca.crt"],
    )
    trust_ca = ["+cf", str(certificates["ca.crt"])]
    client = ["+tls", str(certificates["client.key"]), str(certificates["client.crt"])]
    (sent,) = write_mr_study(tmp_path / "study", series=1, instances_per_series=1)
    with running_listener(settings, sqlite_url):
        assert_sent(echoscu(settings.port, extra_args=[*client, *trust_ca]))
        assert_sent(storescu(settings.port, [sent], extra_args=[*client, *trust_ca]))
        without_client_certificate = echoscu(settings.port, extra_args=["+tla", *trust_ca])
        plain = echoscu(settings.port, extra_args=["-to", "5", "-ta", "5"])
        assert_sent(echoscu(settings.port, extra_args=[*client, *trust_ca]))
    assert without_client_certificate.returncode != 0, "a CA is configured, so a client certificate is required"
    assert plain.returncode != 0
    assert len(rows(sqlite_url, Instance)) == 1


# Bad data sets: refused with a C000-range status ("cannot understand", PS3.4 B.2.3), bytes kept in quarantine.


def raw_file(folder: Path, data_set: bytes, *, sop_instance_uid: str) -> Path:
    """A file whose meta header names an MR instance and whose body is exactly `data_set`, however broken."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop_instance_uid}.raw"
    path.write_bytes(buffer.getvalue() + data_set)
    return path


def send_raw(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE the bytes after the file meta exactly as they are (storescu would refuse to read such files)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title="PLVI")
    assert association.is_established
    try:
        return int(association.send_c_store(path).Status)
    finally:
        association.release()


def encoded(path: Path, *, without: str | None = None, **changes: str) -> bytes:
    """The data set bytes of `path`, optionally with one attribute removed or some changed."""
    if without is None and not changes:
        return data_set_bytes(path)
    dataset = dcmread(path)
    if without:
        delattr(dataset, without)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    changed = path.with_name("changed.dcm")
    dataset.save_as(changed)
    return data_set_bytes(changed)


def quarantined(settings: Settings) -> dict[bytes, dict]:  # type: ignore[type-arg]
    return {
        path.read_bytes(): json.loads(path.with_suffix(".json").read_text())
        for path in settings.quarantine_dir.glob("*.bin")
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # the bad UID is the point
def test_bad_data_sets_are_refused_and_quarantined_and_the_listener_keeps_serving(
    settings: Settings, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, template = write_mr_study(tmp_path / "study", series=1, instances_per_series=2)
    complete = encoded(template)
    implicit_copy = dcmread(template)
    implicit_copy.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit_copy.save_as(tmp_path / "implicit.dcm", implicit_vr=True)
    implicit = data_set_bytes(tmp_path / "implicit.dcm")
    rng = random.Random(7)
    cases = {
        "non-DICOM bytes": (b"%PDF-1.4 this is not DICOM\n" * 40, generate_uid(), CANNOT_PARSE),
        "random bytes": (rng.randbytes(3000), generate_uid(), CANNOT_PARSE),
        "no SOP Instance UID": (encoded(template, without="SOPInstanceUID"), generate_uid(), MISSING_OR_INVALID_UID),
        "truncated": (complete[: len(complete) * 2 // 3], dcmread(template).SOPInstanceUID, CANNOT_PARSE),
        "UID differs from request": (complete, generate_uid(), SOP_INSTANCE_UID_MISMATCH),
        "SOP class differs from request": (
            encoded(template, SOPClassUID=CTImageStorage), dcmread(template).SOPInstanceUID,
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        ),
        "implicit VR on an explicit VR context": (implicit, dcmread(template).SOPInstanceUID, CANNOT_PARSE),
        "UID that walks out of the spool": (
            encoded(template, StudyInstanceUID="../../../escaped"), dcmread(template).SOPInstanceUID, MISSING_OR_INVALID_UID
        ),
    }
    with running_listener(settings, sqlite_url):
        statuses = {
            name: send_raw(settings.port, raw_file(tmp_path / name.replace(" ", "_"), data, sop_instance_uid=uid), monkeypatch)
            for name, (data, uid, _) in cases.items()
        }
        assert_sent(storescu(settings.port, [good]))

    assert statuses == {name: expected for name, (_, _, expected) in cases.items()}
    kept = quarantined(settings)
    for name, (data, _, expected) in cases.items():
        assert data in kept, f"{name}: bytes not in quarantine"
        note = kept[data]
        assert note["calling_ae"] == "RAWSCU" and note["peer_address"] == "127.0.0.1"
        assert note["status"] == f"0x{expected:04X}" and note["reason"]
    assert [row.sop_instance_uid for row in rows(sqlite_url, Instance)] == [dcmread(good).SOPInstanceUID]
    assert len(list(settings.spool_dir.rglob("*.dcm"))) == 1
    assert not list(settings.data_dir.parent.rglob("escaped*"))


def test_unsupported_sop_class_is_not_accepted_and_logged(
    settings: Settings, sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secondary_capture = write_secondary_capture(tmp_path / "sc.dcm")
    caplog.set_level("INFO", logger="listener.scp")
    with running_listener(settings, sqlite_url):
        refused = storescu(settings.port, [secondary_capture], extra_args=["-R"])
        assert_sent(echoscu(settings.port))
    assert refused.returncode != 0
    assert "No Acceptable Presentation Contexts" in refused.stderr
    assert any("sop_classes_not_accepted" in line and "Secondary Capture" in line for line in caplog.messages)
    assert not list(settings.spool_dir.rglob("*.dcm")) and not rows(sqlite_url, Instance)


def test_free_space_below_the_reserve_answers_out_of_resources_and_leaves_nothing(
    settings: Settings, sqlite_url: str, tmp_path: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    settings = with_settings(settings, free_space_reserve_mb=free_mb + 1024)
    sent = write_mr_study(tmp_path / "study", series=1, instances_per_series=2)
    with running_listener(settings, sqlite_url):
        refused = storescu(settings.port, sent, extra_args=["-v"])
    assert refused.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in refused.stderr  # dcmtk's words for 0xA700
    assert not [path for path in settings.spool_dir.rglob("*") if path.is_file()], "something was written"
    assert not rows(sqlite_url, Instance)



def test_write_failure_answers_out_of_resources_and_the_next_study_is_stored(
    settings: Settings, sqlite_url: str, tmp_path: Path
) -> None:
    (blocked,) = write_mr_study(tmp_path / "blocked", series=1, instances_per_series=1, seed=1)
    (fine,) = write_mr_study(tmp_path / "fine", series=1, instances_per_series=1, seed=2)
    with running_listener(settings, sqlite_url):
        # A file where the study's folder must go: mkdir fails as on a read-only or broken disk.
        settings.spool_dir.joinpath(dcmread(blocked).StudyInstanceUID).write_bytes(b"")
        refused = storescu(settings.port, [blocked], extra_args=["-v"])
        assert_sent(storescu(settings.port, [fine]))
    assert "Received Store Response (Refused: OutOfResources)" in refused.stderr
    assert [row.sop_instance_uid for row in rows(sqlite_url, Instance)] == [dcmread(fine).SOPInstanceUID]
    assert not list(settings.spool_dir.joinpath(".incoming").iterdir())


def test_associations_beyond_the_limit_are_rejected_as_transient(settings: Settings, sqlite_url: str) -> None:
    settings = with_settings(settings, max_associations=2)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    with running_listener(settings, sqlite_url):
        held = [holder.associate("127.0.0.1", settings.port, ae_title="PLVI") for _ in range(2)]
        try:
            assert all(association.is_established for association in held)
            refused = echoscu(settings.port)
        finally:
            for association in held:
                association.release()
        assert_sent(echoscu(settings.port))
    assert "Rejected Transient" in refused.stderr and "Local Limit Exceeded" in refused.stderr

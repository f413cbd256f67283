"""The listener's parts without a network: who may associate, and how the spool writes."""

from __future__ import annotations

import socket
import threading
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)
from pynetdicom.dsutils import create_file_meta

from listener import received, scp
from listener.access import (
    DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED,
    DIAGNOSTIC_NO_REASON_GIVEN,
    AccessPolicy,
)
from listener.file_meta import file_meta_bytes
from listener.spool import OutOfSpace, Spool, is_safe_uid
from plvi.db import make_engine
from plvi.settings import Settings


def policy(aes: list[str], networks: list[str]) -> AccessPolicy:
    return AccessPolicy.from_settings(Settings(_env_file=None, allowed_calling_aes=aes, allowed_networks=networks))


def test_empty_allow_lists_accept_every_peer_and_say_so() -> None:
    everyone = policy([], [])
    assert everyone.check("ANYONE", "203.0.113.9") is None
    assert "any calling AE title" in everyone.describe()


def test_either_the_ae_title_or_the_network_admits_a_peer() -> None:
    both = policy(["PACS"], ["10.1.0.0/16"])
    assert both.check("PACS", "198.51.100.1") is None
    assert both.check("PACS_QR", "10.1.2.3") is None
    assert both.check("PACS_QR", "::ffff:10.1.2.3") is None, "dual-stack sockets show IPv4 peers as mapped IPv6"
    rejection = both.check("PACS_QR", "198.51.100.1")
    assert rejection is not None and rejection.diagnostic == DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED


def test_network_only_policy_rejects_without_blaming_the_ae_title() -> None:
    rejection = policy([], ["10.0.0.0/8"]).check("MODALITY", "192.0.2.1")
    assert rejection is not None and rejection.diagnostic == DIAGNOSTIC_NO_REASON_GIVEN
    assert "192.0.2.1" in rejection.reason


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.4", "1.2.3.04"])
def test_dicom_uids_are_safe_path_components(uid: str) -> None:
    assert is_safe_uid(uid)


@pytest.mark.parametrize("uid", ["", "..", "../1.2", "1.2/3", "1.2.3\x00", ".1.2", "1" * 65, "1.2 "])
def test_anything_else_is_not_a_path_component(uid: str) -> None:
    assert not is_safe_uid(uid)


def test_store_writes_atomically_and_reports_what_happened(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_space_reserve_mb=0)
    spool.prepare()
    created = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM", memoryview(b"-one")])
    unchanged = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM-one"])
    replaced = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM-two"])
    spool.keep(replaced)
    assert (created.outcome, unchanged.outcome, replaced.outcome) == ("created", "unchanged", "replaced")
    assert created.sha256 == unchanged.sha256 != replaced.sha256
    assert replaced.path.read_bytes() == b"DICM-two"
    assert replaced.relative_path == "spool/1.2/1.2.3/1.2.3.4.dcm"
    assert not list(spool.incoming.iterdir())


def test_reserve_refuses_before_anything_is_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_space_reserve_mb=10**9)
    spool.prepare()
    with pytest.raises(OutOfSpace, match="PLVI_FREE_SPACE_RESERVE_MB"):
        spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM"])
    assert not [path for path in spool.root.rglob("*") if path.is_file()]


def test_leftover_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_space_reserve_mb=0)
    spool.prepare()
    (spool.incoming / "1.2.3.4.dcm.abc.tmp").write_bytes(b"half")
    assert Spool(tmp_path, free_space_reserve_mb=0).prepare() == 1
    assert not list(spool.incoming.iterdir())


def test_one_sop_instance_is_handled_by_one_thread_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_space_reserve_mb=0)
    inside, overlaps = [], []

    def work() -> None:
        with spool.instance_lock("1.2.3"):
            if inside:
                overlaps.append(True)
            inside.append(True)
            threading.Event().wait(0.01)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not overlaps
    assert not spool._instance_locks, "locks of finished instances are released"


def test_deflated_data_set_that_inflates_without_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(received, "MAX_INFLATED_BYTES", 2**20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = deflater.compress(bytes(50 * 2**20)) + deflater.flush()
    with pytest.raises(received.BadInstance, match="inflates beyond") as refused:
        received.read_header(bomb, DeflatedExplicitVRLittleEndian)
    assert refused.value.status == received.CANNOT_PARSE


def test_a_taken_port_is_reported_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(_env_file=None, data_dir=tmp_path, host="127.0.0.1", port=taken.getsockname()[1])
        engine = make_engine(f"sqlite:///{tmp_path / 'unused.db'}")
        with pytest.raises(RuntimeError, match="PLVI_PORT"):
            scp.start_listener(settings, engine)
        engine.dispose()


def test_undo_puts_back_what_the_database_still_describes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, free_space_reserve_mb=0)
    spool.prepare()
    first = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM-one"])
    spool.keep(first)
    replaced = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM-two"])
    spool.undo(replaced)
    assert first.path.read_bytes() == b"DICM-one"
    created = spool.store("1.2", "1.2.3", "1.2.3.5", [b"DICM-new"])
    spool.undo(created)
    assert not created.path.exists()
    kept = spool.store("1.2", "1.2.3", "1.2.3.4", [b"DICM-three"])
    spool.keep(kept)
    assert first.path.read_bytes() == b"DICM-three"
    assert not list(spool.incoming.iterdir()), "replaced versions are not left behind"


@pytest.mark.parametrize("sop_instance_uid", ["1.2.3.4", "1.2.3.45"])  # odd and even length: padding
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_file_meta_header_is_what_pydicom_writes_for_the_request(
    sop_instance_uid: str, transfer_syntax: str
) -> None:
    expected = BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=MRImageStorage, sop_instance_uid=sop_instance_uid, transfer_syntax=transfer_syntax
    )
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert file_meta_bytes(MRImageStorage, sop_instance_uid, transfer_syntax) == expected.getvalue()

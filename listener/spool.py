"""The durable spool: every received instance is on disk, fsynced and renamed into place, before anyone hears "stored".

Layout under the data folder:

    spool/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   instances, exactly as received
    spool/.incoming/                                                  temporary files (same filesystem, so the
                                                                      rename into place is atomic)
    quarantine/<time>-<id>.bin + .json                                bytes we refused, and why
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

Chunk = bytes | bytearray | memoryview

# DICOM UIDs are digits and dots (PS3.5 9.1); anything else could walk out of the spool as a path component.
_UID_PATH_COMPONENT = re.compile(r"[0-9][0-9.]{0,63}")


def is_safe_uid(uid: str) -> bool:
    """True for a UID that is safe to use as a file or folder name (digits and dots, at most 64 characters)."""
    return _UID_PATH_COMPONENT.fullmatch(uid) is not None


def sha256_of(chunks: Sequence[Chunk]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


class OutOfSpace(OSError):
    """Free space is below the configured reserve: refuse the instance rather than fill the disk."""


@dataclass(frozen=True)
class StoredFile:
    """Where an instance now lives and what it holds. `outcome` says whether the bytes were new, already there
    (an identical duplicate: nothing written) or replaced a different earlier version."""

    path: Path
    relative_path: str
    size_bytes: int
    sha256: str
    outcome: Literal["created", "unchanged", "replaced"]
    previous: Path | None = None  # the replaced version, kept (hard link) until `keep` or `undo`


class Spool:
    """Durable writes into the spool folder. Thread-safe: concurrent handlers store different instances in
    parallel, and the same SOP Instance UID one at a time (see `instance_lock`)."""

    def __init__(self, data_dir: Path, *, free_space_reserve_mb: int) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "spool"
        self.incoming = self.root / ".incoming"
        self.quarantine_dir = data_dir / "quarantine"
        self.free_space_reserve_bytes = free_space_reserve_mb * 1024 * 1024
        self._instance_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._instance_locks_guard = threading.Lock()

    def prepare(self) -> int:
        """Create the folders and remove temporary files a crash left behind; returns how many were removed.
        A temporary file was never acknowledged to a peer, so dropping it loses nothing."""
        for folder in (self.root, self.incoming, self.quarantine_dir):
            self._ensure_dir(folder)
        removed = 0
        for leftover in self.incoming.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_room(self, size_bytes: int) -> None:
        """Raise OutOfSpace when writing `size_bytes` would leave less than the reserve free."""
        free = self.free_bytes()
        if free - size_bytes < self.free_space_reserve_bytes:
            raise OutOfSpace(
                f"{free // 2**20} MB free on {self.root}, reserve is {self.free_space_reserve_bytes // 2**20} MB: "
                "free disk space or lower PLVI_FREE_SPACE_RESERVE_MB"
            )

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_safe_uid(uid):
                raise ValueError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    @contextmanager
    def instance_lock(self, sop_uid: str) -> Iterator[None]:
        """Serialise work on one SOP Instance UID, so that the file on disk and its database row always describe
        the same version when a peer sends two different versions at once."""
        with self._instance_locks_guard:
            lock, users = self._instance_locks.get(sop_uid, (threading.Lock(), 0))
            self._instance_locks[sop_uid] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._instance_locks_guard:
                lock, users = self._instance_locks[sop_uid]
                if users == 1:
                    del self._instance_locks[sop_uid]
                else:
                    self._instance_locks[sop_uid] = (lock, users - 1)

    def store(self, study_uid: str, series_uid: str, sop_uid: str, chunks: Sequence[Chunk]) -> StoredFile:
        """Write the instance durably. Identical bytes already in place are left alone; different bytes replace
        them atomically. Raises OSError (OutOfSpace included) with nothing half-written left in the spool."""
        target = self.path_for(study_uid, series_uid, sop_uid)
        size = sum(len(chunk) for chunk in chunks)
        digest = sha256_of(chunks)
        relative = target.relative_to(self.data_dir).as_posix()
        existing_size = _size_or_none(target)
        if existing_size == size and _file_sha256(target) == digest:
            return StoredFile(target, relative, size, digest, "unchanged")
        self.check_room(size)
        self._ensure_dir(target.parent)
        if existing_size is None:
            self._write_durably(target, chunks)
            return StoredFile(target, relative, size, digest, "created")
        previous = self.incoming / f"{target.name}.{uuid.uuid4().hex}.previous"
        os.link(target, previous)
        try:
            self._write_durably(target, chunks)
        except BaseException:
            previous.unlink(missing_ok=True)
            raise
        return StoredFile(target, relative, size, digest, "replaced", previous)

    def keep(self, stored: StoredFile) -> None:
        """The database now describes the new file: the replaced version can go."""
        if stored.previous is not None:
            stored.previous.unlink(missing_ok=True)

    def undo(self, stored: StoredFile) -> None:
        """The database could not record the new file: put back what was there, so file and row still agree."""
        if stored.outcome == "created":
            stored.path.unlink(missing_ok=True)
        elif stored.previous is not None:
            os.replace(stored.previous, stored.path)
        _fsync_dir(stored.path.parent)

    def quarantine(self, chunks: Sequence[Chunk], *, reason: str, details: dict[str, object]) -> Path:
        """Keep bytes we refused, with a small JSON beside them saying who sent them and why, for the operator."""
        now = datetime.now(timezone.utc)
        stem = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}"
        target = self.quarantine_dir / f"{stem}.bin"
        self.check_room(sum(len(chunk) for chunk in chunks))  # a peer sending garbage must not fill the disk
        self._ensure_dir(self.quarantine_dir)
        self._write_durably(target, chunks)
        note = {"reason": reason, "received_at": now.isoformat(), "size_bytes": sum(map(len, chunks)), **details}
        self._write_durably(target.with_suffix(".json"), [json.dumps(note, indent=2, default=str).encode()])
        return target

    def _write_durably(self, target: Path, chunks: Sequence[Chunk]) -> None:
        """Temporary file in the same filesystem, fsync, rename into place, fsync the folder: after this returns
        the file survives a power cut, and a reader never sees a partial file."""
        temporary = self.incoming / f"{target.name}.{uuid.uuid4().hex}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(descriptor, view)
                        view = view[written:]
                os.fdatasync(descriptor)  # data and size; the rename is made durable by the folder's fsync
            finally:
                os.close(descriptor)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def _ensure_dir(self, folder: Path) -> None:
        """Create `folder` and its missing parents, fsyncing each parent so the new entries are durable too."""
        missing = []
        current = folder
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _file_sha256(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None

"""Orthanc as a real PACS on free loopback ports: it receives our results over DICOM and answers over REST.

Each instance has its own configuration, storage and index under a work folder, loads no plugins, and runs with
`TCP_NODELAY=1` because its DICOM layer is dcmtk's (Nagle's algorithm would otherwise delay every response ~40 ms).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.peers.dcmtk import dcmtk_environment
from tests.peers.processes import stop_process, wait_for_port

ORTHANC_BINARY = "Orthanc"


class Orthanc:
    """One private Orthanc. `stop()` then `start()` brings it back on the same ports with the same storage, so
    tests can take the PACS away and return it."""

    def __init__(
        self,
        work_dir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
    ) -> None:
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.work_dir = work_dir
        self.storage_dir = work_dir / "storage"
        self.index_dir = work_dir / "index"
        self.config_path = work_dir / "orthanc.json"
        self.log_path = work_dir / "orthanc.log"
        self.process: subprocess.Popen | None = None
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": f"plvi-test-{aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.index_dir),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
            "SaveJobs": False,
            "StableAge": 1,
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30) -> None:
        """Start Orthanc and return once both its REST API and its DICOM port answer."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("Orthanc is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC_BINARY, str(self.config_path)],
                env=dcmtk_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode}; see {self.log_path}")
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"Orthanc's REST API did not answer within {timeout} s; see {self.log_path}"
                    )
                time.sleep(0.1)
        wait_for_port(self.dicom_port, self.process, timeout=max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Shut Orthanc down cleanly (SIGTERM lets it close its index); kill it only if it hangs."""
        if self.process is None:
            return
        stop_process(self.process)
        self.process = None

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> Any:
        """One REST call; JSON bodies for dicts, raw bytes otherwise (e.g. a DICOM file to /instances)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        """Parsed JSON of a GET, e.g. `get("/studies")` or `get(f"/studies/{id}/instances")`."""
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict | None = None) -> Any:
        """Parsed JSON of a POST, e.g. `post("/tools/find", {...})`."""
        return self.request("POST", path, body if body is not None else b"")

    def get_bytes(self, path: str) -> bytes:
        """Raw body of a GET, e.g. `get_bytes(f"/instances/{id}/file")` for the stored DICOM file."""
        with urllib.request.urlopen(self.base_url + path, timeout=30) as response:
            return response.read()


@contextmanager
def run_orthanc(
    work_dir: Path, *, aet: str = "ORTHANC", modalities: dict[str, tuple[str, str, int]] | None = None
) -> Iterator[Orthanc]:
    """A started Orthanc on free loopback ports; `modalities` maps names to (AE title, host, port) it may send to."""
    orthanc = Orthanc(work_dir, aet=aet, modalities=modalities)
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()

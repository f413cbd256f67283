"""dcmtk's storescu, echoscu and storescp as real peers: the scanner that sends and the archive that receives.

dcmtk leaves Nagle's algorithm on unless `TCP_NODELAY=1` is in its environment; each C-STORE response would then wait
for a delayed ACK (about 40 ms), so every command here runs with it set.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.peers.processes import stop_process, wait_for_port


def dcmtk_environment() -> dict[str, str]:
    """The caller's environment with Nagle's algorithm disabled in dcmtk's network layer."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    paths: list[Path],
    *,
    host: str = "127.0.0.1",
    called_ae: str = "PLVI",
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Send files (folders are scanned recursively for `*.dcm`) in one association; output captured as text.

    The return code is not checked: tests of refusals need the failed run. storescu stops at the first failed
    C-STORE unless `extra_args` holds `-nh`.
    """
    folder_args = ["+sd", "+r", "+sp", "*.dcm"] if any(Path(path).is_dir() for path in paths) else []
    command = [
        "storescu", "-aet", calling_ae, "-aec", called_ae, *folder_args, *extra_args,
        host, str(port), *map(str, paths),
    ]  # fmt: skip
    return subprocess.run(
        command, env=dcmtk_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )


def echoscu(
    port: int,
    *,
    host: str = "127.0.0.1",
    called_ae: str = "PLVI",
    calling_ae: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 30,
) -> subprocess.CompletedProcess:
    """One C-ECHO (verification); return code 0 means the peer accepted the association and answered."""
    command = ["echoscu", "-aet", calling_ae, "-aec", called_ae, *extra_args, host, str(port)]
    return subprocess.run(
        command, env=dcmtk_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )


@contextmanager
def run_storescp(
    port: int, out_dir: Path, *, ae: str = "STORESCP", extra_args: Sequence[str] = ()
) -> Iterator[subprocess.Popen]:
    """A storescp on `port` writing every received instance to `out_dir` as `<modality>.<SOPInstanceUID>.dcm`.

    It accepts every transfer syntax dcmtk knows (`+xa`) and answers one association at a time; pass
    `extra_args=["--fork"]` for concurrent associations. Its log goes to `out_dir/../storescp-<port>.log`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"storescp-{port}.log"
    command = ["storescp", "-aet", ae, "+xa", "-od", str(out_dir), "-fe", ".dcm", *extra_args, str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=dcmtk_environment(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        stop_process(process, timeout=10)

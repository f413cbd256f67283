"""`plvi serve` as an operator starts it, for the service and end-to-end tests and the latency benchmark: a process
tree configured only by PLVI_ variables, its output in a log file the caller can read."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tests.conftest import free_port
from tests.peers.processes import stop_process, wait_for_port

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30, what: str = "condition", poll: float = 0.1
) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail saying `what` was not reached."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(poll)
    return value


class Serve:
    """One `plvi serve` process tree, started from the command line with its configuration in PLVI_ variables.

    The defaults suit tests: a private DICOM and HTTP port, data under `work_dir/var`, one worker, a 1 s settle."""

    def __init__(self, work_dir: Path, database_url: str, **variables: object) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.environment = {
            **os.environ,
            "PLVI_DATA_DIR": str(work_dir / "var"),
            "PLVI_DATABASE_URL": database_url,
            "PLVI_PORT": str(self.port),
            "PLVI_HTTP_PORT": str(free_port()),
            "PLVI_FREE_SPACE_RESERVE_MB": "0",
            "PLVI_SETTLE_SECONDS": "1",
            "PLVI_TRACKER_INTERVAL_SECONDS": "0.2",
            "PLVI_SERVE_WORKERS": "1",
            **{f"PLVI_{name.upper()}": str(value) for name, value in variables.items()},
        }
        self.process: subprocess.Popen | None = None
        self.output_path = work_dir / "serve.log"

    @property
    def data_dir(self) -> Path:
        return Path(self.environment["PLVI_DATA_DIR"])

    def start(self, **variables: object) -> None:
        """Start the process tree (variables override the constructor's for this run) and wait for the listener."""
        environment = self.environment | {
            f"PLVI_{name.upper()}": str(value) for name, value in variables.items()
        }
        with self.output_path.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from plvi.cli import app; app()", "serve"],
                cwd=self.work_dir,  # no plvi.env from elsewhere
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process, timeout=60)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=60)

    def children(self) -> list[int]:
        assert self.process is not None
        task_dir = Path(f"/proc/{self.process.pid}/task")
        return [int(pid) for task in task_dir.iterdir() for pid in (task / "children").read_text().split()]

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


@contextmanager
def running_serve(work_dir: Path, database_url: str, **variables: object) -> Iterator[Serve]:
    """A started `plvi serve`, stopped (SIGTERM, then SIGKILL if it hangs) when the block ends."""
    service = Serve(work_dir, database_url, **variables)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited; a zombie waits only for its (dead) parent's reaper

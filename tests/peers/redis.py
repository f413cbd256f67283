"""A private redis-server on a free loopback port: the production broker, which tests can take away and return.

It keeps an append-only file in its work folder, as production should, so `stop()` then `start()` brings back
whatever was queued before the outage.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.peers.processes import stop_process, wait_for_port


class RedisServer:
    """One redis-server bound to 127.0.0.1:`port`; `stop()` shuts it down (clients get connection refused)."""

    def __init__(self, port: int, work_dir: Path) -> None:
        self.port = port
        self.work_dir = work_dir
        self.log_path = work_dir / "redis.log"
        self.process: subprocess.Popen | None = None
        work_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        """Start redis-server and return once it answers PING."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        command = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.work_dir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not self._answers_ping():  # the port opens before the append-only file is loaded
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"redis-server did not answer PING within {timeout} s; see {self.log_path}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.process is not None:
            stop_process(self.process, timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2)

    def _answers_ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.exceptions.RedisError:
            return False


@contextmanager
def run_redis(port: int, work_dir: Path | None = None) -> Iterator[RedisServer]:
    """A started RedisServer on `port` (its files under `work_dir`, or a temporary folder), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="plvi-redis-") as scratch:
        server = RedisServer(port, work_dir or Path(scratch))
        server.start()
        try:
            yield server
        finally:
            server.stop()

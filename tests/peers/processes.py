"""Starting and stopping peer processes: wait until one listens, stop it cleanly, kill it only if it hangs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def wait_for_port(
    port: int, process: subprocess.Popen, *, host: str = "127.0.0.1", timeout: float = 20
) -> None:
    """Block until `process` accepts TCP connections on `port`; fail with its exit code if it dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with code {process.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{process.args[0]} did not listen on {host}:{port} within {timeout} s")


def stop_process(process: subprocess.Popen, *, timeout: float = 20, group: bool = False) -> None:
    """SIGTERM (to its whole process group with `group`, for a process started with `start_new_session=True`),
    then SIGKILL if it has not exited within `timeout` seconds."""

    def send(sig: signal.Signals) -> None:
        try:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except ProcessLookupError:
            pass

    if process.poll() is None or group:
        send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()

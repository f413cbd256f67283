"""The HTTP server in a thread: how `plvi serve` runs the API and dashboard beside the DICOM listener, and how the
tests run them against a real socket."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from sqlalchemy.engine import Engine

from plvi.logs import kv
from plvi.settings import Settings
from reports.web.api import create_app

log = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 20.0


class ApiServer:
    """A running uvicorn server; `shutdown()` lets requests in flight finish and stops it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server, self._thread = server, thread
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{shown}:{self.port}"

    def shutdown(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        log.info(kv("http_stopped", port=self.port))


def start_api(settings: Settings, engine: Engine, *, host: str | None = None, port: int | None = None) -> ApiServer:
    """Serve the API and dashboard on PLVI_HTTP_HOST:PLVI_HTTP_PORT (or the given address; port 0 picks a free
    one) without blocking; returns once the port is listening, or raises when it cannot be."""
    host = host if host is not None else settings.http_host
    port = port if port is not None else settings.http_port
    # Bound here, not inside uvicorn's thread, so a port in use is an error the caller sees.
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        raise RuntimeError(
            f"the HTTP API cannot listen on {host}:{port} ({error.strerror}); set PLVI_HTTP_PORT to a free port"
        ) from error
    port = listening.getsockname()[1]
    config = uvicorn.Config(create_app(settings, engine), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, name="plvi-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the HTTP API did not start on {host}:{port}; see the log above")
        time.sleep(0.02)
    log.info(kv("http_listening", host=host, port=port))
    return ApiServer(server, thread, host, port)

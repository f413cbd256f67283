"""The dashboard tests' server: the production thread server (reports.web.server) on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine

from plvi.settings import Settings
from reports.web.server import start_api


@contextmanager
def serve_http(settings: Settings, engine: Engine) -> Iterator[str]:
    """Serve the API and dashboard on 127.0.0.1 and a port the kernel picks; yields the base URL."""
    server = start_api(settings, engine, host="127.0.0.1", port=0)
    try:
        yield server.url
    finally:
        server.shutdown()

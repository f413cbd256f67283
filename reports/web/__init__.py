"""The HTTP side: JSON API, server-rendered dashboard pages, metrics and health, behind authentication."""

from reports.web.api import create_app, run_api
from reports.web.server import ApiServer, start_api

__all__ = ["ApiServer", "create_app", "run_api", "start_api"]

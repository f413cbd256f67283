"""The HTTP side: JSON API, server-rendered dashboard pages, metrics and health, behind authentication."""

from reports.web.api import create_app, run_api

__all__ = ["create_app", "run_api"]

"""Shared core of the PLVI screening service: settings, database, command line."""

__version__ = "0.1.0"

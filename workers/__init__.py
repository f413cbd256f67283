"""Celery app and thin tasks; the pure image analysis lives in workers.analysis."""

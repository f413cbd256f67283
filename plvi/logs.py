"""Structured logs: one line per event, `event key=value ...`, carrying UIDs and never patient names."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # pynetdicom logs every PDU at INFO; its warnings and errors are what an operator needs.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom quotes the offending value when it warns about an invalid one read from a file (through its logger and
    # Python warnings): that can be a patient's name or birth date, which never belongs in our logs. We store what
    # arrives as it arrived, so validation on read has nothing to tell the operator.
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def kv(event: str, **fields: object) -> str:
    """Format one log event as `event key=value ...`, quoting values that contain spaces."""
    parts = [event]
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() for c in text) or '"' in text:
            text = '"' + text.replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)

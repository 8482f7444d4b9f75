"""Operational logging (startup, reloads, failures) to stderr; decision lines go to the decision log instead."""

from __future__ import annotations

import logging
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    """`time level logger: message key=value ...` where the keys are the record's `extra` fields."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # One event, one line: a message quoting a backend's error text (psycopg's spans lines) is escaped, so a
        # log reader never takes its second line for another event. Tracebacks, appended after this, stay as they are.
        line = super().formatMessage(record)
        return line.replace("\r", "\\r").replace("\n", "\\n") if "\n" in line or "\r" in line else line

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{k}={v!r}" for k, v in record.__dict__.items() if k not in _STANDARD)
        return f"{base} {extras}" if extras else base


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("stockade")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The admin listener's uvicorn (admin/server.py leaves its logging alone) writes in this format, to this stream.
    uvicorn = logging.getLogger("uvicorn")
    uvicorn.handlers[:] = [handler]
    uvicorn.propagate = False


def apply_level(level: str) -> None:
    """Set the level of logging `setup_logging` configured (a reload that changes `log.level`). Logging the
    gateway did not set up (tests, an application embedding it) is its owner's to set, and left alone."""
    root = logging.getLogger("stockade")
    if any(isinstance(h.formatter, _Formatter) for h in root.handlers):
        root.setLevel(level.upper())

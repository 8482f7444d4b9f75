"""Operational logging: one line per event in one format, uvicorn's (the admin listener's) included."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from stockade.observability.logs import setup_logging


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What setup_logging's handler writes (to stderr in the product)."""
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in map(logging.getLogger, ("stockade", "uvicorn"))]
    setup_logging("info")
    out = io.StringIO()
    handler = logging.getLogger("stockade").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    try:
        yield out
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


@pytest.mark.parametrize(
    "message",
    [
        "readiness: store unreachable (OperationalError: connection failed: FATAL:  role\nDETAIL:  x\n)",
        "a\r\nb",
        "a\rb",
    ],
    ids=["psycopg-lines", "crlf", "cr"],
)
def test_a_multiline_message_is_one_line(logged: io.StringIO, message: str) -> None:
    logging.getLogger("stockade.admin.ready").error("%s", message, extra={"check": "store"})
    err = logged.getvalue()
    assert err.count("\n") == 1 and "\r" not in err
    assert "ERROR stockade.admin.ready: " in err and err.rstrip("\n").endswith("check='store'")


def test_uvicorn_logs_in_stockades_format(logged: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("Exceeded concurrency limit.")
    err = logged.getvalue()
    assert " WARNING uvicorn.error: Exceeded concurrency limit.\n" in err and not err.startswith("WARNING:")

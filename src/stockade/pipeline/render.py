"""The one renderer of gateway-generated responses: RFC 9457 problem+json with a stable `reason` code."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import orjson

PROBLEM_TYPE = "application/problem+json"


def title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, reason: str, request_id: str, extra: Mapping[str, object] | None = None) -> bytes:
    """The JSON body: generic to clients (status, stable reason, request id), never internal detail."""
    doc: dict[str, object] = {"type": "about:blank", "title": title(status), "status": status, "reason": reason}
    if extra:
        doc.update(extra)
    doc["request_id"] = request_id
    return orjson.dumps(doc)


def problem_headers(body_len: int, headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """Headers for a problem response, not counting framing/connection headers the front adds itself."""
    out = [
        ("content-type", PROBLEM_TYPE),
        ("content-length", str(body_len)),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ]
    if headers:
        out.extend((k.lower(), v) for k, v in headers.items())
    return out

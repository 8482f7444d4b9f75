"""The one renderer of gateway-generated responses: RFC 9457 problem+json with a stable `reason` code."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

import orjson

PROBLEM_TYPE = "application/problem+json"

# Codes the gateway itself produces (stages add their own, e.g. jwt.expired).
REASONS: dict[str, int] = {
    "route.not_found": 404,
    "route.method_not_allowed": 405,
    "auth.required": 401,
    "ip.denied": 403,
    "request.body_too_large": 413,
    "stage.error": 500,
    "stage.timeout": 503,
    "http.bad_request": 400,
    "http.bad_target": 400,
    "http.bad_path": 400,
    "http.bad_host": 400,
    "http.duplicate_header": 400,
    "http.headers_too_large": 431,
    "http.timeout": 408,
    "http.version_not_supported": 505,
    "http.expectation_failed": 417,
    "http.method_not_allowed": 405,
    "upstream.unavailable": 502,
    "upstream.bad_response": 502,
    "upstream.timeout": 504,
    "gateway.draining": 503,
    "gateway.error": 500,
    "handler.error": 500,
    "handler.timeout": 504,
    "websocket.not_allowed": 403,
}


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

"""Shared by the openapi stage tests: the case table format and how a case runs through a real gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stockade.testing import TestGateway, TestUpstream, gateway_with_upstream

SPECS = Path(__file__).resolve().parents[2] / "openapi" / "specs"
DEMO_SPEC = Path(__file__).resolve().parents[3] / "examples" / "demo" / "openapi.yaml"  # the demo API's own

CONFIG = """
limits: {path_parameters: true}  # the shop spec has matrix-style path parameters
routes:
  - id: api
    match: {path: "/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: openapi
        config: {spec: %s, strict: %s}
"""

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SHOP_JSON = {"Content-Type": "application/vnd.shop+json"}


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    status: int
    reason: str = ""
    errors: tuple[tuple[str, str], ...] = ()  # (pointer, rule) pairs that must all be listed
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def gateway(spec: str, strict: bool = False) -> Iterator[tuple[TestGateway, TestUpstream]]:
    with gateway_with_upstream(CONFIG % (spec, str(strict).lower()), base_dir=SPECS) as pair:
        yield pair


def run_case(pair: tuple[TestGateway, TestUpstream], case: Case) -> None:
    gw, up = pair
    before = len(up.received)
    status, headers, body = gw.request(case.method, case.target, headers=case.headers, body=case.body)
    forwarded = up.received[before:]
    if case.status == 200:
        assert status == 200, body
        assert len(forwarded) == 1
        assert forwarded[0].body == case.body  # the body goes upstream exactly as sent
        return
    assert status == case.status, body
    assert forwarded == []
    doc = json.loads(body)
    assert headers["content-type"] == "application/problem+json"
    assert doc["reason"] == case.reason
    listed = {(e["pointer"], e["rule"]) for e in doc.get("errors", ())}
    assert set(case.errors) <= listed, listed
    for value in _string_values(case.body):  # never the submitted values (property names may appear in pointers)
        assert value.encode() not in body or any(value in pointer for pointer, _ in listed)


def _string_values(raw: bytes) -> list[str]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    values = doc.values() if isinstance(doc, dict) else []
    return [v for v in values if isinstance(v, str) and len(v) > 3]


INVALID = "openapi.invalid_request"
UNKNOWN = "openapi.unknown_operation"
MEDIA = "openapi.unsupported_media_type"
MALFORMED = "openapi.malformed_body"
BAD_PARAM = "openapi.bad_parameter"

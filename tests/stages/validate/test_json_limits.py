"""`json_limits` through a real gateway: statuses and reasons per limit; non-JSON bodies pass."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from stockade.testing import TestGateway, TestUpstream, gateway_with_upstream, read_responses

CONFIG = """
routes:
  - id: api
    match: {path: "/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: json_limits
        config: {max_depth: 4, max_keys: 5, max_array: 5, max_string: 10}
"""
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[TestGateway, TestUpstream]]:
    with gateway_with_upstream(CONFIG) as pair:
        yield pair


@pytest.mark.parametrize(
    ("body", "status", "reason", "pointer"),
    [
        (b'{"a":[[[[1]]]]}', 413, "json.too_deep", "/body/a/0/0/0"),
        (b'{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}', 413, "json.too_many_keys", "/body"),
        (b'{"ids":[1,2,3,4,5,6]}', 413, "json.array_too_long", "/body/ids"),
        (b'{"name":"' + b"x" * 11 + b'"}', 413, "json.string_too_long", "/body/name"),
        (b'{"role":"user","role":"admin"}', 400, "json.duplicate_key", "/body/role"),
        (b'{"a":', 400, "json.malformed", "/body"),
    ],
    ids=["depth", "keys", "array", "string", "duplicate", "malformed"],
)
def test_json_limits_refuse_with_stable_reasons(
    gateway: tuple[TestGateway, TestUpstream], body: bytes, status: int, reason: str, pointer: str
) -> None:
    gw, up = gateway
    before = len(up.received)
    got, _, raw = gw.request("POST", "/things", headers=JSON, body=body)
    doc = json.loads(raw)
    assert (got, doc["reason"]) == (status, reason)
    assert doc["errors"][0]["pointer"].startswith(pointer)
    assert len(up.received) == before


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"a":{"b":[1,2,3]},"c":"short"}', JSON),
        (b'{"a":1}', {"Content-Type": "application/problem+json"}),
        (b'{"a":1,"a":2}', {"Content-Type": "text/plain"}),  # not JSON by its content type: not this stage's
        (b"", JSON),
    ],
    ids=["within-limits", "plus-json", "other-media-type", "empty"],
)
def test_json_limits_forward_what_they_do_not_refuse(
    gateway: tuple[TestGateway, TestUpstream], body: bytes, headers: dict[str, str]
) -> None:
    gw, up = gateway
    status, _, _ = gw.request("POST", "/things", headers=headers, body=body)
    assert status == 200
    assert up.received[-1].body == body


def test_a_repeated_content_type_is_refused(gateway: tuple[TestGateway, TestUpstream]) -> None:
    """json_limits read the first Content-Type (text/plain: not checked) while an upstream may read the last."""
    gw, up = gateway
    before = len(up.received)
    with gw.connect() as sock:
        body = b'{"a":{"b":{"c":{"d":{"e":1}}}}}'
        sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        ((status, _, raw),) = read_responses(sock, 1)
    assert status == 400 and b"http.duplicate_header" in raw
    assert len(up.received) == before


def test_openapi_refuses_repeated_keys_that_json_limits_allowed() -> None:
    """With allow_duplicate_keys the shared parse keeps the last value; openapi must still refuse the body
    (an upstream may read the first)."""
    from pathlib import Path

    spec = Path(__file__).resolve().parents[2] / "openapi" / "specs" / "petstore.yaml"
    config = f"""
routes:
  - id: pets
    match: {{path: "/v1/**"}}
    upstream: "{{upstream}}"
    stages:
      - use: anonymous
      - use: json_limits
        config: {{allow_duplicate_keys: true}}
      - use: openapi
        config: {{spec: "{spec}"}}
"""
    with gateway_with_upstream(config) as (gw, up):
        status, _, raw = gw.request(
            "POST",
            "/v1/pets",
            body=b'{"name":"Rex","weight":999,"weight":1}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and b"duplicate_key" in raw
        assert up.received == []


SIZED = CONFIG.replace("max_string: 10}", "max_string: 10, max_bytes: 64}")


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"a":[1,2,3]}' + b" " * 52, JSON, 413),  # within every other limit, one byte over max_bytes
        (b'{"a":[' + b"1," * 30 + b"1]}", JSON, 413),  # refused for its size before its array is counted
        (b'{"a":[1,2,3]}' + b" " * 51, JSON, 200),  # exactly 64 bytes
        (b"x" * 500, {"Content-Type": "text/plain"}, 200),  # other bodies keep the route's limit
    ],
    ids=["one-over", "over-before-scan", "at-limit", "not-json"],
)
def test_json_bodies_over_max_bytes_are_refused_before_they_are_scanned(
    body: bytes, headers: dict[str, str], status: int
) -> None:
    """A hostile 10 MiB document within the other limits held a worker about 2 s in the scanner."""
    with gateway_with_upstream(SIZED) as (gw, up):
        got, _, raw = gw.request("POST", "/things", headers=headers, body=body)
        assert got == status
        if status == 413:
            assert json.loads(raw)["reason"] == "json.too_large"
            assert up.received == []

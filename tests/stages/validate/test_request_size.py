"""request_size: declared lengths are refused at once; chunked bodies are cut off when they grow too big."""

from __future__ import annotations

import pytest

from stockade.testing import TestGateway, TestUpstream
from tests.conftest import GatewayFactory
from tests.proxy.helpers import exchange, reason

# The `upload` route in tests/conftest.py has request_size max_bytes 1024.
CASES = [
    ("under", b"Content-Length: 1024\r\n\r\n" + b"a" * 1024, 200),
    ("over", b"Content-Length: 1025\r\n\r\n" + b"a" * 1025, 413),
    ("declared-over-no-body-yet", b"Content-Length: 999999999\r\n\r\n", 413),
    ("chunked-under", b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n", 200),
    ("chunked-over", b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"a" * 1024 + b"\r\n1\r\nb\r\n0\r\n\r\n", 413),
    ("chunked-many-small-over", b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\na\r\n" * 1100 + b"0\r\n\r\n", 413),
]


@pytest.mark.parametrize(("rest", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_request_size(gateway: TestGateway, upstream: TestUpstream, rest: bytes, status: int) -> None:
    raw = b"POST /upload/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + rest
    responses, _ = exchange(gateway, raw)
    assert responses[0][0] == status
    if status == 413:
        assert reason(responses[0]) == "request.body_too_large"
        assert all(len(r.body) <= 1024 for r in upstream.received)  # never a complete over-limit body upstream
    else:
        assert upstream.received[0].body == b"a" * 1024


def test_global_body_limit_applies_without_the_stage(make_gateway: GatewayFactory, upstream: TestUpstream) -> None:
    gw = make_gateway(
        "limits: {max_body_bytes: 100}\nroutes:\n  - id: r\n    match: {path: /**}\n    upstream: {upstream}\n"
        "    stages: [{use: anonymous}]\n"
    )
    status, _, body = gw.request("POST", "/x", body=b"x" * 101)
    assert status == 413
    assert b"request.body_too_large" in body
    assert upstream.received == []

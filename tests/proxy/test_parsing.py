"""Malformed requests and smuggling shapes: a precise 4xx, a closed connection, nothing forwarded."""

from __future__ import annotations

import pytest

from stockade.testing import TestGateway, TestUpstream
from tests.conftest import GatewayFactory
from tests.proxy.helpers import exchange, reason

H = b"Host: a\r\n"

# (id, raw request, status, reason code)
REJECTED = [
    (
        "cl-and-te",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    (
        "te-and-cl",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    (
        "duplicate-cl-same",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
        "http.bad_request",
    ),
    (
        "duplicate-cl-differ",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        "http.bad_request",
    ),
    ("cl-list", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400, "http.bad_request"),
    ("cl-negative", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400, "http.bad_request"),
    ("cl-plus", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400, "http.bad_request"),
    ("cl-hex", b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400, "http.bad_request"),
    # llhttp takes 5000 leading zeros for 5; Python's int() refuses over 4300 digits (a 500): more than 19 digits,
    # which no real length needs, is malformed
    (
        "cl-5001-digits",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: " + b"0" * 5000 + b"5\r\n\r\nabcde",
        400,
        "http.bad_request",
    ),
    (
        "cl-20-digits",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Content-Length: " + b"0" * 19 + b"5\r\n\r\nabcde",
        400,
        "http.bad_request",
    ),
    (
        "te-not-final-chunked",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
        "http.bad_request",
    ),
    ("te-gzip-only", b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 400, "http.bad_request"),
    ("te-xchunked", b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n", 400, "http.bad_request"),
    (
        "te-twice",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "http.bad_request",
    ),
    (
        "te-space-before-colon",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    (
        "te-vertical-tab",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    ("obs-fold", b"GET /api/x HTTP/1.1\r\n" + H + b"X-A: b\r\n  c\r\n\r\n", 400, "http.bad_request"),
    ("ctl-in-value", b"GET /api/x HTTP/1.1\r\n" + H + b"X-A: b\x01c\r\n\r\n", 400, "http.bad_request"),
    ("nul-in-value", b"GET /api/x HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", 400, "http.bad_request"),
    ("bare-lf", b"GET /api/x HTTP/1.1\nHost: a\n\n", 400, "http.bad_request"),
    ("bare-cr", b"GET /api/x HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400, "http.bad_request"),
    ("empty-header-name", b"GET /api/x HTTP/1.1\r\n" + H + b": x\r\n\r\n", 400, "http.bad_request"),
    ("space-in-header-name", b"GET /api/x HTTP/1.1\r\n" + H + b"X A: x\r\n\r\n", 400, "http.bad_request"),
    (
        "bad-chunk-size",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    (
        "chunk-lf-only",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
        400,
        "http.bad_request",
    ),
    (
        "chunk-size-overflow",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    ("http-0.9", b"GET /api/x\r\n\r\n", 505, "http.version_not_supported"),
    ("http-2.0-line", b"GET /api/x HTTP/2.0\r\n" + H + b"\r\n", 505, "http.version_not_supported"),
    # the version is read from llhttp unless keep-alive without a Connection header says 1.1: these must not
    (
        "http-0.9-keep-alive",
        b"GET /api/x HTTP/0.9\r\nConnection: keep-alive\r\n\r\n",
        505,
        "http.version_not_supported",
    ),
    (
        "http-2.0-keep-alive",
        b"GET /api/x HTTP/2.0\r\n" + H + b"Connection: keep-alive\r\n\r\n",
        505,
        "http.version_not_supported",
    ),
    (
        "http-2.0-close",
        b"GET /api/x HTTP/2.0\r\n" + H + b"Connection: close\r\n\r\n",
        505,
        "http.version_not_supported",
    ),
    (
        "http-0.9-proxy-keep-alive",
        b"GET /api/x HTTP/0.9\r\nProxy-Connection: keep-alive\r\n\r\n",
        505,
        "http.version_not_supported",
    ),
    (
        "http-2.0-proxy-keep-alive",
        b"GET /api/x HTTP/2.0\r\n" + H + b"Proxy-Connection: keep-alive\r\n\r\n",
        505,
        "http.version_not_supported",
    ),
    ("http-1.2", b"GET /api/x HTTP/1.2\r\n" + H + b"\r\n", 400, "http.bad_request"),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "http.bad_request"),
    ("unknown-method", b"FOO /api/x HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_request"),
    ("lowercase-method", b"get /api/x HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_request"),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\n" + H + b"\r\n", 405, "http.method_not_allowed"),
    ("no-host-1.1", b"GET /api/x HTTP/1.1\r\n\r\n", 400, "http.bad_host"),
    ("two-hosts", b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "http.bad_host"),
    ("host-with-path", b"GET /api/x HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "http.bad_host"),
    ("host-with-userinfo", b"GET /api/x HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "http.bad_host"),
    ("absolute-form", b"GET http://evil/api/x HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_target"),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_target"),
    ("fragment", b"GET /api/x#frag HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_target"),
    (
        "expect-unknown",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Expect: something\r\nContent-Length: 1\r\n\r\na",
        417,
        "http.expectation_failed",
    ),
    ("url-with-space", b"GET /api/a b HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_request"),
    ("url-8bit", b"GET /api/a\xffb HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_request"),
    ("url-ctl", b"GET /api/a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400, "http.bad_request"),
    # llhttp leaves an upgrade request's body unparsed: on a route that does not upgrade, the upstream would
    # read the next request's bytes as that body
    (
        "upgrade-with-length",
        b"GET /api/x HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: foo\r\nContent-Length: 5\r\n\r\nabcde",
        400,
        "http.bad_request",
    ),
    (
        "websocket-upgrade-chunked",
        b"GET /api/x HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "http.bad_request",
    ),
    # only chunked is undone by the gateway; anything else would reach the upstream still coded
    (
        "te-gzip-then-chunked",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
        "http.not_implemented",
    ),
    (
        "te-identity-chunked",
        b"POST /api/x HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        501,
        "http.not_implemented",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_malformed_request_is_rejected_and_connection_closed(
    gateway: TestGateway, upstream: TestUpstream, raw: bytes, status: int, code: str
) -> None:
    responses, was_closed = exchange(gateway, raw)
    assert len(responses) == 1
    assert responses[0][0] == status
    assert responses[0][1]["content-type"] == "application/problem+json"
    assert reason(responses[0]) == code
    assert was_closed
    assert upstream.received == []


def test_smuggled_second_request_after_cl_te_never_reaches_upstream(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    smuggled = b"GET /api/admin HTTP/1.1\r\nHost: a\r\n\r\n"
    raw = (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + smuggled
    )
    responses, was_closed = exchange(gateway, raw, count=2)
    assert [r[0] for r in responses] == [400]
    assert was_closed
    assert upstream.received == []


def test_error_response_comes_after_earlier_pipelined_responses(gateway: TestGateway, upstream: TestUpstream) -> None:
    raw = b"GET /api/one HTTP/1.1\r\nHost: a\r\n\r\nGET /api/two HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n"
    responses, was_closed = exchange(gateway, raw, count=2)
    assert [r[0] for r in responses] == [200, 400]
    assert was_closed
    assert [r.target for r in upstream.received] == ["/api/one"]


@pytest.mark.parametrize(
    ("limit_field", "raw", "status"),
    [
        ("big-header", b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (
            "many-headers",
            b"GET /api/x HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
            431,
        ),
        ("long-url", b"GET /api/" + b"a" * 17000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        ("endless-header", b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 1_000_000, 431),
    ],
)
def test_oversized_head_is_rejected(
    gateway: TestGateway, upstream: TestUpstream, limit_field: str, raw: bytes, status: int
) -> None:
    responses, was_closed = exchange(gateway, raw)
    assert [r[0] for r in responses] == [status]
    assert reason(responses[0]) == "http.headers_too_large"
    assert was_closed
    assert upstream.received == []


def test_head_just_under_the_limit_is_accepted(gateway: TestGateway) -> None:
    filler = b"X-Fill: " + b"a" * 15000 + b"\r\n"
    responses, _ = exchange(gateway, b"GET /api/x HTTP/1.1\r\nHost: a\r\n" + filler + b"Connection: close\r\n\r\n")
    assert [r[0] for r in responses] == [200]


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("/api/x;jsessionid=1", False),
        ("/api;x/secret", False),  # Tomcat and Spring read /api/secret
        ("/api/x%3Bv=1", False),  # encoded, the same after decoding
        ("/api/x", True),
    ],
)
def test_path_parameters_are_refused_unless_allowed(
    make_gateway: GatewayFactory, upstream: TestUpstream, target: str, allowed: bool
) -> None:
    routes = "routes:\n  - id: r\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages: [{use: anonymous}]\n"
    strict = make_gateway(routes)
    status, _, body = strict.request("GET", target)
    assert status == (200 if allowed else 400)
    if not allowed:
        assert b"http.bad_path" in body
    lenient = make_gateway("limits: {path_parameters: true}\n" + routes)
    assert lenient.request("GET", target)[0] == 200


# (head, what llhttp answers to should_upgrade())
UPGRADE_HEADS: dict[str, tuple[bytes, bool]] = {
    "plain": (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False),
    "websocket": (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", True),
    "upgrade-lower-case": (b"GET / HTTP/1.1\r\nHost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", True),
    "upgrade-without-connection": (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", False),
    "connection-without-upgrade": (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", False),
    "upgrade-twice": (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: a\r\nUPGRADE: b\r\n\r\n", True),
    "h2c": (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n", True),
    "upgrade-http10": (b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", True),
    "connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", True),
    "post-upgrade-with-body": (
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n\r\nx",
        True,
    ),
}


@pytest.mark.parametrize(("head", "upgrades"), UPGRADE_HEADS.values(), ids=UPGRADE_HEADS.keys())
def test_llhttp_upgrades_only_with_an_upgrade_header_or_connect(head: bytes, upgrades: bool) -> None:
    """ClientConnection.on_headers_complete asks llhttp whether a request upgrades only when an Upgrade header came
    or the method is CONNECT; otherwise it takes the answer as no. This holds that rule against llhttp itself."""
    import httptools

    seen: dict[str, object] = {}

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"upgrade":
                seen["upgrade"] = value

        def on_headers_complete(self) -> None:
            seen["llhttp"] = parser.should_upgrade()

    parser = httptools.HttpRequestParser(Callbacks())
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    assert seen["llhttp"] is upgrades
    if upgrades:  # never without what the shortcut looks for
        assert "upgrade" in seen or head.startswith(b"CONNECT ")

"""Response hooks that only add headers: the upstream head goes out verbatim with the new lines appended,
instead of being parsed and rebuilt; anything else still takes the full rebuild."""

from __future__ import annotations

import pytest

from stockade.proxy.http import append_headers, cut_headers
from stockade.testing import gateway_with_upstream

HEAD = b"HTTP/1.1 200 OK\r\nServer: up\r\nX-Trace: 1\r\nContent-Length: 2\r\n\r\n"


CUT_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: up\r\nserver-timing: db;dur=5\r\nX-Powered-By: php\r\nSERVER : again\r\n"
    b"X-Trace: 1\r\nContent-Length: 2\r\n\r\n"
)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            {"server"},
            b"HTTP/1.1 200 OK\r\nserver-timing: db;dur=5\r\nX-Powered-By: php\r\nX-Trace: 1\r\n"
            b"Content-Length: 2\r\n\r\n",
        ),
        (
            {"server", "x-powered-by"},
            b"HTTP/1.1 200 OK\r\nserver-timing: db;dur=5\r\nX-Trace: 1\r\nContent-Length: 2\r\n\r\n",
        ),
        ({"absent"}, CUT_HEAD),
        (
            {"x-trace"},
            b"HTTP/1.1 200 OK\r\nServer: up\r\nserver-timing: db;dur=5\r\nX-Powered-By: php\r\n"
            b"SERVER : again\r\nContent-Length: 2\r\n\r\n",
        ),
    ],
    ids=["every-spelling-not-prefixes", "two-names", "absent", "middle"],
)
def test_cut_headers(names: set[str], expected: bytes) -> None:
    assert cut_headers(CUT_HEAD, names) == expected


@pytest.mark.parametrize(
    ("added", "expected"),
    [
        ([("ratelimit", '"a";r=1')], b'ratelimit: "a";r=1\r\n'),
        ([("a", "1"), ("b", "2")], b"a: 1\r\nb: 2\r\n"),
        ([("connection", "close"), ("keep-alive", "x")], b""),  # hop-by-hop: never from a hook
        ([("x-evil", "1\r\nset-cookie: a=b")], b""),  # a value that would split the head
    ],
    ids=["one", "two", "hop-by-hop", "crlf"],
)
def test_append_headers(added: list[tuple[str, str]], expected: bytes) -> None:
    assert append_headers(HEAD, added) == HEAD[:-2] + expected + b"\r\n"


LIMITED = """
routes:
  - id: r
    match: {path: "/**"}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: rate_limit
        config: {limits: [{name: l, rate: "100/minute", key: ip}]}
"""


def raw_head(gw: object, target: str) -> bytes:
    sock = gw.connect()  # type: ignore[attr-defined]
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    sock.close()
    return data.split(b"\r\n\r\n", 1)[0]


def test_added_fields_go_after_the_verbatim_upstream_head() -> None:
    with gateway_with_upstream(LIMITED) as (gw, _up):
        head = raw_head(gw, "/headers?X-Mixed-Case=kept&Cache-Control=no-cache")
    lines = head.split(b"\r\n")
    assert b"X-Mixed-Case: kept" in lines  # the upstream's own spelling: the head was not rebuilt
    assert lines[-2:] == [b'ratelimit-policy: "l";q=100;w=60', b'ratelimit: "l";r=99;t=1']


def test_replacing_an_upstream_header_cuts_its_line_and_keeps_the_rest_verbatim() -> None:
    with gateway_with_upstream(LIMITED) as (gw, _up):
        head = raw_head(gw, "/headers?X-Mixed-Case=kept&RateLimit=%22up%22;r=5")
    lines = head.split(b"\r\n")
    assert b"X-Mixed-Case: kept" in lines  # not rebuilt: the upstream's own spelling survives
    assert [line for line in lines if line.lower().startswith(b"ratelimit:")] == [b'ratelimit: "l";r=99;t=1']


def test_framing_cache_keeps_only_small_heads() -> None:
    """Cached by exact bytes, 1024 heads of up to 64 KiB each (and their rewritten copies) pinned about 120 MB when
    an upstream reflected a value into every head."""
    from stockade.proxy.http import _FRAMINGS, MAX_CACHED_HEAD, ResponseFraming

    small = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    big = b"HTTP/1.1 200 OK\r\nX-Echo: " + b"a" * MAX_CACHED_HEAD + b"\r\nContent-Length: 0\r\n\r\n"
    assert ResponseFraming.of(small) is ResponseFraming.of(small)
    assert ResponseFraming.of(big) is not ResponseFraming.of(big)
    assert big not in _FRAMINGS and small in _FRAMINGS

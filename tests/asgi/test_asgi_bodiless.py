"""Responses that have no body (HEAD, 1xx, 204, 304): whatever the app sends, no body bytes reach the server.

Servers differ: uvicorn drops a HEAD body, daphne writes it. A hook that needs the body does not run on HEAD (it
is not buffered), so a field it filters out of GET responses would reach the client in a HEAD response's body.
On a 204 or 304 a body, and the Content-Length the middleware set for it, made uvicorn write it: the client read
it as the start of the next response on the connection.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_support import call_direct, direct_scope

CONFIG = """
routes:
  - id: plain
    match: {path: "/plain/**"}
    stages: [{use: anonymous}]
  - id: head-hook
    match: {path: "/headers/**"}
    stages: [{use: anonymous}, {use: security_headers}]
  - id: body-hook
    match: {path: "/body/**"}
    stages: [{use: anonymous}, {use: test_upper}]
"""
SECRET = b'{"id": 1, "password_hash": "SECRET"}'
EXTENSIONS = {"http.response.pathsend": {}, "http.response.zerocopy": {}}


@pytest.fixture(scope="module")
def secret_file() -> Iterator[str]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(SECRET)
        f.flush()
        yield f.name


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Answers with `SECRET` in the shape the last path segment names, as a framework does for GET and HEAD alike."""
    shape = scope["path"].rsplit("/", 1)[-1]
    status = int(dict(q.split("=") for q in scope["query_string"].decode().split("&") if q).get("status", 200))
    headers = [(b"content-type", b"application/json")]
    if shape == "one":
        headers.append((b"content-length", str(len(SECRET)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if shape == "one":
        await send({"type": "http.response.body", "body": SECRET})
    elif shape == "stream":
        for i in range(0, len(SECRET), 10):
            await send({"type": "http.response.body", "body": SECRET[i : i + 10], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif shape == "pathsend":
        await send({"type": "http.response.pathsend", "path": scope["state"]["file"]})
    elif shape == "zerocopy":
        fd = os.open(scope["state"]["file"], os.O_RDONLY)
        try:
            await send({"type": "http.response.zerocopy", "file": fd, "count": len(SECRET), "more_body": False})
        finally:
            os.close(fd)


@pytest.fixture(scope="module")
def mw(test_stages: None) -> StockadeMiddleware:
    return StockadeMiddleware(app, config_text=CONFIG, decision_log=DecisionLog("off", FakeClock()))


def call(mw: StockadeMiddleware, method: str, target: str, file: str) -> Any:
    path, _, query = target.partition("?")
    scope = direct_scope("http", path, method=method, query_string=query.encode(), extensions=EXTENSIONS)
    scope["state"] = {"file": file}
    return call_direct(mw, scope)


@pytest.mark.parametrize("route", ["plain", "headers", "body"])
@pytest.mark.parametrize("shape", ["one", "stream", "pathsend", "zerocopy"])
def test_head_never_forwards_app_body_bytes(mw: StockadeMiddleware, secret_file: str, route: str, shape: str) -> None:
    sent = call(mw, "HEAD", f"/{route}/{shape}", secret_file)
    assert sent.status == 200
    later = sent.messages[1:]
    assert [m["type"] for m in later] == ["http.response.body"] * len(later)  # no file handed to the server either
    assert all(m["body"] == b"" for m in later)
    assert not later[-1].get("more_body", False)
    if shape == "one":
        assert sent.header(b"content-length") == str(len(SECRET)).encode()  # what GET would send, as RFC 9110 says


@pytest.mark.parametrize("route", ["plain", "headers"])
@pytest.mark.parametrize("shape", ["one", "stream"])
def test_get_forwards_the_body(mw: StockadeMiddleware, secret_file: str, route: str, shape: str) -> None:
    assert call(mw, "GET", f"/{route}/{shape}", secret_file).body == SECRET


@pytest.mark.parametrize("route", ["plain", "headers", "body"])
@pytest.mark.parametrize("shape", ["one", "stream"])
@pytest.mark.parametrize("status", [103, 204, 304])
def test_no_body_for_statuses_without_one(
    mw: StockadeMiddleware, secret_file: str, route: str, shape: str, status: int
) -> None:
    sent = call(mw, "GET", f"/{route}/{shape}?status={status}", secret_file)
    assert sent.status == status
    assert all(m["body"] == b"" for m in sent.messages[1:])
    assert not sent.messages[-1].get("more_body", False)
    # No length is announced for the body that was dropped (RFC 9110 8.6), on any route: the app's own
    # Content-Length with an emptied body makes uvicorn-httptools fail the response and drop the connection.
    assert sent.header(b"content-length") is None and sent.header(b"transfer-encoding") is None

"""The same config through the reverse proxy and the ASGI middleware gives the same answers.

Both fronts get byte-identical requests; statuses must match, and every answer the gateway writes itself
(problems, handler replies) must match too, except for the request id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from stockade.testing import TestGateway, gateway_with_upstream
from tests.asgi.asgi_apps import starlette_app
from tests.asgi.asgi_support import AsgiServer, config_text, raw_request, serving

CASES = [
    pytest.param("GET", "/public/x", {}, id="allowed"),
    pytest.param("GET", "/nowhere", {}, id="not-found"),
    pytest.param("GET", "/upload", {}, id="method-not-allowed"),
    pytest.param("GET", "/admin", {}, id="ip-denied-direct"),
    pytest.param("GET", "/admin", {"headers": {"X-Forwarded-For": "10.1.2.3"}}, id="ip-allowed-via-proxy"),
    pytest.param("GET", "/admin", {"headers": {"X-Forwarded-For": "10.1.2.3, 198.51.100.7"}}, id="ip-xff-spoof"),
    pytest.param("GET", "/blocked", {"headers": {"X-Forwarded-For": "203.0.113.9"}}, id="ip-deny-list-via-proxy"),
    pytest.param("POST", "/upload", {"body": b"u" * 100}, id="size-declared"),
    pytest.param("POST", "/upload", {"body": b"u" * 100, "chunked": True}, id="size-chunked"),
    pytest.param("POST", "/upload", {"body": b"u" * 10, "chunked": True}, id="size-chunked-within"),
    pytest.param("POST", "/public/big", {"body": b"u" * 5000}, id="size-global"),
    pytest.param("POST", "/inspect", {"body": b"u" * 100, "chunked": True}, id="size-stage-reading"),
    pytest.param("GET", "/public/..%2fadmin", {}, id="path-encoded-slash"),
    pytest.param("GET", "//admin", {}, id="path-double-slash"),
    pytest.param("GET", "/%2e%2e/admin", {}, id="path-encoded-dotdot"),
    pytest.param("GET", "/public/..;/admin", {}, id="path-dotdot-semicolon"),
    pytest.param("GET", "/public/%2e%2e/admin", {}, id="path-dotdot-resolved"),
    pytest.param("GET", "/public/%00", {}, id="path-nul"),
    pytest.param("GET", "/admin;x/y", {}, id="path-parameter"),
    pytest.param("GET", "/boom", {}, id="stage-error"),
    pytest.param("GET", "/hookbug", {}, id="response-hook-error"),
    pytest.param("GET", "/shout/x", {}, id="response-body-hook"),
    pytest.param("GET", "/health", {}, id="static-handler"),
    pytest.param("HEAD", "/health", {}, id="static-handler-head"),
    pytest.param("GET", "/public/x", {"host": None}, id="no-host"),
    pytest.param("GET", "/public/x", {"headers": [("Host", "second")]}, id="two-hosts"),
    pytest.param("GET", "/public/x", {"headers": {"Expect": "nope"}}, id="bad-expect"),
]


@dataclass
class Fronts:
    gw: TestGateway
    server: AsgiServer
    mw: StockadeMiddleware
    proxy_log: Path
    mw_log: Path

    def last_decisions(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The newest decision line of each front, without what differs by nature (time, request id)."""
        self.gw.flush_log()
        self.server.bg.call(self.mw.flush)
        out = []
        for path in (self.proxy_log, self.mw_log):
            line = orjson.loads(path.read_bytes().splitlines()[-1])
            out.append({k: v for k, v in line.items() if k not in _DIFFERS_BY_NATURE})
        return out[0], out[1]


_DIFFERS_BY_NATURE = frozenset({"ts", "request_id", "latency_us", "upstream_us"})


@pytest.fixture(scope="module")
def fronts(test_stages: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    logs = tmp_path_factory.mktemp("parity")
    proxy_log, mw_log = logs / "proxy.log", logs / "asgi.log"
    clock = FakeClock()
    decision_log = DecisionLog(str(mw_log), clock)
    mw = StockadeMiddleware(starlette_app(), config_text=config_text(), clock=clock, decision_log=decision_log)
    with (
        gateway_with_upstream(config_text("{upstream}"), log_path=proxy_log) as (gw, _),
        serving(mw) as server,
    ):
        yield Fronts(gw, server, mw, proxy_log, mw_log)
    decision_log.close()


def _gateway_answer(body: bytes) -> Any:
    """The part of a gateway-written body that must match across fronts (problems lose their request id)."""
    doc = orjson.loads(body) if body else None
    if isinstance(doc, dict) and "reason" in doc:
        doc.pop("request_id")
    return doc


@pytest.mark.parametrize(("method", "target", "kw"), CASES)
def test_proxy_and_middleware_answer_alike(fronts: Fronts, method: str, target: str, kw: dict[str, Any]) -> None:
    p_status, p_headers, p_body = raw_request(fronts.gw.port, method, target, **kw)
    m_status, m_headers, m_body = raw_request(fronts.server.port, method, target, **kw)
    assert p_status == m_status
    for name in ("allow", "content-type", "cache-control", "x-content-type-options", "x-frame-options"):
        assert p_headers.get(name) == m_headers.get(name), name
    if p_headers.get("content-type") == "application/problem+json" or target == "/health":
        assert _gateway_answer(p_body) == _gateway_answer(m_body)
    if target == "/health":
        assert p_headers["content-length"] == m_headers["content-length"]


@pytest.mark.parametrize(("method", "target", "kw"), CASES)
def test_proxy_and_middleware_log_alike(fronts: Fronts, method: str, target: str, kw: dict[str, Any]) -> None:
    raw_request(fronts.gw.port, method, target, **kw)
    raw_request(fronts.server.port, method, target, **kw)
    proxy_line, mw_line = fronts.last_decisions()
    assert proxy_line == mw_line


def test_upstream_and_app_see_the_same_identity_headers(fronts: Fronts) -> None:
    headers = {"X-Stockade-Principal": "admin", "X-Stockade-Roles": "root", "X-Request-Id": "same-id"}
    seen = []
    for port in (fronts.gw.port, fronts.server.port):
        status, _, body = raw_request(port, "GET", "/public/x", headers=headers)
        assert status == 200
        pairs = orjson.loads(body)["headers"]
        seen.append(sorted((k.lower(), v) for k, v in pairs if k.lower().startswith(("x-stockade-", "x-request-id"))))
    assert seen[0] == seen[1]
    assert ("x-stockade-principal", "anonymous") in seen[0]
    assert ("x-request-id", "same-id") in seen[0]

"""Responses through StockadeMiddleware over real sockets: hooks, handlers, failures, the decision log, metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from stockade.testing import read_responses
from tests.asgi.asgi_stages import COMPLETED, HANDLER_ENTERED, STALL_ENTERED
from tests.asgi.asgi_support import Served, call_direct, direct_scope, problem, request_id_for
from tests.proxy.helpers import wait_for

# -- responses ----------------------------------------------------------------------------------------------------


def test_security_headers_applied_to_app_response(served: Served) -> None:
    status, headers, _ = served.request("GET", "/public/page")
    assert status == 200
    assert "x-powered-by" not in headers and "server" not in headers  # the app sets both
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    assert headers["content-security-policy"] == "frame-ancestors 'none'"
    assert "strict-transport-security" not in headers  # plain HTTP


def test_route_without_security_headers_passes_app_headers(served: Served) -> None:
    status, headers, _ = served.request("GET", "/admin", headers={"X-Forwarded-For": "10.0.0.1"})
    assert status == 200
    assert headers["x-powered-by"] == "test-app"
    assert "x-frame-options" not in headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_static_handler_answers_without_the_app(served: Served, method: str) -> None:
    rid = f"static-{served.flavor}-{method}"
    status, headers, body = served.request(method, "/health", headers={"X-Request-Id": rid})
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == "11"
    assert body == (b'{"ok":true}' if method == "GET" else b"")
    assert "x-powered-by" not in headers  # the handler set it; the route's security_headers removed it
    assert headers["x-frame-options"] == "DENY"
    line = served.decision(rid)
    assert (line["route"], line["decision"], line["status"]) == ("health", "allow", 200)


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        pytest.param("GET", "/shout/stream", b"ONE TWO THREE!", id="streamed-body-buffered-for-hook"),
        pytest.param("HEAD", "/shout/stream", b"", id="head-hook-sees-no-body"),
    ],
)
def test_response_body_hook_replaces_body_and_length(served: Served, method: str, target: str, body: bytes) -> None:
    status, headers, got = served.request(method, target)
    assert status == 200
    assert headers["x-test-hooked"] == "yes"
    assert got == body
    if method == "GET":
        assert headers["content-length"] == str(len(body))
        assert "transfer-encoding" not in headers


def test_response_body_hook_on_json_body(served: Served) -> None:
    status, headers, body = served.request("GET", "/shout/x")
    assert status == 200
    assert body.endswith(b"}!") and b'"PATH":"/SHOUT/X"' in body
    assert headers["content-length"] == str(len(body))


# -- failures fail closed -----------------------------------------------------------------------------------------


def test_stage_that_raises_denies_with_500_and_no_detail(served: Served) -> None:
    rid = f"boom-{served.flavor}"
    status, headers, body = served.request("GET", "/boom", headers={"X-Request-Id": rid})
    assert status == 500
    assert headers["content-type"] == "application/problem+json"
    assert problem(body) == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "reason": "stage.error",
    }
    line = served.decision(rid)
    assert (line["decision"], line["reason"], line["stage"], line["detail"]) == (
        "deny",
        "stage.error",
        "test_raise",
        "RuntimeError",
    )
    assert b"hunter2" not in body and "hunter2" not in orjson.dumps(line).decode()


def test_stage_past_pipeline_timeout_denied_503(served: Served) -> None:
    STALL_ENTERED.clear()
    rid = f"slow-{served.flavor}"
    with served.server.connect() as sock:
        sock.sendall(f"GET /slow HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n".encode())
        assert STALL_ENTERED.wait(10), "the stalling stage never ran"
        served.clock.advance(10.5)  # past limits.pipeline_timeout (10 s by default)
        served.server.bg.call(served.mw.sweep)
        [(status, _, body)] = read_responses(sock, 1)
    assert status == 503
    assert problem(body)["reason"] == "stage.timeout"
    line = served.decision(rid)
    assert (line["decision"], line["stage"]) == ("deny", "test_stall")


def test_response_hook_that_raises_fails_the_response_closed(served: Served) -> None:
    rid = request_id_for("hookbug", served.flavor)
    status, headers, body = served.request("GET", "/hookbug", headers={"X-Request-Id": rid})
    assert status == 500
    assert headers["content-type"] == "application/problem+json"  # not the app's response, unprocessed
    assert problem(body)["reason"] == "stage.error"
    line = served.decision(rid)
    assert (line["decision"], line["stage"], line["detail"], line["error"]) == (
        "deny",
        "response",
        "LookupError",
        "stage.error",
    )


def test_response_too_big_to_buffer_for_hooks_is_502(served: Served) -> None:
    rid = request_id_for("huge", served.flavor)
    status, _, body = served.request("GET", "/shout/huge", headers={"X-Request-Id": rid})
    assert status == 502
    assert problem(body)["reason"] == "upstream.bad_response"
    line = served.decision(rid)
    assert (line["decision"], line["reason"], line["stage"]) == ("error", "upstream.bad_response", "app")


def test_handler_past_deadline_is_504(served: Served) -> None:
    HANDLER_ENTERED.clear()
    rid = request_id_for("slow-handler", served.flavor)
    with served.server.connect() as sock:
        sock.sendall(f"GET /slow-handler HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n\r\n".encode())
        assert HANDLER_ENTERED.wait(10), "the handler never ran"
        served.clock.advance(10.5)
        served.server.bg.call(served.mw.sweep)
        [(status, _, body)] = read_responses(sock, 1)
    assert status == 504
    assert problem(body)["reason"] == "handler.timeout"
    line = served.decision(rid)
    assert (line["decision"], line["reason"], line["stage"]) == ("error", "handler.timeout", "handler")


def test_app_that_raises_is_logged_and_left_to_the_server(served: Served) -> None:
    rid = request_id_for("crash", served.flavor)
    status, _, _ = served.request("GET", "/public/crash", headers={"X-Request-Id": rid})
    assert status == 500  # Starlette's (or uvicorn's) own 500: the app's failure is not a gateway decision
    line = served.decision(rid)
    assert (line["decision"], line["status"]) == ("allow", 500)


def test_client_leaving_while_stage_reads_body_is_499(served: Served) -> None:
    rid = request_id_for("gone", served.flavor)
    with served.server.connect() as sock:
        sock.sendall(
            f"POST /inspect HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nContent-Length: 50\r\n\r\n12345".encode()
        )
    line = served.wait_for_decision(rid)
    assert (line["status"], line["error"], line["decision"]) == (499, "client.closed", "allow")


def test_client_leaving_while_the_app_reads_body_is_499(served: Served) -> None:
    """Starlette raises ClientDisconnect into the app: that is the client's doing, not a 5xx of the app's."""
    rid = request_id_for("gone-app", served.flavor)
    with served.server.connect() as sock:
        sock.sendall(
            f"POST /public/x HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nContent-Length: 50\r\n\r\n12345".encode()
        )
    line = served.wait_for_decision(rid)
    assert (line["status"], line.get("error"), line["decision"]) == (499, "client.closed", "allow")


# -- the decision log and metrics ---------------------------------------------------------------------------------


def test_decision_log_line_for_allowed_and_denied_requests(served: Served) -> None:
    allow_id = f"log-allow-{served.flavor}"
    deny_id = f"log-deny-{served.flavor}"
    served.request("GET", "/public/logged?token=abc", headers={"X-Request-Id": allow_id})
    served.request("GET", "/admin", headers={"X-Request-Id": deny_id, "X-Forwarded-For": "198.51.100.7"})
    allowed = served.decision(allow_id)
    assert {k: allowed[k] for k in ("route", "method", "path", "principal", "decision", "reason", "stage")} == {
        "route": "public",
        "method": "GET",
        "path": "/public/logged",
        "principal": "anonymous",
        "decision": "allow",
        "reason": "",
        "stage": "",
    }
    assert (allowed["status"], allowed["client_ip"]) == (200, "127.0.0.1")
    assert "error" not in allowed and "token" not in orjson.dumps(allowed).decode()
    denied = served.decision(deny_id)
    assert (denied["decision"], denied["reason"], denied["stage"], denied["status"], denied["client_ip"]) == (
        "deny",
        "ip.denied",
        "ip_filter",
        403,
        "198.51.100.7",
    )
    assert denied["principal"] is None  # denied before authentication


def test_metrics_count_requests_by_route_decision_reason_status(served: Served) -> None:
    def count(key: tuple[str, str, str, int]) -> int:
        return int(served.server.bg.call(lambda: served.mw.metrics.requests.get(key, 0)))

    key = ("", "deny", "route.not_found", 404)
    before = count(key)
    served.request("GET", "/metrics-nowhere")
    served.request("GET", "/metrics-nowhere")
    assert count(key) == before + 2


@pytest.mark.parametrize(
    ("body", "status", "app_status"),
    [
        pytest.param(b"", 200, 200, id="app-answered"),
        pytest.param(b"x" * 5000, 413, 0, id="gateway-denied-before-the-app"),
    ],
)
def test_completion_hooks_see_the_outcome(served: Served, body: bytes, status: int, app_status: int) -> None:
    rid = request_id_for("probe", served.flavor, status)
    got, _, resp_body = served.request("POST", "/probe/x", headers={"X-Request-Id": rid}, body=body)
    assert got == status
    outcome = served.server.bg.call(COMPLETED.pop, rid)  # on the loop: the hook ran before the line was logged
    assert (outcome.status, outcome.upstream_status, outcome.error) == (status, app_status, "")
    assert outcome.bytes_sent == len(resp_body)


def test_app_header_bytes_survive_a_hook_that_edits_the_head() -> None:
    """security_headers edits every head, and the edit re-encoded every header: a latin-1 byte in the app's own
    Content-Disposition (RFC 9110 obs-text) reached the client percent-encoded, a different file name."""
    disposition = b'attachment; filename="caf\xe9.txt"'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-disposition", disposition), (b"server", b"app/1.0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    config = "routes:\n  - id: r\n    match: {path: /**}\n    stages: [{use: anonymous}, {use: security_headers}]\n"
    mw = StockadeMiddleware(app, config_text=config)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(direct_scope("http", "/x"), receive, send))
    headers = dict(sent[0]["headers"])
    assert headers[b"content-disposition"] == disposition
    assert b"server" not in headers and headers[b"x-content-type-options"] == b"nosniff"  # the hook did run


def test_a_body_not_received_within_the_pipeline_timeout_is_408_not_a_stage_failure(served: Served) -> None:
    """A stage waiting for the client's body ran out the pipeline timeout and was blamed: 503 stage.timeout. The
    ASGI server sets no body timer of its own, so the deadline stays, but the answer says whose time ran out."""
    rid = f"slowbody-{served.flavor}"
    with served.server.connect() as sock:
        sock.sendall(
            f"POST /inspect HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\nContent-Length: 10\r\n"
            "Connection: close\r\n\r\n012".encode()
        )
        wait_for(lambda: any(ex.reading_body for ex in list(served.mw._watched)))
        served.clock.advance(10.5)  # past limits.pipeline_timeout (10 s by default)
        served.server.bg.call(served.mw.sweep)
        [(status, _, body)] = read_responses(sock, 1)
    assert status == 408
    assert problem(body)["reason"] == "http.timeout"
    line = served.decision(rid)
    assert (line["decision"], line["stage"]) == ("deny", "http")


@pytest.mark.parametrize(
    ("message", "more"),
    [
        pytest.param({"type": "http.response.pathsend"}, [], id="pathsend"),
        pytest.param({"type": "http.response.zerocopy", "count": 5}, [], id="zerocopy"),
        pytest.param(
            {"type": "http.response.zerocopy", "count": 2, "more_body": True},
            [{"type": "http.response.zerocopy", "count": 3}],
            id="zerocopy-in-parts",
        ),
    ],
)
def test_a_file_the_server_sends_completes_the_response(
    tmp_path: Path, message: dict[str, Any], more: list[dict[str, Any]]
) -> None:
    """A zero-copy response that ended was logged as `app.incomplete` (a 500-class error) and never counted."""
    file = tmp_path / "file.txt"
    file.write_bytes(b"hello")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        with file.open("rb") as f:
            for part in [message, *more]:
                await send({**part, "path": str(file), "file": f.fileno()})

    log_path = tmp_path / "decisions.log"
    log = DecisionLog(str(log_path), FakeClock())
    config = "routes:\n  - id: r\n    match: {path: /**}\n    stages: [{use: anonymous}]\n"
    mw = StockadeMiddleware(app, config_text=config, decision_log=log)
    extensions = {"http.response.pathsend": {}, "http.response.zerocopy": {}}
    sent = call_direct(mw, direct_scope("http", "/file", extensions=extensions))
    log.close()
    assert [m["type"] for m in sent.messages[1:]] == [m["type"] for m in [message, *more]]
    line = orjson.loads(log_path.read_bytes())
    assert (line["status"], line.get("error")) == (200, None)

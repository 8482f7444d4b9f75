"""Requests through StockadeMiddleware over real sockets (uvicorn, Starlette and FastAPI): what reaches the app."""

from __future__ import annotations

import pytest

from stockade.testing import read_responses
from tests.asgi.asgi_stages import BODY_READ_STARTED
from tests.asgi.asgi_support import Served, app_saw, problem, request_id_for

# -- allowed requests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param({}, id="no-claims"),
        pytest.param({"X-Stockade-Principal": "admin"}, id="principal"),
        pytest.param({"X-STOCKADE-Roles": "root", "x-stockade-scopes": "*"}, id="roles-and-scopes-any-case"),
        pytest.param({"X-Stockade-Anonymous": "false", "X-Stockade-Whatever": "1"}, id="unknown-identity-header"),
        pytest.param({"X_Stockade_Principal": "admin", "x_stockade_roles": "root"}, id="underscore-spellings"),
    ],
)
def test_allowed_request_reaches_app_with_identity_headers_only_from_gateway(
    served: Served, sent: dict[str, str]
) -> None:
    status, _, body = served.request("GET", "/public/items?q=1", headers=sent)
    assert status == 200
    seen = app_saw(body)
    identity = {k: v for k, v in seen["headers"].items() if k.replace("_", "-").startswith("x-stockade-")}
    assert identity == {
        "x-stockade-principal": "anonymous",
        "x-stockade-auth": "anonymous",
        "x-stockade-anonymous": "true",
    }
    assert seen["path"] == "/public/items"
    assert seen["query"] == "q=1"


def test_stage_header_edits_and_buffered_body_reach_app(served: Served) -> None:
    status, _, body = served.request(
        "POST", "/inspect", headers={"X-Remove-Me": "secret", "X-Test-Body-Len": "999"}, body=b"0123456789"
    )
    assert status == 200
    seen = app_saw(body)
    assert seen["body_len"] == 10  # the stage read the body; the app still got all of it
    assert seen["headers"]["x-test-body-len"] == "10"  # the stage's value replaced the client's
    assert "x-remove-me" not in seen["headers"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("X-Role", "admin", id="claim"),
        pytest.param("X-API-Key", "stk_live_" + "A" * 53, id="credential"),
        pytest.param("X-Remove-Me", "secret", id="header-a-stage-removes"),
    ],
)
def test_trailer_sent_while_a_stage_reads_the_body_never_reaches_app(served: Served, name: str, value: str) -> None:
    # uvicorn's httptools parser appends trailer fields to the scope's own header list as the body is read, after
    # the pipeline judged the headers: the app must get the headers the pipeline judged, not that list.
    BODY_READ_STARTED.clear()
    head = b"POST /inspect HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    with served.server.connect() as sock:
        sock.sendall(head + b"5\r\nhello\r\n")
        assert BODY_READ_STARTED.wait(10)
        sock.sendall(b"0\r\n%s: %s\r\n\r\n" % (name.encode(), value.encode()))
        [(status, _, body)] = read_responses(sock, 1)
    assert status == 200
    seen = app_saw(body)
    assert seen["body_len"] == 5
    assert name.lower() not in seen["headers"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param("req-abc.123:x", True, id="valid-kept"),
        pytest.param("has space", False, id="space-replaced"),
        pytest.param("x" * 129, False, id="too-long-replaced"),
    ],
)
def test_request_id_propagated_when_valid_else_generated(served: Served, sent: str, kept: bool) -> None:
    status, _, body = served.request("GET", "/public/rid", headers={"X-Request-Id": sent})
    assert status == 200
    rid = app_saw(body)["headers"]["x-request-id"]
    assert (rid == sent) is kept
    assert served.decision(rid)["route"] == "public"


# -- routing fails closed -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "status", "reason", "allow"),
    [
        pytest.param("GET", "/nowhere", 404, "route.not_found", None, id="unknown-path"),
        pytest.param("GET", "/", 404, "route.not_found", None, id="root"),
        pytest.param("GET", "/upload", 405, "route.method_not_allowed", "POST", id="get-on-post-only"),
        pytest.param("DELETE", "/health", 405, "route.method_not_allowed", "GET, HEAD", id="delete-on-get-only"),
    ],
)
def test_unknown_route_denied(
    served: Served, method: str, target: str, status: int, reason: str, allow: str | None
) -> None:
    got, headers, body = served.request(method, target)
    assert got == status
    assert headers["content-type"] == "application/problem+json"
    doc = problem(body)
    assert (doc["status"], doc["reason"]) == (status, reason)
    assert headers.get("allow") == allow


# -- client address: ip_filter, trusted proxies, X-Forwarded-For ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "xff", "status", "client_ip"),
    [
        pytest.param("/admin", None, 403, "127.0.0.1", id="direct-not-in-allow-list"),
        pytest.param("/admin", "10.1.2.3", 200, "10.1.2.3", id="via-trusted-proxy-allowed"),
        pytest.param("/admin", "10.1.2.3, 198.51.100.7", 403, "198.51.100.7", id="spoofed-left-hop-ignored"),
        pytest.param("/admin", "198.51.100.7, 10.1.2.3", 200, "10.1.2.3", id="rightmost-untrusted-hop-wins"),
        pytest.param("/blocked", "203.0.113.9", 403, "203.0.113.9", id="deny-list-via-trusted-proxy"),
        pytest.param("/blocked", None, 200, "127.0.0.1", id="deny-list-direct-not-listed"),
        pytest.param("/blocked", "not-an-ip", 200, "127.0.0.1", id="garbage-hop-never-becomes-client"),
    ],
)
def test_ip_filter_uses_client_address_from_trusted_proxies(
    served: Served, target: str, xff: str | None, status: int, client_ip: str
) -> None:
    rid = request_id_for("ip", served.flavor, target, xff)
    headers = {"X-Request-Id": rid}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    got, _, body = served.request("GET", target, headers=headers)
    assert got == status
    line = served.decision(rid)
    assert line["client_ip"] == client_ip
    if status == 403:
        assert problem(body)["reason"] == "ip.denied"
        assert (line["decision"], line["reason"], line["stage"]) == ("deny", "ip.denied", "ip_filter")


# -- body limits --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "size", "chunked", "status", "stage"),
    [
        pytest.param("/upload", 10, False, 200, "", id="small-with-length"),
        pytest.param("/upload", 10, True, 200, "", id="small-chunked"),
        pytest.param("/upload", 64, True, 200, "", id="exactly-the-limit-chunked"),
        pytest.param("/upload", 100, False, 413, "request_size", id="declared-over-route-limit"),
        pytest.param("/upload", 100, True, 413, "request_size", id="chunked-over-route-limit-while-streaming"),
        pytest.param("/public/big", 5000, False, 413, "limits", id="declared-over-global-limit"),
        pytest.param("/public/big", 5000, True, 413, "limits", id="chunked-over-global-limit"),
        pytest.param("/inspect", 100, True, 413, "test_body_reader", id="chunked-over-limit-while-stage-reads"),
    ],
)
def test_request_body_limit(served: Served, target: str, size: int, chunked: bool, status: int, stage: str) -> None:
    rid = request_id_for("size", served.flavor, target, size, chunked)
    got, headers, body = served.request(
        "POST", target, headers={"X-Request-Id": rid}, body=b"b" * size, chunked=chunked
    )
    assert got == status
    line = served.decision(rid)
    if status == 413:
        assert problem(body)["reason"] == "request.body_too_large"
        assert headers["connection"] == "close"  # the rest of the upload is not read
        assert (line["decision"], line["reason"], line["stage"], line["status"]) == (
            "deny",
            "request.body_too_large",
            stage,
            413,
        )
    else:
        assert app_saw(body)["body_len"] == size
        assert line["decision"] == "allow"


def test_body_over_limit_after_app_started_responding_is_cut_off(served: Served) -> None:
    rid = f"early-{served.flavor}"
    status, _, body = served.request("POST", "/raw/early", headers={"X-Request-Id": rid}, body=b"b" * 200, chunked=True)
    assert status == 200  # already on the wire before the body grew too large
    assert body == b"started "  # ... but the app's "read N" never follows: the connection was closed
    line = served.decision(rid)
    assert line["error"] == "request.body_too_large"
    assert line["status"] == 200


def test_body_within_limit_reaches_app_that_started_early(served: Served) -> None:
    status, _, body = served.request("POST", "/raw/early", body=b"b" * 50, chunked=True)
    assert (status, body) == (200, b"started read 50")


# -- paths: what routing sees is what the app sees -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "status", "reason", "app_path"),
    [
        pytest.param("/public/..%2fadmin", 400, "http.bad_path", None, id="encoded-slash-dotdot"),
        pytest.param("/public/%2Fadmin", 400, "http.bad_path", None, id="encoded-slash"),
        pytest.param("/public/..%5cadmin", 400, "http.bad_path", None, id="encoded-backslash"),
        pytest.param("/%2e%2e/admin", 400, "http.bad_path", None, id="encoded-dotdot-above-root"),
        pytest.param("/public/..;/admin", 400, "http.bad_path", None, id="dotdot-semicolon"),
        pytest.param("/public/.;/x", 400, "http.bad_path", None, id="dot-semicolon"),
        pytest.param("/public/%00x", 400, "http.bad_path", None, id="encoded-nul"),
        pytest.param("/public/%zz", 400, "http.bad_path", None, id="bad-percent-encoding"),
        pytest.param("/public/%ff", 400, "http.bad_path", None, id="not-utf8"),
        pytest.param("/../admin", 400, "http.bad_path", None, id="dotdot-above-root"),
        pytest.param("//admin", 403, "ip.denied", None, id="double-slash-still-the-admin-route"),
        pytest.param("/public/%2e%2e/admin", 403, "ip.denied", None, id="encoded-dotdot-resolved-to-admin"),
        pytest.param("/public/x/../../admin", 403, "ip.denied", None, id="dotdot-resolved-to-admin"),
        pytest.param("//public//x", 200, None, "/public/x", id="repeated-slashes-merged"),
        pytest.param("/public/./x", 200, None, "/public/x", id="dot-segment-removed"),
        pytest.param("/public/a%20b", 200, None, "/public/a b", id="encoded-space-decoded"),
    ],
)
def test_path_normalised_or_denied_like_the_proxy(
    served: Served, target: str, status: int, reason: str | None, app_path: str | None
) -> None:
    got, _, body = served.request("GET", target)
    assert got == status
    if reason is not None:
        assert problem(body)["reason"] == reason
    if app_path is not None:
        seen = app_saw(body)
        assert seen["path"] == app_path  # the app routes by the path the gateway checked, not the raw one
        assert "//" not in seen["raw_path"] and "/./" not in seen["raw_path"]


@pytest.mark.parametrize(
    ("headers", "host", "status", "reason"),
    [
        pytest.param([], None, 400, "http.bad_host", id="http11-without-host"),
        pytest.param([("Host", "other")], "localhost", 400, "http.bad_host", id="two-hosts"),
        pytest.param([], "bad_host!", 400, "http.bad_host", id="malformed-host"),
        pytest.param([("Expect", "something-else")], "localhost", 417, "http.expectation_failed", id="bad-expect"),
        pytest.param([("Host", "")], None, 200, None, id="empty-host-allowed"),
    ],
)
def test_request_head_checks(
    served: Served, headers: list[tuple[str, str]], host: str | None, status: int, reason: str | None
) -> None:
    got, _, body = served.request("GET", "/public/head", headers=headers, host=host)
    assert got == status
    if reason is not None:
        assert problem(body)["reason"] == reason


def test_method_and_url_overrides_never_reach_the_app(served: Served) -> None:
    sent = {"X-HTTP-Method-Override": "DELETE", "X-Method-Override": "PUT", "X-Original-URL": "/admin/x"}
    status, _, body = served.request("GET", "/public/items", headers={**sent, "X_Rewrite_URL": "/admin/x"})
    assert status == 200
    headers = app_saw(body)["headers"]
    assert not {"x-http-method-override", "x-method-override", "x-original-url", "x_rewrite_url"} & set(headers)

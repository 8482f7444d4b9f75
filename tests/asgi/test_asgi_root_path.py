"""The root path: configuration the middleware checks every scope against, and what routes are matched on.

Servers disagree on what `path` holds under a root path (uvicorn puts the root in it; hypercorn, daphne and granian
do not), and Starlette, FastAPI and Django route on `path` minus `root_path`. The routes must match exactly that,
whichever server it is, and a root path the operator did not configure (daphne takes one from a request header)
must not choose it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_support import call_direct, direct_scope, problem, raw_request, serving

ROUTES = """
routes:
  - id: admin
    match: {path: "/admin/**"}
    stages: [{use: ip_filter, config: {allow: ["10.0.0.0/8"]}}, {use: anonymous}]
  - id: console
    match: {path: "/admin/console", methods: [GET]}
    websocket: true
    stages: [{use: ip_filter, config: {allow: ["10.0.0.0/8"]}}, {use: anonymous}]
  - id: sockets
    match: {path: "/ws/**", methods: [GET]}
    websocket: true
    stages: [{use: anonymous}]
  - id: site
    match: {path: "/**"}
    stages: [{use: anonymous}]
"""


async def _echo(request: Request) -> JSONResponse:
    scope = request.scope
    doc = {"reached": request.scope["endpoint"].__name__, "path": scope["path"], "root_path": scope["root_path"]}
    doc["raw_path"] = scope["raw_path"].decode("latin-1")
    return JSONResponse(doc)


async def admin(request: Request) -> JSONResponse:
    return await _echo(request)


async def site(request: Request) -> JSONResponse:
    return await _echo(request)


async def _socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("ADMIN-CONSOLE")
    await websocket.close()


def app() -> Starlette:
    """Starlette's router is the reference: it routes on `path` minus `root_path` (get_route_path)."""
    return Starlette(
        routes=[
            Route("/admin/{p:path}", admin),
            WebSocketRoute("/admin/console", _socket),
            WebSocketRoute("/ws/feed", _socket),
            Route("/{p:path}", site),
        ]
    )


def middleware(inner: Any = None, root_path: str = "", log: DecisionLog | None = None) -> StockadeMiddleware:
    log = log or DecisionLog("off", FakeClock())
    return StockadeMiddleware(inner or app(), config_text=ROUTES, root_path=root_path, decision_log=log)


def scope_for(path: str, root_path: str, raw_path: str | None = None, kind: str = "http") -> dict[str, Any]:
    raw = (raw_path if raw_path is not None else path).encode()
    return direct_scope(kind, path, raw_path=raw, root_path=root_path)


# -- the path routes match ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "scope_root", "path", "raw", "status", "reached"),
    [
        pytest.param("", "", "/admin/x", None, 403, "", id="no-root"),
        pytest.param("", "", "/docs", None, 200, "site", id="no-root-site"),
        pytest.param("/api", "/api", "/api/admin/x", None, 403, "", id="root-in-path-uvicorn"),
        pytest.param("/api", "/api", "/admin/x", None, 403, "", id="root-not-in-path-hypercorn-daphne-granian"),
        pytest.param("/api", "/api", "/api/docs", None, 200, "site", id="root-in-path-site"),
        pytest.param("/api", "/api", "/docs", None, 200, "site", id="root-not-in-path-site"),
        pytest.param("/api", "/api", "/apiadmin/x", None, 200, "site", id="root-not-a-whole-segment"),
        pytest.param("/api", "/api", "/api", None, 200, "site", id="the-root-itself"),
        pytest.param("/api", "/api", "//api//admin/x", None, 403, "", id="slashes-merged-first"),
        pytest.param("/api", "/api", "/api/x/../admin/x", None, 403, "", id="dot-segments-under-the-root"),
        pytest.param("/api", "/api", "/x/../api/admin/x", None, 403, "", id="dot-segments-into-the-root"),
        pytest.param("/api/v1", "/api/v1", "/api/v1/admin/x", None, 403, "", id="two-segment-root"),
        pytest.param("/api/v1", "/api/v1", "/api/v1x/admin/x", None, 200, "site", id="two-segment-root-not-whole"),
        pytest.param("/über", "/über", "/über/admin/x", "/%C3%BCber/admin/x", 403, "", id="encoded-root"),
        pytest.param("/über", "/über", "/über/docs", "/%C3%BCber/docs", 200, "site", id="encoded-root-site"),
    ],
)
def test_routes_match_the_path_the_app_routes_on(
    root: str, scope_root: str, path: str, raw: str | None, status: int, reached: str
) -> None:
    sent = call_direct(middleware(root_path=root), scope_for(path, scope_root, raw))
    assert sent.status == status
    if reached:
        assert orjson.loads(sent.body)["reached"] == reached
    else:
        assert b"admin" not in sent.body


@pytest.mark.parametrize(
    ("root", "scope_root", "path", "raw"),
    [
        pytest.param("", "/public", "/public/admin/x", None, id="daphne-root-path-header"),
        pytest.param("", "/api", "/admin/x", None, id="server-root-the-middleware-was-not-told"),
        pytest.param("", "/api", "/api/admin/x", None, id="server-root-in-path-not-told"),
        pytest.param("/api", "", "/api/admin/x", None, id="configured-root-the-server-does-not-send"),
        pytest.param("/api", "/api//", "/api//admin/x", None, id="two-trailing-slashes"),
        pytest.param("/api", "/API", "/API/admin/x", None, id="other-case"),
        pytest.param("/api", "/api/v1", "/api/v1/admin/x", None, id="longer"),
        pytest.param("/api", "/ap", "/ap/admin/x", None, id="shorter"),
    ],
)
def test_a_root_path_other_than_the_configured_one_is_400(
    root: str, scope_root: str, path: str, raw: str | None
) -> None:
    sent = call_direct(middleware(root_path=root), scope_for(path, scope_root, raw))
    assert sent.status == 400
    assert problem(sent.body)["reason"] == "http.bad_path"


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        pytest.param("/api/../admin/x", None, id="dot-dot"),
        pytest.param("/api/../admin/x", "/api/%2e%2e/admin/x", id="encoded-dot-dot"),
        pytest.param("/api/x/../../admin/x", None, id="two-levels"),
        pytest.param("/api/..", None, id="to-the-top"),
    ],
)
def test_a_path_that_climbs_out_of_the_root_is_400(path: str, raw: str | None) -> None:
    """Sent under the root (a server or Mount dispatched it there) but normalised out of it: the app would get a path
    outside its mount."""
    sent = call_direct(middleware(root_path="/api"), scope_for(path, "/api", raw))
    assert sent.status == 400
    assert problem(sent.body)["reason"] == "http.bad_path"


# A root path with a trailing '/': `uvicorn --root-path /` or `/api/` (path '//docs', '/api//docs'), or one configured
# so. Starlette strips a root only when a '/' follows it (get_route_path), so '/api/' routes '/api/docs' in full but
# '/api//docs' as '/docs': the middleware hands the app the root without its trailing '/' and judges what follows.
@pytest.mark.parametrize(
    ("root", "scope_root", "path", "status"),
    [
        pytest.param("", "/", "//docs/x", 200, id="uvicorn-root-slash"),
        pytest.param("", "/", "/docs/x", 200, id="hypercorn-root-slash"),
        pytest.param("", "/", "//admin/x", 403, id="uvicorn-root-slash-admin"),
        pytest.param("", "/", "/admin/x", 403, id="hypercorn-root-slash-admin"),
        pytest.param("/", "/", "//admin/x", 403, id="configured-slash"),
        pytest.param("/", "", "/admin/x", 403, id="configured-slash-no-scope-root"),
        pytest.param("/api", "/api/", "/api//docs/x", 200, id="uvicorn-trailing-slash"),
        pytest.param("/api", "/api/", "/docs/x", 200, id="hypercorn-trailing-slash"),
        pytest.param("/api", "/api/", "/api/docs/x", 200, id="root-sent-once-with-trailing-slash"),
        pytest.param("/api", "/api/", "/api//admin/x", 403, id="uvicorn-trailing-slash-admin"),
        pytest.param("/api", "/api/", "/admin/x", 403, id="hypercorn-trailing-slash-admin"),
        pytest.param("/api", "/api/", "/api/admin/x", 403, id="root-sent-once-with-trailing-slash-admin"),
        pytest.param("/api/", "/api", "/api/admin/x", 403, id="configured-trailing-slash-admin"),
        pytest.param("/api/", "/api/", "/api/docs/x", 200, id="both-trailing-slash"),
    ],
)
def test_a_root_path_with_a_trailing_slash_is_judged_as_starlette_routes_it(
    tmp_path: Path, root: str, scope_root: str, path: str, status: int
) -> None:
    log_path = tmp_path / "decisions.log"
    log = DecisionLog(str(log_path), FakeClock())
    sent = call_direct(middleware(root_path=root, log=log), scope_for(path, scope_root))
    log.close()
    judged = orjson.loads(log_path.read_bytes())["path"]
    assert sent.status == status
    if status == 403:
        assert judged.startswith("/admin/")
        return
    seen = orjson.loads(sent.body)
    assert seen["root_path"] == root.rstrip("/")  # '/' is no root
    assert (get_route_path({"path": seen["path"], "root_path": seen["root_path"]}) or "/") == judged


@pytest.mark.parametrize(
    ("root", "client_root", "target", "status"),
    [
        pytest.param("", "/", "/admin/x", 403, id="slash"),
        pytest.param("/api", "/api/", "/admin/x", 403, id="trailing-slash"),
        pytest.param("/api", "/api/", "/docs", 200, id="trailing-slash-site"),
    ],
)
def test_a_root_path_with_a_trailing_slash_through_httpx(root: str, client_root: str, target: str, status: int) -> None:
    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=middleware(root_path=root), root_path=client_root)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(target)

    got = asyncio.run(fetch())
    assert got.status_code == status
    if status == 200:
        assert got.json()["reached"] == "site"


def test_unexpected_root_detail_tells_the_operator(tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.log"
    log = DecisionLog(str(log_path), FakeClock())
    call_direct(middleware(log=log), scope_for("/public/admin/x", "/public"))
    log.close()
    line = orjson.loads(log_path.read_bytes())
    assert (line["status"], line["reason"], line["stage"]) == (400, "http.bad_path", "http")
    assert "unexpected root path '/public'" in line["detail"]
    assert "routes match the path after the root" in line["detail"]  # an old config's /public/** routes will not


def _routes(*paths: str, fold: bool = False) -> str:
    routes = "".join(
        f"  - {{id: r{i}, match: {{path: '{p}'}}, stages: [{{use: anonymous}}]}}\n" for i, p in enumerate(paths)
    )
    return f"limits: {{case_insensitive_routing: {str(fold).lower()}}}\nroutes:\n{routes}"


# A config written for earlier versions under Mount('/api') guards '/api/admin/**'. With root_path='/api' routes
# match what follows the root, so that guard matches only '/api/api/admin/...' and the requests it was written for
# fall to '/**': refused, unless the app's own paths really start with the root (root_prefixed_routes).
@pytest.mark.parametrize(
    ("root", "paths", "fold", "refused"),
    [
        pytest.param("/api", ("/api/admin/**", "/**"), False, "'r0' (/api/admin/**)", id="old-mount-config"),
        pytest.param("/api", ("/api",), False, "'r0' (/api)", id="the-root-itself"),
        pytest.param("/api", ("/API/admin/**",), True, "'r0'", id="case-insensitive"),
        pytest.param("/api/", ("/api/admin/**",), False, "'r0'", id="configured-with-trailing-slash"),
        pytest.param("/api", ("/API/admin/**",), False, None, id="other-case-case-sensitive"),
        pytest.param("/api", ("/apiary/**", "/admin/**"), False, None, id="not-a-whole-segment"),
        pytest.param("", ("/api/admin/**",), False, None, id="no-root"),
    ],
)
def test_routes_written_with_the_root_in_front_are_refused(
    root: str, paths: tuple[str, ...], fold: bool, refused: str | None
) -> None:
    def build() -> StockadeMiddleware:
        return StockadeMiddleware(app(), config_text=_routes(*paths, fold=fold), root_path=root)

    if refused is None:
        build()
        return
    with pytest.raises(ValueError, match="match only requests that repeat it") as err:
        build()
    assert refused in str(err.value) and "root_prefixed_routes=True" in str(err.value)
    StockadeMiddleware(app(), config_text=_routes(*paths, fold=fold), root_path=root, root_prefixed_routes=True)


def test_a_reload_with_routes_under_the_root_is_refused_and_keeps_the_old_config() -> None:
    mw = StockadeMiddleware(app(), config_text=_routes("/admin/**"), root_path="/api")
    before = mw.runtime
    with pytest.raises(ValueError, match="match only requests that repeat it"):
        mw.reload(load_config_text(_routes("/api/admin/**"), require_upstreams=False))
    assert mw.runtime is before


@pytest.mark.parametrize(
    ("scope_root", "path", "app_path"),
    [
        pytest.param("/api", "/api/docs", "/api/docs", id="root-in-path"),
        pytest.param("/api", "/docs", "/docs", id="root-not-in-path"),
        pytest.param("/api", "//api/./docs", "/api/docs", id="normalised-root-in-path"),
        pytest.param("/api", "/api", "/api/", id="the-root-itself"),
    ],
)
def test_the_app_gets_the_scope_as_the_server_sent_it_normalised(
    tmp_path: Path, scope_root: str, path: str, app_path: str
) -> None:
    """The app's root path and the form of its path are the server's; the decision log says the path judged."""
    log_path = tmp_path / "decisions.log"
    log = DecisionLog(str(log_path), FakeClock())
    sent = call_direct(middleware(root_path="/api", log=log), scope_for(path, scope_root))
    log.close()
    seen = orjson.loads(sent.body)
    assert (seen["path"], seen["raw_path"], seen["root_path"]) == (app_path, app_path, scope_root)
    judged = app_path.removeprefix("/api") or "/"
    assert orjson.loads(log_path.read_bytes())["path"] == judged


def test_encoded_root_reaches_the_app_with_its_raw_path() -> None:
    sent = call_direct(middleware(root_path="/über"), scope_for("/über/docs", "/über", "/%C3%BCber/docs"))
    seen = orjson.loads(sent.body)
    assert (seen["path"], seen["raw_path"], seen["root_path"]) == ("/über/docs", "/%C3%BCber/docs", "/über")


@pytest.mark.parametrize(
    ("scope_root", "path", "status"),
    [
        pytest.param("/ws", "/ws/admin/console", 403, id="daphne-root-path-header"),  # judged by /ws/** before
        pytest.param("", "/ws/feed", 101, id="no-root"),
    ],
)
def test_websocket_handshakes_follow_the_same_rule(scope_root: str, path: str, status: int) -> None:
    sent = call_direct(middleware(), scope_for(path, scope_root, kind="websocket"))
    kinds = [m["type"] for m in sent.messages]
    if status == 101:
        assert kinds[0] == "websocket.accept"
    else:
        assert kinds == ["websocket.close"] and sent.messages[0]["code"] == 1008


def test_websocket_under_the_configured_root() -> None:
    sent = call_direct(middleware(root_path="/api"), scope_for("/api/admin/console", "/api", kind="websocket"))
    assert [m["type"] for m in sent.messages] == ["websocket.close"]
    sent = call_direct(middleware(root_path="/api"), scope_for("/api/ws/feed", "/api", kind="websocket"))
    assert sent.messages[0]["type"] == "websocket.accept"


# -- a root path the app sets itself ---------------------------------------------------------------------------


def rooted_fastapi(root: str) -> FastAPI:
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    api.root_path = root  # what FastAPI(root_path=...) sets (the argument is deprecated, the behaviour is not)
    api.add_api_route("/admin/{p:path}", admin)
    api.add_api_route("/{p:path}", site)
    return api


class _Handler:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")


def made_in(package: str, **attributes: str) -> Any:
    """An app object whose class comes from `package`, as the middleware sees it."""
    app = type("App", (_Handler,), {"__module__": f"{package}.app"})()
    app.__dict__.update(attributes)
    return app


@pytest.mark.parametrize(
    ("app", "root", "refused"),
    [
        # FastAPI(root_path=...) puts its root path into every scope it routes, whatever the server sent.
        pytest.param(
            lambda: rooted_fastapi("/api"), "", r"FastAPI\.root_path='/api'.*pass root_path='/api'", id="fastapi"
        ),
        pytest.param(lambda: rooted_fastapi("/api"), "/v2", r"root_path='/api'", id="fastapi-another-root"),
        pytest.param(lambda: rooted_fastapi("/api"), "/api", None, id="fastapi-same-root"),
        pytest.param(lambda: rooted_fastapi(""), "", None, id="fastapi-no-root"),
        pytest.param(lambda: rooted_fastapi("/"), "", None, id="fastapi-root-slash-is-none"),
        # Starlette keeps a root of '/api/' on '/api/docs' (normalised, so the app gets no '//'): it would route the
        # whole path where the middleware judges what follows the root.
        pytest.param(lambda: rooted_fastapi("/api/"), "/api", r"must not end in '/'", id="fastapi-trailing-slash"),
        # Django routes on `path` minus FORCE_SCRIPT_NAME, whatever root path the server sent.
        pytest.param(lambda: made_in("django"), "", r"FORCE_SCRIPT_NAME='/api'", id="django-force-script-name"),
        pytest.param(lambda: made_in("django"), "/api", None, id="django-same-root"),
        # Flask-style apps have a `root_path` too: their source directory, nothing to do with routing.
        pytest.param(lambda: made_in("quart", root_path="/srv/app"), "", None, id="quart"),
        pytest.param(lambda: made_in("other", root_path="/srv/app"), "", None, id="another-framework"),
        # Quart takes the root off wherever it first occurs: `/x/api/admin` under `/api` is its `/admin`.
        pytest.param(lambda: made_in("quart", root_path="/srv/app"), "/api", r"Quart", id="quart-with-a-root"),
    ],
)
def test_an_app_that_roots_requests_itself_at_construction(
    monkeypatch: pytest.MonkeyPatch, app: Any, root: str, refused: str | None
) -> None:
    monkeypatch.setitem(sys.modules, "django.conf", SimpleNamespace(settings=SimpleNamespace(FORCE_SCRIPT_NAME="/api")))
    if refused is None:
        middleware(app(), root_path=root)
    else:
        with pytest.raises(ValueError, match=refused):
            middleware(app(), root_path=root)


class _Wraps:
    """An ASGI wrapper that keeps the app it wraps under `attribute` (Starlette middleware: `app`)."""

    def __init__(self, attribute: str, inner: Any) -> None:
        setattr(self, attribute, inner)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")


def _channels_router(http: Any) -> Any:
    router = made_in("channels")
    router.application_mapping = {"http": http, "websocket": made_in("other")}
    return router


def _nested(depth: int, inner: Any) -> Any:
    for _ in range(depth):
        inner = _Wraps("app", inner)
    return inner


# The app's own root is looked for behind wrappers too: `FastAPI(root_path="/api")` in a CORSMiddleware still sets
# it on every scope, and routes on what follows it. Best effort, a few levels: root_path= is the configuration.
@pytest.mark.parametrize(
    ("app", "found"),
    [
        pytest.param(lambda: CORSMiddleware(rooted_fastapi("/api"), allow_origins=["*"]), True, id="starlette-app"),
        pytest.param(lambda: _Wraps("application", made_in("django")), True, id="application"),
        pytest.param(lambda: _Wraps("http", made_in("django")), True, id="http"),
        pytest.param(lambda: _Wraps("default", made_in("django")), True, id="default"),
        pytest.param(lambda: _channels_router(made_in("django")), True, id="channels-router"),
        pytest.param(lambda: _nested(4, _channels_router(_Wraps("app", made_in("django")))), True, id="nested"),
        pytest.param(lambda: _nested(12, made_in("django")), False, id="beyond-the-levels-followed"),
    ],
)
def test_an_own_root_behind_wrappers_is_found(monkeypatch: pytest.MonkeyPatch, app: Any, found: bool) -> None:
    monkeypatch.setitem(sys.modules, "django.conf", SimpleNamespace(settings=SimpleNamespace(FORCE_SCRIPT_NAME="/api")))
    if found:
        with pytest.raises(ValueError, match=r"own root path .*pass root_path='/api'"):
            middleware(app(), root_path="")
    else:
        middleware(app(), root_path="")  # documented: configure root_path=, detection is best effort
    middleware(app(), root_path="/api")


def test_wrapped_apps_with_different_own_roots_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "django.conf", SimpleNamespace(settings=SimpleNamespace(FORCE_SCRIPT_NAME="/dj")))
    router = _channels_router(made_in("django"))
    router.application_mapping["websocket"] = rooted_fastapi("/api")
    with pytest.raises(ValueError, match="different root paths"):
        middleware(router, root_path="/api")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        pytest.param("/api/admin/x", 403, id="root-in-path"),
        pytest.param("/admin/x", 403, id="root-not-in-path"),
        pytest.param("/api/docs", 200, id="site"),
    ],
)
def test_a_wrapped_app_with_its_own_root_is_judged_after_it(target: str, status: int) -> None:
    mw = middleware(CORSMiddleware(rooted_fastapi("/api"), allow_origins=["*"]), root_path="/api")
    sent = call_direct(mw, scope_for(target, ""))
    assert sent.status == status and b'"admin"' not in sent.body


@pytest.mark.parametrize(
    ("scope_root", "path", "status"),
    [
        pytest.param("", "/admin/x", 403, id="server-without-root"),
        pytest.param("", "/api/admin/x", 403, id="server-without-root-prefixed"),
        pytest.param("", "/docs", 200, id="server-without-root-site"),
        pytest.param("/api", "/api/admin/x", 403, id="server-with-the-same-root"),
        pytest.param("/other", "/other/admin/x", 400, id="server-with-another-root"),
    ],
)
def test_an_app_that_sets_the_same_root_path(scope_root: str, path: str, status: int) -> None:
    """The app overwrites the scope's root path with its own, so a server that sends none is fine too."""
    sent = call_direct(middleware(rooted_fastapi("/api"), root_path="/api"), scope_for(path, scope_root))
    assert sent.status == status


@pytest.mark.parametrize("root", ["api", "//", "/api//", "/a//b", "/a/./b", "/a/../b", "/a\x00b", "/a?b", "/a#b"])
def test_a_root_path_that_no_normalised_path_can_start_with_is_a_config_error(root: str) -> None:
    with pytest.raises(ValueError, match="root_path"):
        middleware(root_path=root)


# -- over a real server -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/api/admin/secret", 403),  # the admin route's own policy
        ("/api/../admin/secret", 400),  # climbed out of the mount
        ("/api/%2e%2e/admin/secret", 400),
        ("/api/x/../admin/secret", 403),  # stays under the mount: the admin route still judges it
    ],
)
def test_mounted_under_starlette_with_its_mount_point_as_root_path(target: str, status: int) -> None:
    async def secret(request: Request) -> PlainTextResponse:
        return PlainTextResponse("SECRET")

    inner = Starlette(routes=[Route("/admin/secret", secret)])
    mw = middleware(inner, root_path="/api")
    outer = Starlette(routes=[Mount("/api", app=mw)])
    with serving(outer) as server:
        got, _, body = raw_request(server.port, "GET", target)
    assert got == status and b"SECRET" not in body
    if status == 400:
        assert problem(body)["reason"] == "http.bad_path"


def test_mounted_without_telling_the_middleware_is_refused() -> None:
    outer = Starlette(routes=[Mount("/api", app=middleware())])
    with serving(outer) as server:
        got, _, body = raw_request(server.port, "GET", "/api/docs")
    assert got == 400 and problem(body)["reason"] == "http.bad_path"

"""StockadeMiddleware construction, config sources, scope types, reload and the decision log at shutdown."""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_apps import starlette_app
from tests.asgi.asgi_support import call_direct, direct_scope, raw_request, serving

NO_UPSTREAM = """
routes:
  - id: items
    match: {path: "/items"}
    stages: [{use: anonymous}]
"""


def test_needs_exactly_one_config_source() -> None:
    with pytest.raises(TypeError, match="exactly one"):
        StockadeMiddleware(starlette_app())
    with pytest.raises(TypeError, match="exactly one"):
        StockadeMiddleware(starlette_app(), config="x.yaml", config_text=NO_UPSTREAM)


def test_routes_without_upstream_are_valid_here_but_not_for_the_proxy() -> None:
    with pytest.raises(ConfigError, match="needs an upstream"):
        load_config_text(NO_UPSTREAM, env={})
    mw = StockadeMiddleware(starlette_app(), config_text=NO_UPSTREAM, decision_log=DecisionLog("off", FakeClock()))
    assert list(mw.runtime.routes) == ["items"]


@pytest.mark.parametrize("kind", ["str", "path", "loaded"])
def test_config_sources(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "stockade.yaml"
    path.write_text(NO_UPSTREAM)
    source: Any = {
        "str": str(path),
        "path": path,
        "loaded": load_config_text(NO_UPSTREAM, require_upstreams=False, env={}),
    }[kind]
    mw = StockadeMiddleware(starlette_app(), config=source, decision_log=DecisionLog("off", FakeClock()))
    assert list(mw.runtime.routes) == ["items"]


def test_config_error_names_file_route_stage_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(NO_UPSTREAM.replace("{use: anonymous}", "{use: anonymous}, {use: ip_filter, config: {allw: []}}"))
    with pytest.raises(ConfigError) as info:
        StockadeMiddleware(starlette_app(), config=path)
    message = str(info.value)
    assert "bad.yaml" in message and "route 'items'" in message and "ip_filter" in message and "allw" in message


def test_unknown_scope_type_refused() -> None:
    """A connection type the middleware does not know must not reach the app unchecked."""
    reached = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "custom.event"}

    async def send(message: Any) -> None:
        pass

    mw = StockadeMiddleware(app, config_text=NO_UPSTREAM, decision_log=DecisionLog("off", FakeClock()))
    with pytest.raises(ValueError, match="unsupported ASGI scope type 'custom'"):
        asyncio.run(mw({"type": "custom"}, receive, send))
    assert reached == []


class NoLifespan:
    """An app that does not speak lifespan: Django's ASGI handler raises on the scope; others just return."""

    def __init__(self, raises: bool) -> None:
        self.app = starlette_app()
        self.raises = raises

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
        elif self.raises:
            raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")


@pytest.mark.parametrize(
    "app",
    [
        pytest.param(starlette_app, id="lifespan"),
        pytest.param(lambda: NoLifespan(raises=True), id="raises-on-lifespan"),
        pytest.param(lambda: NoLifespan(raises=False), id="returns-on-lifespan"),
    ],
)
def test_decision_lines_written_by_shutdown(tmp_path: Path, app: Any) -> None:
    """uvicorn (lifespan "auto", its default) sends no shutdown to an app that failed or ended the lifespan scope,
    so lines buffered in the last quarter second were lost: the middleware speaks the protocol for such an app."""
    log_path = tmp_path / "decisions.log"
    clock = FakeClock()
    log = DecisionLog(str(log_path), clock)
    mw = StockadeMiddleware(app(), config_text=NO_UPSTREAM, clock=clock, decision_log=log)
    with serving(mw, lifespan="auto") as server:
        for i in range(3):
            raw_request(server.port, "GET", "/items", headers={"X-Request-Id": f"shutdown-{i}"})
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert [line["request_id"] for line in lines] == ["shutdown-0", "shutdown-1", "shutdown-2"]
    log.close()


def _lifespan(mw: StockadeMiddleware, log_path: Path) -> list[tuple[str, int]]:
    """Run a lifespan scope as a server would: what the middleware sent, and how many log lines were on disk."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[tuple[str, int]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append((message["type"], len(log_path.read_bytes().splitlines())))

    asyncio.run(mw({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    return sent


async def _raises_at_once(scope: Any, receive: Any, send: Any) -> None:
    raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")


async def _router_refuses(scope: Any, receive: Any, send: Any) -> None:
    raise ValueError("No application configured for scope type 'lifespan'")  # Channels' ProtocolTypeRouter


async def _fails_before_taking_part(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("database unreachable")  # Starlette builds its middleware stack before the first receive


class _NeedsKey:
    """A middleware whose constructor fails: Starlette builds it when the first scope (lifespan) arrives."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        raise RuntimeError("database unreachable: no key configured")


def _fastapi_whose_middleware_fails() -> Any:
    api = FastAPI()
    api.add_middleware(_NeedsKey)
    return api


async def _other_value_error_before_taking_part(scope: Any, receive: Any, send: Any) -> None:
    raise ValueError("database unreachable: bad DSN")


async def _returns_at_once(scope: Any, receive: Any, send: Any) -> None:
    return


async def _speaks_lifespan(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


async def _fails_at_startup(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("database unreachable")


async def _fails_at_shutdown(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    raise RuntimeError("database unreachable")


async def _reports_startup_failure(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


COMPLETE = [("lifespan.startup.complete", 0), ("lifespan.shutdown.complete", 1)]  # the line written before the end


@pytest.mark.parametrize(
    ("app", "outcome"),
    [
        pytest.param(_raises_at_once, COMPLETE, id="django-refuses-the-scope"),  # answered for it
        pytest.param(_router_refuses, COMPLETE, id="channels-router-refuses-the-scope"),
        # Only a recognised refusal of the scope is answered for the app: any other error is a startup failure.
        pytest.param(_fails_before_taking_part, RuntimeError, id="fails-before-taking-part"),
        pytest.param(_fastapi_whose_middleware_fails(), RuntimeError, id="fastapi-middleware-fails-to-build"),
        pytest.param(_other_value_error_before_taking_part, ValueError, id="other-value-error-before-taking-part"),
        pytest.param(_returns_at_once, COMPLETE, id="returns-before-taking-part"),
        pytest.param(_speaks_lifespan, COMPLETE, id="speaks-lifespan"),
        # An app that took part fails as it would without the middleware: a real startup failure stops the server.
        pytest.param(_fails_at_startup, RuntimeError, id="fails-at-startup"),
        pytest.param(_fails_at_shutdown, RuntimeError, id="fails-at-shutdown"),
        pytest.param(_reports_startup_failure, [("lifespan.startup.failed", 0)], id="reports-startup-failure"),
    ],
)
def test_lifespan_by_how_the_app_takes_part(tmp_path: Path, app: Any, outcome: Any) -> None:
    log_path = tmp_path / "decisions.log"
    log = DecisionLog(str(log_path), FakeClock())
    mw = StockadeMiddleware(starlette_app(), config_text=NO_UPSTREAM, decision_log=log)
    call_direct(mw, direct_scope("http", "/items"))  # one line, buffered (its flush timer died with its loop)
    assert log_path.read_bytes() == b""
    mw.app = app
    if outcome in (RuntimeError, ValueError):
        with pytest.raises(outcome, match="database unreachable"):
            _lifespan(mw, log_path)
    else:
        assert _lifespan(mw, log_path) == outcome
    log.close()


EXIT_SCRIPT = """
import sys
from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_apps import starlette_app
from tests.asgi.asgi_support import call_direct, direct_scope

config = "routes: [{id: items, match: {path: /items}, stages: [{use: anonymous}]}]"
log = DecisionLog(sys.argv[1], FakeClock())
mw = StockadeMiddleware(starlette_app(), config_text=config, decision_log=log)
assert call_direct(mw, direct_scope("http", "/items")).status == 200
"""


@pytest.mark.slow
def test_decision_lines_written_when_the_process_exits(tmp_path: Path) -> None:
    """Servers without lifespan (daphne) give no shutdown signal: lines the timer had not written yet are written
    when the interpreter exits."""
    log_path = tmp_path / "decisions.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(log_path)], env=env, check=True, timeout=60)
    assert [orjson.loads(line)["route"] for line in log_path.read_bytes().splitlines()] == ["items"]


def test_middlewares_share_one_exit_hook_and_are_not_kept_alive_by_it() -> None:
    """Apps built per test or per tenant made one atexit entry each, never removed."""
    StockadeMiddleware(starlette_app(), config_text=NO_UPSTREAM, decision_log=DecisionLog("off", FakeClock()))
    before = atexit._ncallbacks()  # type: ignore[attr-defined]  # CPython's count of registered callbacks
    made = [
        StockadeMiddleware(starlette_app(), config_text=NO_UPSTREAM, decision_log=DecisionLog("off", FakeClock()))
        for _ in range(20)
    ]
    assert atexit._ncallbacks() == before  # type: ignore[attr-defined]
    gone = weakref.ref(made.pop())
    gc.collect()
    assert gone() is None


def test_reload_swaps_routes_atomically() -> None:
    clock = FakeClock()
    mw = StockadeMiddleware(
        starlette_app(), config_text=NO_UPSTREAM, clock=clock, decision_log=DecisionLog("off", clock)
    )
    with serving(mw) as server:
        assert raw_request(server.port, "GET", "/other")[0] == 404
        new = load_config_text(NO_UPSTREAM.replace("/items", "/other"), require_upstreams=False, env={})
        server.bg.call(mw.reload, new)
        assert raw_request(server.port, "GET", "/other")[0] == 200
        assert raw_request(server.port, "GET", "/items")[0] == 404

"""StockadeMiddleware construction, config sources, scope types, reload and the decision log at shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_apps import starlette_app
from tests.asgi.asgi_support import raw_request, serving

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


def test_decision_lines_written_by_shutdown(tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.log"
    clock = FakeClock()
    log = DecisionLog(str(log_path), clock)
    mw = StockadeMiddleware(starlette_app(), config_text=NO_UPSTREAM, clock=clock, decision_log=log)
    with serving(mw) as server:
        for i in range(3):
            raw_request(server.port, "GET", "/items", headers={"X-Request-Id": f"shutdown-{i}"})
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert [line["request_id"] for line in lines] == ["shutdown-0", "shutdown-1", "shutdown-2"]
    log.close()


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

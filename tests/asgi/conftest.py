"""Fixtures: the test stages registered, and the middleware served by uvicorn in front of Starlette and FastAPI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.handlers import BUILTIN_HANDLERS
from stockade.observability.decision_log import DecisionLog
from stockade.stages import BUILTIN_STAGES
from tests.asgi.asgi_apps import fastapi_app, find_middleware, starlette_app
from tests.asgi.asgi_stages import TEST_HANDLERS, TEST_STAGES
from tests.asgi.asgi_support import Served, config_text, serving


@pytest.fixture(scope="module")
def test_stages() -> Iterator[None]:
    """The test-only stages and handler, registered the way a real deployment's stages are: by import string."""
    with pytest.MonkeyPatch.context() as mp:
        for name, target in TEST_STAGES.items():
            mp.setitem(BUILTIN_STAGES, name, target)
        for name, target in TEST_HANDLERS.items():
            mp.setitem(BUILTIN_HANDLERS, name, target)
        yield


def build_app(flavor: str, **kw: Any) -> Any:
    """Starlette wrapped directly; FastAPI the way its docs add middleware (`add_middleware`)."""
    if flavor == "starlette":
        return StockadeMiddleware(starlette_app(), **kw)
    api = fastapi_app()
    api.add_middleware(StockadeMiddleware, **kw)
    return api


@pytest.fixture(scope="module", params=["starlette", "fastapi"])
def served(
    request: pytest.FixtureRequest, test_stages: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    clock = FakeClock()
    log_path = tmp_path_factory.mktemp("asgi") / "decisions.log"
    log = DecisionLog(str(log_path), clock)
    app = build_app(request.param, config_text=config_text(), clock=clock, decision_log=log)
    with serving(app) as server:
        yield Served(request.param, server, find_middleware(app), log_path, clock)
    log.close()

"""The lockouts admin endpoints: viewers list, operators clear; bad requests are precise 4xx."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from stockade.admin.app import AdminState, admin_app
from stockade.clock import FakeClock
from stockade.config.models import GatewayConfig
from stockade.pipeline.stage import Services
from stockade.ratelimit.backend import LockoutRule, limits_backend

LOCK = LockoutRule(free_failures=0, lockout_after=2, backoff_base=5, backoff_max=5, lockout_seconds=600, window=600)


@pytest.fixture
def services() -> Services:
    svc = Services(clock=FakeClock(), config=GatewayConfig())
    backend = limits_backend(svc)
    asyncio.run(backend.failed([("ip:203.0.113.5", LOCK), ("id:abc", LOCK)]))
    asyncio.run(backend.failed([("ip:203.0.113.5", LOCK)]))
    return svc


class Client:
    """The admin app over httpx's ASGI transport (no server, no thread): one request per call."""

    def __init__(self, services: Services | None) -> None:
        self.app = admin_app(AdminState(lambda: {}, lambda: True, services))

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def get(self, path: str) -> httpx.Response:
        return self._call("GET", path)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self._call("POST", path, **kw)


def client(services: Services | None) -> Client:
    return Client(services)


def test_list_shows_state_failures_and_time_left(services: Services) -> None:
    body = client(services).get("/lockouts").json()
    assert body == {
        "lockouts": [
            {
                "subject": "id:abc",
                "state": "backing_off",
                "failures": 1,
                "until": "2023-11-14T22:13:25+00:00",
                "seconds_left": 5,
            },
            {
                "subject": "ip:203.0.113.5",
                "state": "locked_out",
                "failures": 2,
                "until": "2023-11-14T22:23:20+00:00",
                "seconds_left": 600,
            },
        ]
    }


def test_clear_one_then_all(services: Services) -> None:
    c = client(services)
    assert c.post("/lockouts/clear", json={"subject": "ip:203.0.113.5"}).json() == {"cleared": 1}
    assert c.post("/lockouts/clear", json={"subject": "ip:203.0.113.5"}).status_code == 404
    assert [lk["subject"] for lk in c.get("/lockouts").json()["lockouts"]] == ["id:abc"]
    assert c.post("/lockouts/clear", json={"all": True}).json() == {"cleared": 1}
    assert c.get("/lockouts").json() == {"lockouts": []}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "request.invalid_json"),
        (b"{}", "lockouts.bad_request"),
        (b'{"subject": "ip:1", "all": true}', "lockouts.bad_request"),
        (b'{"subject": 5}', "lockouts.bad_request"),
        (b'{"all": false}', "lockouts.bad_request"),
        (b"[]", "lockouts.bad_request"),
    ],
    ids=["not-json", "empty", "both", "not-string", "all-false", "array"],
)
def test_clear_bad_requests(services: Services, body: bytes, reason: str) -> None:
    response = client(services).post("/lockouts/clear", content=body)
    assert response.status_code == 400 and response.json()["reason"] == reason


def test_without_services_the_endpoints_say_unavailable() -> None:
    assert client(None).get("/lockouts").status_code == 503


def test_endpoints_declare_roles() -> None:
    app = admin_app(AdminState(lambda: {}, lambda: True, None))
    roles = {(e.path, e.methods): e.role for e in app.state.endpoints}
    assert roles[("/lockouts", ("GET",))] == "viewer"
    assert roles[("/lockouts/clear", ("POST",))] == "operator"

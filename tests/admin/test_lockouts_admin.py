"""The lockouts admin endpoints behind admin authentication: viewers list, operators clear, bad requests
are precise 4xx."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from stockade.admin.app import AdminState, admin_app
from stockade.clock import FakeClock
from stockade.config.models import GatewayConfig
from stockade.identity.service import IdentityService
from stockade.pipeline.stage import Services
from stockade.ratelimit.backend import LockoutRule, limits_backend
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store

LOCK = LockoutRule(free_failures=0, lockout_after=2, backoff_base=5, backoff_max=5, lockout_seconds=600, window=600)
ROLES = ("viewer", "operator", "admin")


class Api:
    def __init__(self, client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    async def call(self, method: str, path: str, role: str | None = "viewer", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return await self.client.request(method, path, headers=headers, **kw)


def with_api(body: Callable[[Api], Awaitable[None]], *, services: Services | None = None) -> None:
    """Run `body` against the admin app (over httpx's ASGI transport) with a token per role."""

    async def go() -> None:
        svc = services or Services(clock=FakeClock(), config=GatewayConfig.model_validate({"storage": "memory://"}))
        backend = limits_backend(svc)
        await backend.failed([("ip:203.0.113.5", LOCK), ("id:abc", LOCK)])
        await backend.failed([("ip:203.0.113.5", LOCK)])
        identity = IdentityService(shared_store(svc), shared_secrets(svc).pepper, svc.clock, "cli:test")
        tokens = {role: (await identity.create_admin_token(f"{role}-bot", role)).secret for role in ROLES}
        app = admin_app(AdminState(lambda: {}, lambda: True, svc))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            await body(Api(client, tokens))
        await svc.close()

    asyncio.run(go())


def test_list_shows_state_failures_and_time_left() -> None:
    async def body(api: Api) -> None:
        response = await api.call("GET", "/lockouts")
        assert response.json() == {
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

    with_api(body)


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/lockouts", None, {None: 401, "viewer": 200, "operator": 200, "admin": 200}),
        ("POST", "/lockouts/clear", {"subject": "id:abc"}, {None: 401, "viewer": 403, "operator": 200, "admin": 404}),
    ],
    ids=["list", "clear"],
)
def test_roles(method: str, path: str, body: Any, expected: dict[str | None, int]) -> None:
    async def run(api: Api) -> None:
        got = {role: (await api.call(method, path, role, json=body)).status_code for role in (None, *ROLES)}
        assert got == expected  # the admin's clear found nothing left: the operator had lifted it

    with_api(run)


def test_clear_one_then_all_and_each_lift_is_in_the_admin_change_log() -> None:
    svc = Services(clock=FakeClock(), config=GatewayConfig.model_validate({"storage": "memory://"}))

    async def body(api: Api) -> None:
        clear = "/lockouts/clear"
        assert (await api.call("POST", clear, "operator", json={"subject": "ip:203.0.113.5"})).json() == {"cleared": 1}
        assert (await api.call("POST", clear, "operator", json={"subject": "ip:203.0.113.5"})).status_code == 404
        assert [lk["subject"] for lk in (await api.call("GET", "/lockouts")).json()["lockouts"]] == ["id:abc"]
        assert (await api.call("POST", clear, "operator", json={"all": True})).json() == {"cleared": 1}
        assert (await api.call("GET", "/lockouts")).json() == {"lockouts": []}
        log = [c for c in await shared_store(svc).list_admin_changes() if c.action.startswith("lockout.")]
        assert [(c.action, c.target, dict(c.detail)) for c in log] == [
            ("lockout.clear", "*", {"cleared": 1}),
            ("lockout.clear", "ip:203.0.113.5", {"cleared": 1}),
        ]  # the 404 lifted nothing and is not logged
        assert all(c.actor.startswith("admin-token:adm_") and "operator-bot" in c.actor for c in log)

    with_api(body, services=svc)


@pytest.mark.parametrize(
    ("raw", "reason"),
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
def test_clear_bad_requests(raw: bytes, reason: str) -> None:
    async def body(api: Api) -> None:
        response = await api.call("POST", "/lockouts/clear", "operator", content=raw)
        assert response.status_code == 400 and response.json()["reason"] == reason

    with_api(body)


def test_endpoints_declare_roles() -> None:
    app = admin_app(AdminState(lambda: {}, lambda: True, None))
    roles = {(e.path, e.methods): e.role for e in app.state.endpoints}
    assert roles[("/lockouts", ("GET",))] == "viewer"
    assert roles[("/lockouts/clear", ("POST",))] == "operator"


@pytest.mark.parametrize(
    ("host", "allowed", "status"),
    [
        ("127.0.0.1:8081", (), 200),
        ("[::1]:8081", (), 200),
        ("localhost:8081", (), 200),
        ("LOCALHOST", (), 200),
        ("evil.example:8081", (), 421),  # DNS rebinding: a page whose name resolves to 127.0.0.1
        ("127.0.0.1.evil.example", (), 421),
        ("admin.internal:8081", ("admin.internal",), 200),
        ("admin.internal", ("Admin.Internal",), 200),
        # shapes no browser sends, that the guard read as a loopback literal
        ("[::1]evil.example", (), 421),
        ("fe80::1%evil.example", (), 421),
        ("127.0.0.1:8081, evil.example", (), 421),
        ("::ffff:7f00:1", (), 421),  # an IPv6 literal without brackets
        ("[::ffff:127.0.0.1]:8081", (), 200),
        ("myproj_stockade_1:9090", ("myproj_stockade_1",), 200),  # a Docker Compose container name
    ],
)
def test_admin_answers_only_ip_literals_localhost_and_allowed_hosts(
    host: str, allowed: tuple[str, ...], status: int
) -> None:
    from stockade.admin.app import AdminState, admin_app
    from stockade.clock import FakeClock
    from stockade.config.models import GatewayConfig
    from stockade.observability.metrics import Metrics
    from stockade.pipeline.stage import Services

    services = Services(clock=FakeClock())
    services.config = GatewayConfig.model_validate({"admin": {"allowed_hosts": list(allowed)}})
    app = admin_app(AdminState(Metrics().snapshot, lambda: True, services))

    async def go() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            resp = await client.get("/healthz", headers={"host": host})
            return resp.status_code

    assert asyncio.run(go()) == status

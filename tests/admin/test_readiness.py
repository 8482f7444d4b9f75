"""/readyz: not ready while a backend the routes fail closed without is unreachable (real Redis, a Redis Cluster
master and SQL stores taken down and brought back), ready with a `fail_open`-only backend down, one ping per
probe flood."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.admin.app import AdminState, admin_app
from stockade.admin.ready import Readiness
from stockade.admin.server import AdminServer
from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import load_config_text
from stockade.pipeline.stage import Services
from stockade.ratelimit.backend import limits_backend
from stockade.runtime import build_runtime
from stockade.testing import TestGateway, gateway_with_upstream
from tests.ratelimit.clusterutil import command, local_cluster
from tests.ratelimit.redisutil import closed_port_url, free_port, private_redis

LIMIT = """- use: rate_limit
  {fail_open}
  config: {{limits: [{{rate: "100/second", key: ip}}]}}"""


def route(rid: str, stages: str, head: str = "") -> str:
    body = "\n".join("      " + line for line in stages.splitlines())
    return f"""{head}
  - id: {rid}
    match: {{path: "/{rid}/**"}}
    upstream: "{{upstream}}"
    stages:
{body}
      - use: anonymous"""


def config(*routes: str, storage: str = "memory://", limits: str = "memory://") -> str:
    return f'storage: "{storage}"\nlimits_storage: "{limits}"\nroutes:' + "".join(routes)


LIMITED = LIMIT.format(fail_open="")
LIMITED_OPEN = LIMIT.format(fail_open="fail_open: true")
KEYED = "- use: api_key"  # before `anonymous`, which accepts every request


@pytest.mark.parametrize(
    ("routes", "needs"),
    [
        ([route("a", "")], {}),
        ([route("a", KEYED)], {"store": True}),
        ([route("a", LIMITED)], {"limits": True}),
        ([route("a", LIMITED_OPEN)], {"limits": False}),
        ([route("a", LIMITED_OPEN), route("b", LIMITED)], {"limits": True}),
        ([route("a", LIMITED), route("b", LIMITED_OPEN)], {"limits": True}),
        ([route("a", KEYED + "\n" + LIMITED_OPEN)], {"store": True, "limits": False}),
        (
            [route("a", "- use: brute_force\n  config: {per_ip: {free_failures: 2, lockout_after: 4}}")],
            {"limits": True},
        ),
    ],
)
def test_runtime_needs_the_backends_its_stages_use(routes: list[str], needs: dict[str, bool]) -> None:
    loaded = load_config_text(config(*routes).replace("{upstream}", "http://127.0.0.1:9"), env={})
    services = Services(clock=SYSTEM_CLOCK, dry_run=True)
    assert dict(build_runtime(loaded, services).needs) == needs
    # A reload starts over: a backend the new config no longer uses is no longer needed.
    again = load_config_text(config(route("a", "")).replace("{upstream}", "http://127.0.0.1:9"), env={})
    assert dict(build_runtime(again, services).needs) == {}


class Admin:
    def __init__(self, gw: TestGateway) -> None:
        self.gw = gw
        state = AdminState(
            gw.server.metrics.snapshot, lambda: gw.server.ready, gw.services, lambda: gw.server.runtime.needs
        )
        self.server = AdminServer(admin_app(state), "127.0.0.1", 0)

    def readyz(self) -> tuple[int, dict[str, object], bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}/readyz", timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw), raw
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw), raw


@contextlib.contextmanager
def admin_for(gw: TestGateway) -> Iterator[Admin]:
    admin = Admin(gw)
    gw.bg.run(admin.server.start())
    try:
        yield admin
    finally:
        gw.bg.run(admin.server.stop())


@pytest.mark.redis
@pytest.mark.parametrize("fail_open", [False, True])
def test_readyz_follows_a_redis_outage(tmp_path: Path, fail_open: bool) -> None:
    stages = LIMITED_OPEN if fail_open else LIMITED
    with private_redis(tmp_path) as redis:
        with (
            gateway_with_upstream(config(route("a", stages), limits=redis.url)) as (gw, _up),
            admin_for(gw) as admin,
        ):
            assert admin.readyz()[:2] == (200, {"status": "ready", "checks": {"workers": "ok", "limits": "ok"}})
            assert gw.request("GET", "/a/x")[0] == 200

            redis.stop()
            status, body, _ = admin.readyz()
            assert status == 200, "the answer is reused for a second: a probe flood is not a Redis flood"
            gw.advance(1.5)
            status, body, raw = admin.readyz()
            if fail_open:
                assert (status, body["checks"]) == (
                    200,
                    {"workers": "ok", "limits": "unreachable (fail_open: requests pass)"},
                )
                assert gw.request("GET", "/a/x")[0] == 200
            else:
                assert (status, body) == (
                    503,
                    {"status": "not ready", "checks": {"workers": "ok", "limits": "unreachable"}},
                )
                assert gw.request("GET", "/a/x")[0] == 503
            assert str(redis.port).encode() not in raw and b"127.0.0.1" not in raw  # the port is open: no address

            redis.start()
            gw.advance(1.5)
            assert admin.readyz()[:2] == (200, {"status": "ready", "checks": {"workers": "ok", "limits": "ok"}})


@pytest.mark.redis
def test_readyz_follows_a_redis_cluster_master_outage(tmp_path: Path) -> None:
    ready = (200, {"status": "ready", "checks": {"workers": "ok", "limits": "ok"}})
    with local_cluster(tmp_path) as cluster:
        with (
            gateway_with_upstream(config(route("a", LIMITED), limits=cluster.url)) as (gw, _up),
            admin_for(gw) as admin,
        ):
            assert admin.readyz()[:2] == ready  # every master answers and says the cluster is ok
            victim = cluster.nodes[1]
            victim.kill()  # one master of three: a third of all keys cannot be counted
            gw.advance(1.5)
            status, body, raw = admin.readyz()
            assert (status, body) == (
                503,
                {"status": "not ready", "checks": {"workers": "ok", "limits": "unreachable"}},
            )
            assert str(victim.port).encode() not in raw
            victim.start()
            gw.advance(1.5)
            before = b"cluster_state:fail" in command(victim.port, "CLUSTER", "INFO")
            status = admin.readyz()[0]
            if before and b"cluster_state:fail" in command(victim.port, "CLUSTER", "INFO"):
                assert status == 503  # it answers PING, but a restarted master refuses writes for ~2 s
            cluster.wait_ok()
            gw.advance(1.5)
            assert admin.readyz()[:2] == ready


def test_readyz_is_503_when_the_store_is_unreachable(tmp_path: Path) -> None:
    dead = f"postgresql://postgres:hunter2-secret@127.0.0.1:{free_port()}/test"
    with (
        gateway_with_upstream(config(route("a", KEYED), storage=dead), base_dir=tmp_path) as (gw, _up),
        admin_for(gw) as admin,
    ):
        status, body, raw = admin.readyz()
        assert (status, body) == (503, {"status": "not ready", "checks": {"workers": "ok", "store": "unreachable"}})
        assert b"hunter2" not in raw and b"postgres" not in raw


def test_readyz_with_a_reachable_store_and_no_limits(tmp_path: Path) -> None:
    with (
        gateway_with_upstream(config(route("a", KEYED), storage="sqlite:///s.db"), base_dir=tmp_path) as (gw, _up),
        admin_for(gw) as admin,
    ):
        assert admin.readyz()[:2] == (200, {"status": "ready", "checks": {"workers": "ok", "store": "ok"}})


def test_readyz_without_backends_checks_only_the_workers() -> None:
    with gateway_with_upstream(config(route("a", ""))) as (gw, _up), admin_for(gw) as admin:
        assert admin.readyz()[:2] == (200, {"status": "ready", "checks": {"workers": "ok"}})
        with urllib.request.urlopen(f"http://127.0.0.1:{admin.server.port}/healthz", timeout=10) as resp:
            assert resp.headers.get("server") is None  # no server software named on the admin listener either
        gw.server.ready = False  # as during a drain
        assert admin.readyz()[:2] == (503, {"status": "not ready", "checks": {"workers": "not serving"}})


def test_a_probe_flood_pings_once() -> None:
    async def body() -> None:
        services = Services(clock=SYSTEM_CLOCK)
        loaded = load_config_text(
            config(route("a", LIMITED), limits=closed_port_url()).replace("{upstream}", "http://127.0.0.1:9"), env={}
        )
        runtime = build_runtime(loaded, services)
        backend = limits_backend(services)
        real = backend.ping
        calls = 0

        async def counted() -> None:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)  # still pending while the other probes arrive
            await real()

        backend.ping = counted  # type: ignore[method-assign]
        readiness = Readiness(lambda: True, lambda: runtime.needs, services)
        results = await asyncio.gather(*(readiness.check() for _ in range(20)))
        assert calls == 1
        assert {ready for ready, _ in results} == {False}
        await services.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    "stages",
    [KEYED, "- use: jwt\n  config: {issuers: [{issuer: 'https://gw', gateway: true, audiences: [api]}]}"],
    ids=["api-key", "gateway-jwt"],
)
def test_a_reload_keeps_the_backends_of_the_config(stages: str) -> None:
    """Shared objects are built once per process: a reload of the same config found them cached and recorded no
    need of the store, so /readyz stopped checking it."""
    head = "oauth2_server: {issuer: 'https://gw', audiences: [api]}\n"
    text = (head + config(route("a", stages))).replace("{upstream}", "http://127.0.0.1:9")
    services = Services(clock=SYSTEM_CLOCK, dry_run=True)
    first = build_runtime(load_config_text(text, env={}), services).needs
    again = build_runtime(load_config_text(text, env={}), services).needs
    assert dict(first) == dict(again) == {"store": True}

"""Shared fixtures: one background event loop per test session, real upstreams and gateways on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from stockade.testing import BackgroundLoop, TestGateway, TestUpstream

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_redis_cluster() -> Iterator[None]:
    """The Redis Cluster the tests share is started by the first test that uses it, and stopped here."""
    yield
    from tests.ratelimit.clusterutil import stop_shared_cluster

    stop_shared_cluster()


@pytest.fixture
def upstream(bg: BackgroundLoop) -> Iterator[TestUpstream]:
    with TestUpstream(bg) as up:
        yield up


GatewayFactory = Callable[..., TestGateway]


@pytest.fixture
def make_gateway(bg: BackgroundLoop, upstream: TestUpstream) -> Iterator[GatewayFactory]:
    """Build gateways from a config template (`{upstream}` is replaced); all are closed after the test."""
    made: list[TestGateway] = []

    def factory(template: str, **kw: object) -> TestGateway:
        gw = TestGateway(template.replace("{upstream}", upstream.url), loop=bg, **kw)  # type: ignore[arg-type]
        gw.__enter__()
        made.append(gw)
        return gw

    yield factory
    for gw in made:
        gw.__exit__(None, None, None)


BASIC = """
routes:
  - id: api
    match: {path: "/api/**"}
    upstream: {upstream}
    stages:
      - use: anonymous
  - id: upload
    match: {path: "/upload/**", methods: [POST, PUT]}
    upstream: {upstream}
    stages:
      - use: anonymous
      - use: request_size
        config: {max_bytes: 1024}
"""


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> TestGateway:
    return make_gateway(BASIC)

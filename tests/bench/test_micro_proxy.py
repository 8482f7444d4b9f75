"""The in-process harness (bench/micro_proxy.py) really proxies: the upstream sees the rebuilt request, the
client gets the upstream's answer, and the profile's stages ran. It is checked here, never timed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bench.micro_proxy import Harness
from bench.profiles import PROFILES, Profile


def _profile(name: str) -> Profile:
    return next(p for p in PROFILES if p.name == name)


@pytest.mark.parametrize("name", ["stockade-bare", "api-key"])
def test_harness_proxies_a_request_through_the_real_path(name: str, tmp_path: Path) -> None:
    async def run() -> tuple[Harness, float]:
        h = Harness(_profile(name), tmp_path / name)
        us = await h.measure(20)
        h.check()
        return h, us

    h, us = asyncio.run(run())
    assert us > 0
    sent = h.up_transport.last
    assert sent.startswith(b"GET /api/items/1 HTTP/1.1\r\n")
    assert b"\r\nx-forwarded-for: 127.0.0.1\r\n" in sent
    if name == "api-key":
        assert b"x-api-key" not in sent.lower()  # the credential was stripped ...
        assert b"\r\nx-stockade-principal: bench\r\n" in sent  # ... and the consumer established
    assert h.up_transport.writes == h.transport.writes == 20

"""Login usernames are counted under one key by every process sharing a limits backend, or refused: nodes with
peppers of their own each gave a guesser a full allowance for the same username."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.pipeline.stage import Services
from stockade.ratelimit.backend import Lockout
from stockade.ratelimit.redis import RedisBackend
from stockade.runtime import build_runtime
from stockade.security import keys
from stockade.stages.ratelimit.brute_force import hash_username
from stockade.stages.ratelimit.username_key import RECHECK, verify_username_key
from stockade.testing import Reply, gateway_with_upstream
from tests.ratelimit.clusterutil import fresh_cluster_url
from tests.ratelimit.redisutil import fresh_redis_url
from tests.stages.ratelimit.test_brute_force import LOGIN, login

CHECK_KEY = "{bf}.username-key-check"
BACKENDS: dict[str, Callable[[], str]] = {"redis": fresh_redis_url, "cluster": fresh_cluster_url}


def node(tmp_path: Path, name: str, url: str, pepper: bytes) -> tuple[str, Path]:
    """A node's config text and directory (as on a host of its own), with `pepper` in its pepper file."""
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / "pepper").write_text(base64.b64encode(pepper).decode())
    return f'limits_storage: "{url}"\nsecrets: {{pepper_file: pepper}}\n' + LOGIN, tmp_path / name


async def _command(url: str, key: str, *args: str) -> object:
    backend = RedisBackend(url, FakeClock())
    try:
        return await backend.client.call_on(backend.prefix + key, *args, backend.prefix + key)
    finally:
        await backend.aclose()


async def _lockouts(url: str) -> list[Lockout]:
    backend = RedisBackend(url, FakeClock())
    try:
        return await backend.lockouts()
    finally:
        await backend.aclose()


async def _recorded_failures(url: str, subject: str, n: int) -> None:
    backend = RedisBackend(url, FakeClock())
    try:
        async with asyncio.timeout(10):
            while (await backend.blocked([subject]))[0][2] < n:
                await asyncio.sleep(0.01)  # a background task of the gateway's, not time under test
    finally:
        await backend.aclose()


def recorded(url: str) -> object:
    return asyncio.run(_command(url, CHECK_KEY, "GET"))


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_node_with_another_pepper_on_a_shared_backend_refuses_logins(tmp_path: Path, kind: str) -> None:
    url = BACKENDS[kind]()
    text_a, dir_a = node(tmp_path, "a", url, b"A" * 32)
    text_b, dir_b = node(tmp_path, "b", url, b"B" * 32)
    text_c, dir_c = node(tmp_path, "c", url, b"A" * 32)  # the same pepper as node a
    with (
        gateway_with_upstream(text_a, base_dir=dir_a) as (gw_a, up_a),
        gateway_with_upstream(text_b, base_dir=dir_b) as (gw_b, up_b),
        gateway_with_upstream(text_c, base_dir=dir_c) as (gw_c, up_c),
    ):
        for up in (up_a, up_b, up_c):
            up.reply("/login", Reply(401))
        assert login(gw_a, "ceo@example.com") == (401, "")
        assert login(gw_b, "ceo@example.com") == (503, "brute_force.unavailable")  # was 401: its own count
        assert login(gw_b, "ceo@example.com") == (503, "brute_force.unavailable")
        # A and C count together: after one failure on each, both make the guesser back off.
        assert login(gw_c, "ceo@example.com")[0] == 401
        subject = f"user:{hash_username(keys.username_key(b'A' * 32), 'ceo@example.com')}"
        asyncio.run(_recorded_failures(url, subject, 2))  # failures are recorded after the answer
        assert [login(gw, "ceo@example.com")[0] for gw in (gw_a, gw_c)] == [429, 429]
    assert recorded(url) == keys.username_key_check(keys.username_key(b"A" * 32)).encode()


@pytest.mark.parametrize("kind", BACKENDS)
def test_start_up_refuses_a_pepper_other_than_the_backends(tmp_path: Path, kind: str) -> None:
    """As verify_with_store refuses one other than the store's: exit 2 at start, with the fix in the message."""
    url = BACKENDS[kind]()

    async def start(name: str, pepper: bytes) -> None:
        text, base = node(tmp_path, name, url, pepper)
        loaded = load_config_text(text.replace("{upstream}", "http://127.0.0.1:9"), base_dir=base, env={})
        services = Services(clock=FakeClock())
        build_runtime(loaded, services)
        try:
            await verify_username_key(services)
        finally:
            await services.close()

    asyncio.run(start("a", b"A" * 32))
    asyncio.run(start("c", b"A" * 32))
    with pytest.raises(ConfigError) as info:
        asyncio.run(start("b", b"B" * 32))
    [problem] = info.value.problems
    assert "pepper differs" in problem and "same pepper" in problem and "STOCKADE_PEPPER" in problem
    assert base64.b64encode(b"A" * 32).decode() not in problem


def test_start_up_with_the_backend_unreachable_starts_and_requests_check_again(tmp_path: Path) -> None:
    text, base = node(tmp_path, "a", "redis://127.0.0.1:1/0", b"A" * 32)
    loaded = load_config_text(text.replace("{upstream}", "http://127.0.0.1:9"), base_dir=base, env={})

    async def start() -> None:
        services = Services(clock=FakeClock())
        build_runtime(loaded, services)
        try:
            await verify_username_key(services)  # logs a warning, does not raise
        finally:
            await services.close()

    asyncio.run(start())


def test_the_check_is_read_again_and_a_lost_record_taken_by_another_pepper_is_noticed(tmp_path: Path) -> None:
    """A verified node used to keep trusting the first answer: Redis losing its data, then a node with another
    pepper recording its own check, went unnoticed by the nodes already running."""
    url = fresh_redis_url()
    text_a, dir_a = node(tmp_path, "a", url, b"A" * 32)
    text_b, dir_b = node(tmp_path, "b", url, b"B" * 32)
    with (
        gateway_with_upstream(text_a, base_dir=dir_a) as (gw_a, up_a),
        gateway_with_upstream(text_b, base_dir=dir_b) as (gw_b, up_b),
    ):
        for up in (up_a, up_b):
            up.reply("/login", Reply(401))
        assert login(gw_a, "x@example.com")[0] == 401
        asyncio.run(_command(url, CHECK_KEY, "DEL"))
        assert login(gw_b, "y@example.com")[0] == 401  # B records its own
        assert login(gw_a, "z@example.com")[0] == 401  # A read the record a moment ago
        gw_a.advance(RECHECK + 1)
        assert login(gw_a, "z@example.com") == (503, "brute_force.unavailable")


def test_the_check_stays_out_of_the_lockouts(tmp_path: Path) -> None:
    url = fresh_redis_url()
    text, base = node(tmp_path, "a", url, b"A" * 32)
    with gateway_with_upstream(text, base_dir=base) as (gw, up):
        up.reply("/login", Reply(401))
        assert [login(gw, "ceo@example.com")[0] for _ in range(2)] == [401, 401]
        subject = f"user:{hash_username(keys.username_key(b'A' * 32), 'ceo@example.com')}"
        asyncio.run(_recorded_failures(url, subject, 2))
        subjects = [lk.subject for lk in asyncio.run(_lockouts(url))]
    assert len(subjects) == 1 and subjects[0].startswith("user:")  # listing them read no check as a lockout
    assert recorded(url) is not None


def test_memory_backends_need_no_pepper_and_keep_their_key_across_reloads(tmp_path: Path) -> None:
    """A read-only config directory or `generate: false` without a pepper refused a login route (exit 2) once
    usernames were keyed with the pepper - which a memory:// backend, living and dying with the process, never
    needed."""
    (tmp_path / ".stockade").write_text("a file where the secrets directory would go: nothing can be generated")
    text = "secrets: {generate: false}\n" + LOGIN
    with gateway_with_upstream(text, base_dir=tmp_path) as (gw, up):
        up.reply("/login", Reply(401))
        assert [login(gw, "ceo@example.com")[0] for _ in range(3)] == [401, 401, 429]
        gw.reload(text.replace("{upstream}", up.url))
        assert login(gw, "ceo@example.com")[0] == 429

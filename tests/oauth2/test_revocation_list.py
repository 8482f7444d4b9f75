"""The revoked-jti list: nothing the change feed brings is lost to a reload, and a revoked token stays revoked
for as long as any verifier could still accept it."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from stockade.clock import FakeClock
from stockade.identity.watch import ChangeWatcher
from stockade.oauth2.revocation import RevokedJtis, revoked_jtis
from stockade.storage.memory import MemoryStore
from stockade.storage.records import RevokedToken
from stockade.testing import TestGateway
from tests.oauth2.flow import basic, call_books, create_client, get_token, oauth_gateway, post_form


def test_a_revocation_arriving_during_a_reload_is_kept() -> None:
    """A reload (hourly, or after a truncated feed) replaced the set with a snapshot taken before its last await:
    a revocation the poll delivered meanwhile was dropped until the next reload."""

    async def go() -> tuple[bool, bool]:
        clock = FakeClock()
        store = MemoryStore()
        watcher = ChangeWatcher(store, clock)
        revoked = RevokedJtis(store, watcher, clock)
        await revoked.load()
        original = store.list_revoked_tokens
        gate = asyncio.Event()

        async def slow_list(now: float) -> list[RevokedToken]:  # the query ran; its answer is still on its way
            snapshot = await original(now)
            await gate.wait()
            return snapshot

        store.list_revoked_tokens = slow_list  # type: ignore[method-assign]
        reload = asyncio.create_task(revoked.load())
        await asyncio.sleep(0)
        await store.revoke_token("jti-late", expires_at=clock.time() + 600, actor="client:x", at=clock.time())
        await watcher.poll()
        delivered = "jti-late" in revoked
        gate.set()
        await reload
        return delivered, "jti-late" in revoked

    assert asyncio.run(go()) == (True, True)


def test_a_revoked_token_stays_revoked_through_the_leeway_after_it_expires() -> None:
    """The list kept a jti only until the token's exp, but the jwt stage accepts a token until exp + leeway: a
    worker that (re)loaded the list in that window let the revoked token in again."""
    with tempfile.TemporaryDirectory() as tmp, oauth_gateway(Path(tmp)) as (gw, _, config):
        client_id, secret = create_client(config, "--name", "rev", "--scopes", "books:read")
        token = get_token(gw, client_id, secret)
        assert post_form(gw, "/oauth2/revoke", {"token": token}, basic(client_id, secret))[0] == 200
        assert call_books(gw, token)[0] == 401
        gw.advance(600 + 10)  # token_ttl 600: 10 s past exp, inside the jwt stage's leeway
        gw.bg.run(revoked_jtis(gw.services).load())  # this worker's periodic reload
        assert call_books(gw, token)[0] == 401
        with TestGateway(config.read_text(), loop=gw.bg, base_dir=Path(tmp), clock=gw.clock) as fresh:
            assert call_books(fresh, token)[0] == 401  # a worker started now

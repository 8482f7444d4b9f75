"""The API-key cache: a silent change feed is not trusted, and an unreachable store fails closed (503)."""

from __future__ import annotations

from pathlib import Path

from stockade.errors import StorageError
from stockade.storage.memory import MemoryStore
from tests.identity.support import keyed_gateway


class FlakyStore(MemoryStore):
    """A memory store whose reads can be switched off, like a database going away."""

    down = False

    async def find_api_key(self, key_hash: str):  # type: ignore[no-untyped-def]
        if self.down:
            raise StorageError("connection refused")
        return await super().find_api_key(key_hash)

    async def changes_since(self, seq: int, *, limit: int = 1000):  # type: ignore[no-untyped-def]
        if self.down:
            raise StorageError("connection refused")
        return await super().changes_since(seq, limit=limit)


def test_cache_hit_needs_no_store_but_a_stale_feed_does(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        flaky = FlakyStore()
        flaky.__dict__.update(env.service.store.__dict__)  # same data, reads can now fail
        env.gw.services.shared["store"] = env.service.store = flaky
        env.gw.services.shared["api_key_cache"].store = flaky
        env.gw.services.shared["change_watcher"].store = flaky
        issued = env.issue()
        assert env.get(X_API_Key=issued.secret)[0] == 200
        flaky.down = True
        assert env.get(X_API_Key=issued.secret)[0] == 200  # served from the cache: no I/O on a hit
        env.gw.advance(6)  # the feed has not been read for longer than MAX_STALE
        status, _, body = env.get(X_API_Key=issued.secret)
        assert (status, b"auth.unavailable" in body) == (503, True)
        assert env.decisions()[-1]["detail"].startswith("key store:")
        flaky.down = False
        assert env.get(X_API_Key=issued.secret)[0] == 200

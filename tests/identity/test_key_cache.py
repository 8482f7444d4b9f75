"""The API-key cache: a silent change feed is not trusted, and an unreachable store fails closed (503)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stockade.errors import StorageError
from stockade.identity import key_cache
from stockade.security import keys
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


def test_unknown_keys_cannot_push_real_keys_out_of_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checksum is unkeyed, so anyone can make keys that pass it. Cached in the same bounded map, a flood of
    them evicted every real key (each then a store read again), and every key change rescanned them all."""
    monkeypatch.setattr(key_cache, "MAX_UNKNOWN", 50)
    with keyed_gateway(tmp_path) as env:
        issued = env.issue()
        assert env.get(X_API_Key=issued.secret)[0] == 200
        cache = env.gw.services.shared["api_key_cache"]
        cache.max_entries = 10  # so that the flood below is many times what the known-key map holds
        for _ in range(120):
            assert env.get(X_API_Key=keys.generate())[0] == 401
        assert len(cache.unknown) == 50 and len(cache.entries) == 1
        reads = 0
        original = cache.store.find_api_key

        async def counting(key_hash: str) -> Any:
            nonlocal reads
            reads += 1
            return await original(key_hash)

        cache.store.find_api_key = counting
        assert env.get(X_API_Key=issued.secret)[0] == 200
        assert reads == 0  # still a cache hit
        later = env.issue()  # a key change clears the unknown-key map: a new key must not stay unknown
        env.sync()
        assert not cache.unknown
        assert env.get(X_API_Key=later.secret)[0] == 200

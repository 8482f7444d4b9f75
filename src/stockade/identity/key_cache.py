"""The in-memory API-key cache in front of the store: positive and negative entries, bounded, invalidated by
the change feed, plus the batched last-used writer. One per process (`services.shared["api_key_cache"]`).

Entries are keyed by `keys.fingerprint` (BLAKE2s) of the presented key, so no key is held in memory after the
request; the store is asked (by peppered HMAC) only on a miss, never on a hit.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stockade.pipeline.principal import Principal
from stockade.pipeline.verdict import Continue
from stockade.security import keys
from stockade.storage.base import NotFoundError

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.identity.watch import ChangeWatcher
    from stockade.pipeline.stage import Services
    from stockade.storage.base import Store
    from stockade.storage.records import ChangeBatch

SHARED_KEY = "api_key_cache"
MAX_ENTRIES = 100_000
# Unknown keys are cached apart, in a smaller map: anyone can make keys that pass the (unkeyed) checksum, and a
# flood of them must neither push real keys out nor make every change batch scan them.
MAX_UNKNOWN = 10_000
ENTRY_TTL = 300.0  # re-read a key at least this often, whatever the change feed says
MAX_STALE = 5.0  # a change feed silent for longer than this is not trusted: entries are re-read
USAGE_FLUSH_INTERVAL = 5.0  # last-used precision; written in one batch per interval


@dataclass(slots=True)
class KeyEntry:
    """What the cache knows about one presented key. `problem` is empty for a usable key."""

    principal: Principal | None
    key_id: str | None
    consumer_id: str | None
    expires_at: float | None
    problem: str  # for the decision log only: "unknown key", "revoked key key_x"
    identity: str  # keyed hash for ctx.state[AUTH_IDENTITY]
    stale_at: float  # monotonic
    # The stage's Continue for this key, by the header names to strip: built once, reused for every request.
    verdicts: dict[tuple[str, ...], Continue] = field(default_factory=dict, compare=False, repr=False)


class ApiKeyCache:
    def __init__(
        self,
        store: Store,
        watcher: ChangeWatcher,
        pepper: bytes,
        clock: Clock,
        *,
        max_entries: int = MAX_ENTRIES,
        ttl: float = ENTRY_TTL,
    ) -> None:
        self.store = store
        self.watcher = watcher
        self.clock = clock
        self.entries: dict[bytes, KeyEntry] = {}  # keys the store knows (usable, revoked, of a deleted consumer)
        self.unknown: dict[bytes, KeyEntry] = {}  # keys the store does not know
        self.used: set[str] = set()
        self.max_entries = max_entries
        self.ttl = ttl
        self._pepper = pepper
        watcher.subscribe(self._on_changes)
        watcher.every(USAGE_FLUSH_INTERVAL, self.flush_usage)

    async def load(self, fingerprint: bytes, presented: str) -> KeyEntry:
        """Look the key up in the store (a miss, or an entry too old to trust) and cache the answer."""
        watcher = self.watcher
        watcher.ensure_running()
        seq: int | None = await watcher.ensure_baseline()
        if not watcher.fresh(MAX_STALE):
            await watcher.poll()  # the feed fell behind: catch up before trusting anything cached
            seq = watcher.seq
        key_hash = keys.hash_secret(self._pepper, presented)
        entry = await self._read(key_hash)
        if watcher.seq == seq:  # no change was applied while we read: the answer cannot be stale
            self._insert(fingerprint, entry)
        return entry

    async def _read(self, key_hash: str) -> KeyEntry:
        stale_at = self.clock.monotonic() + self.ttl
        key = await self.store.find_api_key(key_hash)
        if key is None or not hmac.compare_digest(key.key_hash, key_hash):
            return KeyEntry(None, None, None, None, "unknown key", key_hash[:24], stale_at)
        identity = keys.identity_hash(self._pepper, key.id)
        if key.revoked_at is not None:
            return KeyEntry(None, key.id, key.consumer_id, None, f"revoked key {key.id}", identity, stale_at)
        try:
            consumer = await self.store.get_consumer(key.consumer_id)
        except NotFoundError:
            return KeyEntry(
                None, key.id, key.consumer_id, None, f"key {key.id} of a deleted consumer", identity, stale_at
            )
        principal = Principal(
            id=consumer.name,
            kind="api_key",
            scopes=frozenset(key.scopes),
            roles=frozenset(consumer.roles),
            consumer_id=consumer.id,
            plan=consumer.plan,
            credential_id=key.id,
        )
        return KeyEntry(principal, key.id, consumer.id, key.expires_at, "", identity, stale_at)

    def _insert(self, fingerprint: bytes, entry: KeyEntry) -> None:
        known = entry.key_id is not None
        entries, limit = (self.entries, self.max_entries) if known else (self.unknown, MAX_UNKNOWN)
        (self.unknown if known else self.entries).pop(fingerprint, None)
        if fingerprint not in entries and len(entries) >= limit:
            del entries[next(iter(entries))]  # oldest first (insertion order)
        entries[fingerprint] = entry

    def _on_changes(self, batch: ChangeBatch) -> None:
        if batch.truncated:
            self.entries.clear()
            self.unknown.clear()
            return
        key_ids = {c.ref for c in batch.changes if c.kind == "api_key"}
        consumer_ids = {c.ref for c in batch.changes if c.kind == "consumer"}
        if key_ids:
            self.unknown.clear()  # one of them may just have been created
        if not key_ids and not consumer_ids:
            return
        drop = [fp for fp, e in self.entries.items() if e.key_id in key_ids or e.consumer_id in consumer_ids]
        for fp in drop:
            del self.entries[fp]

    async def flush_usage(self) -> None:
        """Write last-used times for the keys used since the last flush, in one batch."""
        if not self.used:
            return
        used = set(self.used)
        self.used.clear()  # in place: stages hold this set
        now = self.clock.time()
        try:
            await self.store.touch_api_keys(dict.fromkeys(used, now))
        except Exception:
            self.used |= used  # try again next interval
            raise


def shared_key_cache(services: Services) -> ApiKeyCache:
    """The process's API-key cache, created on first use over the shared store, watcher and pepper."""
    from stockade.identity.watch import shared_watcher
    from stockade.security.secrets import shared_secrets
    from stockade.storage import shared_store

    def build() -> ApiKeyCache:
        store, watcher = shared_store(services), shared_watcher(services)
        return ApiKeyCache(store, watcher, shared_secrets(services).pepper, services.clock)

    return services.over_store(SHARED_KEY, ApiKeyCache, build)

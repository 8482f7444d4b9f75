"""Revoked token ids (RFC 7009), held in memory and kept current from the store's change feed.

The `jwt` stage asks `jti in revoked` on every request for issuers that honour revocation: a set lookup. The set
is filled once from the store, then every `revoked_token` change (from this or any worker, the CLI or the admin
API) is added as it arrives on the feed, well within a second. A feed silent for longer than MAX_STALE is not
trusted: the stage then catches up before accepting a token.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.identity.watch import ChangeWatcher
    from stockade.pipeline.stage import Services
    from stockade.storage.base import Store
    from stockade.storage.records import ChangeBatch

SHARED_KEY = "oauth2.revoked_jtis"
MAX_STALE = 5.0
RELOAD_INTERVAL = 3600.0  # drop entries whose tokens expired by reloading the live set


class RevokedJtis:
    """A set of revoked jtis with the freshness of the feed that feeds it."""

    def __init__(self, store: Store, watcher: ChangeWatcher, clock: Clock) -> None:
        self.store = store
        self.watcher = watcher
        self.clock = clock
        self._jtis: set[str] = set()
        self.loaded = False
        self._reload_task: asyncio.Task[None] | None = None
        watcher.subscribe(self._on_changes)
        watcher.every(RELOAD_INTERVAL, self.load)

    def __contains__(self, jti: object) -> bool:
        return jti in self._jtis

    def fresh(self) -> bool:
        return self.loaded and self.watcher.fresh(MAX_STALE)

    async def ensure_fresh(self) -> None:
        """Load the set on first use and catch the feed up if it fell silent. Raises StorageError."""
        self.watcher.ensure_running()
        if not self.loaded:
            await self.load()
        if not self.watcher.fresh(MAX_STALE):
            await self.watcher.poll()

    async def load(self) -> None:
        await self.watcher.ensure_baseline()  # changes after this point reach _on_changes: none can be missed
        records = await self.store.list_revoked_tokens(self.clock.time())
        self._jtis = {r.jti for r in records} | (self._jtis if not self.loaded else set())
        self.loaded = True

    def add(self, jti: str) -> None:
        """Effective at once in this process (the feed brings it to the others)."""
        self._jtis.add(jti)

    def _on_changes(self, batch: ChangeBatch) -> None:
        for change in batch.changes:
            if change.kind == "revoked_token":
                self._jtis.add(change.ref)
        if batch.truncated and (self._reload_task is None or self._reload_task.done()):
            self._reload_task = asyncio.get_running_loop().create_task(self.load())


def revoked_jtis(services: Services) -> RevokedJtis:
    found = services.shared.get(SHARED_KEY)
    if isinstance(found, RevokedJtis):
        return found
    from stockade.identity.watch import shared_watcher
    from stockade.storage import shared_store

    revoked = RevokedJtis(shared_store(services), shared_watcher(services), services.clock)
    services.shared[SHARED_KEY] = revoked
    return revoked

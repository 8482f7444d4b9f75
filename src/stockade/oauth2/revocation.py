"""Revoked token ids (RFC 7009) and disabled clients, held in memory and kept current from the store's change feed.

The `jwt` stage asks `jti in revoked` on every request for issuers that honour revocation: a set lookup. The set
is filled once from the store, then every `revoked_token` change (from this or any worker, the CLI or the admin
API) is added as it arrives on the feed, well within a second. A feed silent for longer than MAX_STALE is not
trusted: the stage then catches up before accepting a token.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from stockade.storage.base import NotFoundError

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
        self.disabled_clients: set[str] = set()  # tokens of a revoked (disabled) client stop verifying too
        self._pending: set[asyncio.Task[None]] = set()
        self.loaded = False
        self._reload_task: asyncio.Task[None] | None = None
        # While a load awaits the store, what the feed brings meanwhile is noted here too, so the load's older
        # snapshot does not overwrite it (a revocation would otherwise be lost until the next reload).
        self._arrived: set[str] | None = None
        self._clients_seen: set[str] | None = None
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
        arrived = self._arrived = set()
        seen = self._clients_seen = set()
        try:
            records = await self.store.list_revoked_tokens(self.clock.time())
            clients = await self.store.list_clients()
        finally:
            if self._arrived is arrived:
                self._arrived = self._clients_seen = None
        self._jtis = {r.jti for r in records} | arrived | (self._jtis if not self.loaded else set())
        disabled = {c.client_id for c in clients if c.disabled_at is not None}
        for client_id in seen:  # re-read after the snapshot began: their own answer is the newer one
            if client_id in self.disabled_clients:
                disabled.add(client_id)
            else:
                disabled.discard(client_id)
        self.disabled_clients = disabled
        self.loaded = True

    def add(self, jti: str) -> None:
        """Effective at once in this process (the feed brings it to the others)."""
        self._jtis.add(jti)
        if self._arrived is not None:
            self._arrived.add(jti)

    def _on_changes(self, batch: ChangeBatch) -> None:
        for change in batch.changes:
            if change.kind == "revoked_token":
                self.add(change.ref)
            elif change.kind == "client":
                task = asyncio.get_running_loop().create_task(self._client_changed(change.ref))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        if batch.truncated and (self._reload_task is None or self._reload_task.done()):
            self._reload_task = asyncio.get_running_loop().create_task(self.load())

    async def _client_changed(self, client_id: str) -> None:
        try:
            client = await self.store.get_client(client_id)
        except NotFoundError:
            client = None  # deleted: its tokens must not outlive it
        if client is None or client.disabled_at is not None:
            self.disabled_clients.add(client_id)
        else:
            self.disabled_clients.discard(client_id)
        if self._clients_seen is not None:
            self._clients_seen.add(client_id)

    async def settle(self) -> None:
        """Wait for the re-reads the change feed has triggered (a client's state, a reload) to finish."""
        while self._pending or (self._reload_task is not None and not self._reload_task.done()):
            tasks = [*self._pending, *([self._reload_task] if self._reload_task is not None else [])]
            await asyncio.gather(*tasks, return_exceptions=True)


def revoked_jtis(services: Services) -> RevokedJtis:
    from stockade.identity.watch import shared_watcher
    from stockade.storage import shared_store

    def build() -> RevokedJtis:
        return RevokedJtis(shared_store(services), shared_watcher(services), services.clock)

    return services.over_store(SHARED_KEY, RevokedJtis, build)

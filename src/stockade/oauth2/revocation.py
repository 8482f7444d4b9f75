"""Revoked token ids (RFC 7009) and disabled clients, held in memory and kept current from the store's change feed.

The `jwt` stage asks `jti in revoked` on every request for issuers that honour revocation: a set lookup. The set
is filled once from the store, then every `revoked_token` change (from this or any worker, the CLI or the admin
API) is added as it arrives on the feed, well within a second. A feed silent for longer than MAX_STALE is not
trusted: the stage then catches up before accepting a token.

A `client` change names a client without saying what changed, so the client is re-read. From the moment the change
arrives until a re-read succeeds, the client counts as disabled (fail closed): a re-read that fails (a database
restart breaks pooled connections) is retried on the watcher's cadence with a back-off of at most MAX_STALE, and
logged once when reads start failing and once when they work again. A truncated feed (changes were missed) makes
the list untrusted until a reload succeeds, retried the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from stockade.identity.watch import RetryBackoff
from stockade.storage.base import NotFoundError

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.identity.watch import ChangeWatcher
    from stockade.pipeline.stage import Services
    from stockade.storage.base import Store
    from stockade.storage.records import ChangeBatch

log = logging.getLogger("stockade.oauth2")

SHARED_KEY = "oauth2.revoked_jtis"
MAX_STALE = 5.0
RELOAD_INTERVAL = 3600.0  # drop entries whose tokens expired by reloading the live set
# A failed catch-up is retried after the watcher's interval, doubling, at most MAX_STALE: a client whose change was
# harmless is refused at most that long after the store answers again.
MAX_BACKOFF = MAX_STALE


class RevokedJtis:
    """A set of revoked jtis with the freshness of the feed that feeds it."""

    def __init__(self, store: Store, watcher: ChangeWatcher, clock: Clock) -> None:
        self.store = store
        self.watcher = watcher
        self.clock = clock
        self._jtis: set[str] = set()
        self.disabled_clients: set[str] = set()  # tokens of a revoked (disabled) client stop verifying too
        self.loaded = False
        # Clients a change named that no re-read has answered for yet (each with the change's seq): all of them
        # are in disabled_clients meanwhile.
        self._unsure: dict[str, int] = {}
        self._reload_due = False  # a truncated feed: reload before trusting the list again
        self._catch_up_task: asyncio.Task[None] | None = None
        self._backoff = RetryBackoff(clock, watcher.interval, MAX_BACKOFF)
        self._closed = False
        # While a load awaits the store, what the feed brings meanwhile is noted here too, so the load's older
        # snapshot does not overwrite it (a revocation would otherwise be lost until the next reload).
        self._arrived: set[str] | None = None
        self._clients_seen: set[str] | None = None
        watcher.subscribe(self._on_changes)
        watcher.every(RELOAD_INTERVAL, self.load)
        watcher.every(watcher.interval, self.retry)

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
        self.disabled_clients = disabled | self._unsure.keys()
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
                self.disabled_clients.add(change.ref)  # it may have been disabled: refused until a re-read says not
                self._unsure[change.ref] = change.seq
        if batch.truncated:
            self.loaded = False  # changes were missed: not fresh, and the next load keeps what is known
            self._reload_due = True
        if self._unsure or self._reload_due:
            self._backoff.now()  # the feed just answered: try at once
            self._start_catch_up()

    async def retry(self) -> None:
        """The watcher's job, on its cadence: start a catch-up that a failure left pending once its back-off is over."""
        if (self._unsure or self._reload_due) and self._backoff.due():
            self._start_catch_up()

    def _start_catch_up(self) -> None:
        task = self._catch_up_task
        if not self._closed and (task is None or task.done()):
            self._catch_up_task = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        """Reload if the feed was truncated, then re-read every client a change named. Never raises: a failure
        leaves those clients disabled (and the list untrusted) and sets when to try again."""
        try:
            if self._reload_due:
                self._reload_due = False
                try:
                    await self.load()
                except BaseException:
                    self._reload_due = True
                    raise
            while self._unsure:
                for client_id, seq in list(self._unsure.items()):
                    await self._reread(client_id, seq)
        except Exception as exc:  # the store is down, or answered something unreadable: stay closed, try later
            if self._backoff.failed():
                log.error(
                    "cannot re-read OAuth clients or revocations after a change (%s: %s): clients %s are refused "
                    "until a re-read succeeds",
                    type(exc).__name__,
                    exc,
                    ", ".join(sorted(self._unsure)) or "(none)",
                    extra={"store": self.store.url},
                )
            return
        if self._backoff.succeeded():
            log.warning("OAuth clients and revocations re-read again", extra={"store": self.store.url})

    async def _reread(self, client_id: str, seq: int) -> None:
        try:
            client = await self.store.get_client(client_id)
        except NotFoundError:
            client = None  # deleted: its tokens must not outlive it
        if self._unsure.get(client_id) != seq:
            return  # a newer change arrived during the read: read it again
        del self._unsure[client_id]
        if client is None or client.disabled_at is not None:
            self.disabled_clients.add(client_id)
        else:
            self.disabled_clients.discard(client_id)
        if self._clients_seen is not None:
            self._clients_seen.add(client_id)

    async def settle(self) -> None:
        """Wait for the catch-up the change feed has triggered (clients re-read, a reload) to finish, or fail."""
        while (task := self._catch_up_task) is not None and not task.done():
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop catching up (Services.close())."""
        self._closed = True
        task, self._catch_up_task = self._catch_up_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def revoked_jtis(services: Services) -> RevokedJtis:
    from stockade.identity.watch import shared_watcher
    from stockade.storage import shared_store

    def build() -> RevokedJtis:
        return RevokedJtis(shared_store(services), shared_watcher(services), services.clock)

    return services.over_store(SHARED_KEY, RevokedJtis, build)

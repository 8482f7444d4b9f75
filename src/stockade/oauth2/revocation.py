"""Revoked token ids (RFC 7009) and disabled clients, held in memory and kept current from the store's change feed.

The `jwt` stage asks `allows(jti, client_id)` on every request for issuers that honour revocation: set lookups. The
list is filled once from the store, then every `revoked_token` change (from this or any worker, the CLI or the admin
API) is added as it arrives on the feed, well within a second. A feed silent for longer than MAX_STALE is not
trusted: the stage then catches up before accepting a token.

A `client` change names a client without saying what changed, so the client is re-read, each client on its own (one
whose record cannot be read holds up no other). From the moment the change arrives until a re-read succeeds, the
client's tokens are not accepted on trust (fail closed): a request with one waits for that read, which every such
request shares (the pipeline timeout bounds the wait); it is refused if the client turns out disabled or deleted,
and answered 503 if the read fails, since the client may be fine. A client last read as disabled is refused at once.
A failed re-read is retried on the watcher's cadence with a back-off of at most MAX_BACKOFF, and logged, naming the
client, once when its reads start failing and once when they work again.

A truncated feed (changes were missed) makes the list untrusted until a load begun after it succeeds. One load runs
at a time, shared by the requests waiting for it, the catch-up and the hourly reload, so an older snapshot is never
applied over a newer one; what the feed delivers during a load is kept (`_arrived`, `_clients_seen`), and a
truncated batch that arrives during one makes another follow it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from stockade.errors import StorageError
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


class RevocationNotCurrent(StorageError):
    """The list or a client a change named could not be read (the store failed): 503, as the outage is."""

    code = "oauth2.revocation_not_current"


class _Unsure:
    """A client a change named that no re-read has answered for yet."""

    __slots__ = ("backoff", "error", "seq", "task")

    def __init__(self, seq: int, backoff: RetryBackoff) -> None:
        self.seq = seq  # the newest change naming it: a read begun before it arrived does not answer it
        self.backoff = backoff
        self.error = ""
        self.task: asyncio.Task[None] | None = None


class RevokedJtis:
    """A set of revoked jtis with the freshness of the feed that feeds it."""

    def __init__(self, store: Store, watcher: ChangeWatcher, clock: Clock) -> None:
        self.store = store
        self.watcher = watcher
        self.clock = clock
        self._jtis: set[str] = set()
        self.disabled_clients: set[str] = set()  # as last read: their tokens are refused at once
        self.loaded = False
        self._unsure: dict[str, _Unsure] = {}
        # Loads: one at a time. Each truncated batch is a generation; a load covers every one reached when it began.
        self._generation = 0
        self._reload_due = 0  # the generation of a truncated batch no load covers yet (0: none)
        self._load_task: asyncio.Task[bool] | None = None
        self._load_backoff = RetryBackoff(clock, watcher.interval, MAX_BACKOFF)
        self._load_error = ""
        self._closed = False
        # While a load awaits the store, what the feed brings meanwhile is noted here too, so the load's older
        # snapshot does not overwrite it (a revocation would otherwise be lost until the next reload).
        self._arrived: set[str] | None = None
        self._clients_seen: set[str] | None = None
        watcher.subscribe(self._on_changes)
        watcher.every(RELOAD_INTERVAL, self._reload)
        watcher.every(watcher.interval, self.retry)

    def __contains__(self, jti: object) -> bool:
        return jti in self._jtis

    def fresh(self) -> bool:
        return self.loaded and self.watcher.fresh(MAX_STALE)

    def allows(self, jti: str, client_id: str | None) -> bool:
        """A token with this jti (of this client) may be accepted without waiting for any read."""
        return (
            jti not in self._jtis
            and client_id not in self.disabled_clients
            and client_id not in self._unsure
            and self.fresh()
        )

    async def ensure_fresh(self, client_id: str | None = None) -> None:
        """Load the list on first use or after a truncated feed, catch the feed up if it fell silent, and wait for
        the re-read of `client_id` if a change named it. Raises StorageError (the stage answers 503)."""
        self.watcher.ensure_running()
        if not self.loaded:
            await self._join_load(force=False)
        if not self.watcher.fresh(MAX_STALE):
            await self.watcher.poll()
        if client_id is not None:
            await self._client_read(client_id)

    # -- loading -----------------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the list and the clients' states, or join the load under way. Raises StorageError if it fails."""
        await self._join_load(force=True)

    async def _reload(self) -> None:
        """The hourly job: its failure is logged by the load (and the list it had stays trusted)."""
        if self._load_under_way() is None:
            self._start_load()

    def _load_under_way(self) -> asyncio.Task[bool] | None:
        task = self._load_task
        return task if task is not None and not task.done() else None

    def _start_load(self) -> None:
        if not self._closed and self._load_under_way() is None:
            self._load_task = asyncio.get_running_loop().create_task(self._load_until_current())

    async def _join_load(self, *, force: bool) -> None:
        """Join the load under way or start one (during a failure's back-off only if `force`)."""
        if self._load_under_way() is None and (force or self._load_backoff.due()):
            self._start_load()
        task = self._load_under_way()
        if task is None or not await asyncio.shield(task):  # a request that gives up cancels nobody's load
            raise RevocationNotCurrent(f"revocation list not loaded: {self._load_error or 'closing'}")

    async def _load_until_current(self) -> bool:
        """Load until a load covers every truncated batch. Never raises: a failure leaves the list as it was (and
        untrusted after a truncated feed) and sets when to try again. True if it succeeded."""
        try:
            await self._load_once()
            while self._reload_due:  # a truncated batch arrived during the load: its snapshot may miss changes
                await self._load_once()
        except Exception as exc:  # the store is down, or answered something unreadable: stay closed, try later
            self._load_error = f"{type(exc).__name__}: {exc}"
            if self._load_backoff.failed():
                log.error(
                    "cannot load the revoked tokens and OAuth clients (%s)%s",
                    self._load_error,
                    "" if self.loaded else ": tokens of issuers that honour revocation get 503 until a load succeeds",
                    extra={"store": self.store.url},
                )
            return False
        if self._load_backoff.succeeded():
            log.warning("revoked tokens and OAuth clients loaded again", extra={"store": self.store.url})
        return True

    async def _load_once(self) -> None:
        covers = self._generation
        await self.watcher.ensure_baseline()  # changes after this point reach _on_changes: none can be missed
        arrived = self._arrived = set()
        seen = self._clients_seen = set()
        try:
            records = await self.store.list_revoked_tokens(self.clock.time())
            clients = await self.store.list_clients()
        finally:
            self._arrived = self._clients_seen = None
        self._jtis = {r.jti for r in records} | arrived | (self._jtis if not self.loaded else set())
        disabled = {c.client_id for c in clients if c.disabled_at is not None}
        for client_id in seen:  # re-read after the snapshot began: their own answer is the newer one
            if client_id in self.disabled_clients:
                disabled.add(client_id)
            else:
                disabled.discard(client_id)
        self.disabled_clients = disabled
        if self._reload_due <= covers:
            self._reload_due = 0
            self.loaded = True

    def add(self, jti: str) -> None:
        """Effective at once in this process (the feed brings it to the others)."""
        self._jtis.add(jti)
        if self._arrived is not None:
            self._arrived.add(jti)

    # -- following the feed ------------------------------------------------------------------------------------

    def _on_changes(self, batch: ChangeBatch) -> None:
        for change in batch.changes:
            if change.kind == "revoked_token":
                self.add(change.ref)
            elif change.kind == "client":
                self._client_changed(change.ref, change.seq)
        if batch.truncated:
            self.loaded = False  # changes were missed: not fresh, and the next load keeps what is known
            self._generation += 1
            self._reload_due = self._generation
            self._load_backoff.now()  # the feed just answered: try at once
            self._start_load()

    def _client_changed(self, client_id: str, seq: int) -> None:
        entry = self._unsure.get(client_id)
        if entry is None:
            entry = self._unsure[client_id] = _Unsure(seq, RetryBackoff(self.clock, self.watcher.interval, MAX_BACKOFF))
        entry.seq = seq  # a read under way when it arrived reads again
        entry.backoff.now()  # the feed just answered: try at once
        self._start_reread(client_id, entry)

    async def retry(self) -> None:
        """The watcher's job, on its cadence: start each read that a failure left pending once its back-off is over."""
        if self._reload_due and self._load_under_way() is None and self._load_backoff.due():
            self._start_load()
        for client_id, entry in list(self._unsure.items()):
            if entry.backoff.due():
                self._start_reread(client_id, entry)

    def _start_reread(self, client_id: str, entry: _Unsure) -> None:
        if not self._closed and (entry.task is None or entry.task.done()):
            entry.task = asyncio.get_running_loop().create_task(self._reread(client_id, entry))

    async def _reread(self, client_id: str, entry: _Unsure) -> None:
        """Read the client until a read begun after its newest change answers. Never raises: a failure leaves its
        tokens unaccepted and sets when to try again."""
        while self._unsure.get(client_id) is entry:
            seq = entry.seq
            try:
                client = await self.store.get_client(client_id)
            except NotFoundError:
                client = None  # deleted: its tokens must not outlive it
            except Exception as exc:  # the store is down, or the record unreadable: stay closed, try later
                entry.error = f"{type(exc).__name__}: {exc}"
                if entry.backoff.failed():
                    log.error(
                        "cannot re-read OAuth client %s after a change (%s): its tokens get 503 until a re-read "
                        "succeeds",
                        client_id,
                        entry.error,
                        extra={"store": self.store.url},
                    )
                return
            if entry.seq != seq:
                continue  # a newer change arrived during the read: read it again
            del self._unsure[client_id]
            if entry.backoff.succeeded():
                log.warning("OAuth client %s re-read again", client_id, extra={"store": self.store.url})
            if client is None or client.disabled_at is not None:
                self.disabled_clients.add(client_id)
            else:
                self.disabled_clients.discard(client_id)
            if self._clients_seen is not None:
                self._clients_seen.add(client_id)

    async def _client_read(self, client_id: str) -> None:
        """Wait until no change naming the client is left unread (a client last read as disabled: no wait, it is
        refused anyway). Joins the read under way; starts one only once a failure's back-off is over, so a client
        that cannot be read costs no read per request. Raises RevocationNotCurrent while it cannot be read."""
        while (entry := self._unsure.get(client_id)) is not None and client_id not in self.disabled_clients:
            if entry.task is None or entry.task.done():
                if not entry.backoff.due() or self._closed:
                    raise RevocationNotCurrent(f"client {client_id!r} changed and cannot be re-read: {entry.error}")
                self._start_reread(client_id, entry)
            assert entry.task is not None  # noqa: S101 - started just above
            await asyncio.shield(entry.task)  # a request that gives up cancels nobody's read
            if self._unsure.get(client_id) is entry:  # the read ended and failed
                raise RevocationNotCurrent(f"client {client_id!r} changed and cannot be re-read: {entry.error}")

    # -- tests and shutdown ------------------------------------------------------------------------------------

    def _tasks(self) -> list[asyncio.Task[None] | asyncio.Task[bool]]:
        tasks: list[asyncio.Task[None] | asyncio.Task[bool]] = [e.task for e in self._unsure.values() if e.task]
        if self._load_task is not None:
            tasks.append(self._load_task)
        return [t for t in tasks if not t.done()]

    async def settle(self) -> None:
        """Wait for the reads the change feed has triggered (clients re-read, a load) to finish, or fail."""
        while tasks := self._tasks():
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop reading (Services.close())."""
        self._closed = True
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def revoked_jtis(services: Services) -> RevokedJtis:
    from stockade.identity.watch import shared_watcher
    from stockade.storage import shared_store

    def build() -> RevokedJtis:
        return RevokedJtis(shared_store(services), shared_watcher(services), services.clock)

    return services.over_store(SHARED_KEY, RevokedJtis, build)

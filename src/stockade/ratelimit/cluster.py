"""`redis+cluster://`: the request path's Redis Cluster client - each command on the master that owns its key's
slot, MOVED and ASK followed, the slot map read with CLUSTER SLOTS.

Every master gets a RedisClient of its own (resp.py: one pipelined connection, hiredis parsing, reconnection after
a `retry` pause), so a call costs what it costs against one server plus finding the slot: CRC16 of the key's hash
tag (binascii.crc_hqx is CRC16/XMODEM, in C) and a list index. A request's keys share a hash tag (keys.py), so
each script runs whole on one node. Replicas are never read (no READONLY): a limit must read what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from binascii import crc_hqx
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stockade.ratelimit.resp import Arg, Commands, RedisClient, RedisReplyError, RedisUnavailableError, RedisUrl, Script

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.observability.metrics import Metrics

log = logging.getLogger("stockade.ratelimit")

SLOTS = 16384
SLOT_MASK = SLOTS - 1
MAX_REDIRECTS = 2  # a stale map's MOVED may lead to a node that is migrating the slot on (ASK): both are followed
MIN_RELOAD = 0.1  # seconds between two map reads a MOVED asks for: a MOVED loop must not become a CLUSTER SLOTS storm
Address = tuple[str, int]
Send = Callable[[RedisClient, bool], Awaitable[Any]]  # (node, after ASKING) -> reply


def key_slot(key: str) -> int:
    """The key's slot: CRC16 of its hash tag (between the first `{` and the next `}`, if not empty), else of the
    whole key, modulo 16384 (the Redis Cluster spec)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key.encode(), 0) & SLOT_MASK


def _redirect(message: str) -> tuple[bool, int, str, int] | None:
    """(moved, slot, host, port) of a `MOVED 3999 10.0.0.2:6381` or `ASK 3999 10.0.0.2:6381` error, else None."""
    kind, _, rest = message.partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot, _, where = rest.partition(" ")
    host, _, port = where.rpartition(":")  # an IPv6 address comes without brackets
    try:
        return kind == "MOVED", int(slot), host, int(port)
    except ValueError:
        return None


def _script(
    node: RedisClient, asking: bool, script: Script, keys: Sequence[str], args: Sequence[Arg]
) -> Awaitable[Any]:
    return node.evalsha_asking(script, keys, args) if asking else node.evalsha(script, keys, args)


def _command(node: RedisClient, asking: bool, args: Sequence[Arg]) -> Awaitable[Any]:
    return node.asking(*args) if asking else node.call(*args)


def _name(node: RedisClient) -> str:
    return f"{node.url.host}:{node.url.port}"


class ClusterClient:
    """Commands routed by slot to one pipelined connection per master. The slot map is read at first use, again
    when a MOVED says it is stale (at most once per MIN_RELOAD), and at most once per `retry` seconds when a node
    cannot be reached or says the cluster is down (it may have been failed over to a replica). Only the masters the
    map names and the seeds are ever connected to: a redirection elsewhere is refused, not followed."""

    def __init__(self, url: RedisUrl, clock: Clock, metrics: Metrics | None = None) -> None:
        self.url = url
        self.clock = clock
        self.metrics = metrics
        self._slots: list[RedisClient | None] = [None] * SLOTS
        self._masters: list[RedisClient] = []
        self._nodes: dict[Address, RedisClient] = {}  # the map's masters and the seeds
        self._loading: asyncio.Task[None] | None = None
        self._load_at = 0.0  # an unforced reload waits until then
        self._forced_at = 0.0  # a forced one (MOVED) until then
        self._asked_last: dict[Address, float] = {}  # nodes that did not answer CLUSTER SLOTS: last in line until then
        self._retired: set[RedisClient] = set()  # masters that left the map, disconnected soon

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        slot = key_slot(keys[0]) if keys else 0
        node = self._slots[slot] or await self._owner(slot)
        try:  # node.call, not node.evalsha: one coroutine fewer on every request
            return await node.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            error = exc
        except RedisUnavailableError as exc:
            raise self._unreachable(node, exc) from None
        if str(error).startswith("NOSCRIPT"):  # this node lost it (or never ran it): EVAL caches it there
            try:
                return await node.call("EVAL", script.text, len(keys), *keys, *args)
            except RedisReplyError as exc:
                error = exc  # the slot moved in between: a redirection
            except RedisUnavailableError as exc:
                raise self._unreachable(node, exc) from None
        return await self._redirected(error, node, lambda n, asking: _script(n, asking, script, keys, args))

    async def call_on(self, key: str, *args: Arg) -> Any:
        """A command on the master that owns `key`'s slot (SCAN there lists what that slot holds)."""
        slot = key_slot(key)
        node = self._slots[slot] or await self._owner(slot)
        try:
            return await node.call(*args)
        except RedisReplyError as exc:
            return await self._redirected(exc, node, lambda n, asking: _command(n, asking, args))
        except RedisUnavailableError as exc:
            raise self._unreachable(node, exc) from None

    async def _redirected(self, exc: RedisReplyError, node: RedisClient, send: Send) -> Any:
        """Follow MOVED (the slot's owner changed: remember it, reload the map) or ASK (the slot is being migrated
        and this key is already on the target: ASKING, then the command, there only)."""
        for _ in range(MAX_REDIRECTS):
            redirect = _redirect(str(exc))
            if redirect is None:
                raise self._refused(node, exc) from None
            moved, slot, host, port = redirect
            target = await self._master(host or node.url.host, port)  # no host: the node that answered
            if moved:
                self._slots[slot] = target
                self._event("moved")
                self._start_load(forced=True)  # a slot seldom moves alone: resharding moves many
            else:
                self._event("ask")
            log.debug("Redis Cluster %s: slot %d on %s", "MOVED" if moved else "ASK", slot, _name(target))
            node = target
            try:
                return await send(node, not moved)
            except RedisReplyError as again:
                exc = again
            except RedisUnavailableError as down:
                raise self._unreachable(node, down) from None
        raise RedisReplyError(f"node {_name(node)}: too many redirections ({exc})")

    async def _master(self, host: str, port: int) -> RedisClient:
        """A redirection's target, if the map names it a master (read again first if it does not). Anything a node
        says is not proof: followed blindly, a MOVED would have us send the password and the counts to an address
        of a liar's choosing, and take its answer as the decision."""
        node = self._nodes.get((host, port))
        if node is None or node not in self._masters:
            await self._reload()
            node = self._nodes.get((host, port))
            if node is None or node not in self._masters:
                raise RedisUnavailableError(f"redirected to {host}:{port}, which the cluster's slot map does not name")
        return node

    def _refused(self, node: RedisClient, exc: RedisReplyError) -> RedisReplyError:
        message = str(exc)
        if message.startswith("CLUSTERDOWN"):
            self._start_load(forced=False)
        return RedisReplyError(f"node {_name(node)}: {message}")

    def _unreachable(self, node: RedisClient, exc: RedisUnavailableError) -> RedisUnavailableError:
        self._start_load(forced=False)
        where = _name(node)
        return exc if where in str(exc) else RedisUnavailableError(f"node {where}: {exc}")

    def _event(self, label: str) -> None:
        if self.metrics is not None:
            self.metrics.event("limits_cluster", label)

    # -- the slot map -----------------------------------------------------------------------------------------

    async def _owner(self, slot: int) -> RedisClient:
        """The slot's master when the map names none: at first use, or a slot the cluster did not serve."""
        if not self._masters and self._loading is None and self.clock.monotonic() < self._load_at:
            raise RedisUnavailableError("no Redis Cluster slot map; waiting before the next attempt")
        task = self._start_load(forced=False)
        if task is not None:
            await asyncio.shield(task)
        node = self._slots[slot]
        if node is None:
            raise RedisUnavailableError(f"no node of the Redis Cluster serves slot {slot}")
        return node

    async def _reload(self) -> None:
        """A fresh map (a read that starts now, or the one under way), waiting out MIN_RELOAD if one was just read.
        Whether it could be read is for the caller to see in it."""
        delay = self._forced_at - self.clock.monotonic()
        if self._loading is None and delay > 0:
            await asyncio.sleep(delay)
        task = self._start_load(forced=True)
        if task is not None:
            with contextlib.suppress(RedisUnavailableError):
                await asyncio.shield(task)

    def _start_load(self, *, forced: bool) -> asyncio.Task[None] | None:
        """The map's reload under way, starting one if there is none (one at a time, in a task of its own so a
        request that gives up waiting does not cancel it)."""
        if self._loading is None and self.clock.monotonic() >= (self._forced_at if forced else self._load_at):
            self._loading = asyncio.get_running_loop().create_task(self._load())
            self._loading.add_done_callback(self._loaded)
        return self._loading

    def _loaded(self, task: asyncio.Task[None]) -> None:
        self._loading = None
        now = self.clock.monotonic()
        self._load_at, self._forced_at = now + self.url.retry, now + MIN_RELOAD
        if not task.cancelled() and task.exception() is not None:  # retrieved: a reload in the background
            log.debug("Redis Cluster slot map not reloaded: %s", task.exception())

    async def _load(self) -> None:
        """The map from the first node that answers CLUSTER SLOTS: the current masters, then the seeds. One that did
        not answer is asked last for `retry` seconds: a node that accepts but never answers costs `timeout` before
        its client pauses, which every reload would pay again."""
        now = self.clock.monotonic()
        known = dict.fromkeys([*((n.url.host, n.url.port) for n in self._masters), *self.url.seeds])
        errors = []
        for address in sorted(known, key=lambda a: self._asked_last.get(a, 0.0) > now):
            node = self._node(*address)
            try:
                reply = await node.call("CLUSTER", "SLOTS")
            except (RedisUnavailableError, RedisReplyError) as exc:
                self._asked_last[address] = self.clock.monotonic() + self.url.retry
                errors.append(f"{_name(node)}: {exc}")
                continue
            if reply:
                self._asked_last.pop(address, None)
                self._install(reply, node)
                return
            errors.append(f"{_name(node)}: no slots assigned")
        raise RedisUnavailableError(f"no Redis Cluster slot map ({'; '.join(errors)})")

    def _install(self, reply: list[Any], answered: RedisClient) -> None:
        slots: list[RedisClient | None] = [None] * SLOTS
        served: dict[RedisClient, int] = {}
        for start, end, master, *_replicas in reply:
            host = master[0].decode()
            if host == "?":  # an endpoint the node does not know: those slots stay unserved until a reload
                continue
            node = self._node(host or answered.url.host, int(master[1]))
            slots[start : end + 1] = [node] * (end - start + 1)
            served[node] = served.get(node, 0) + end - start + 1
        first = not self._masters
        self._slots, self._masters = slots, list(served)
        for address, node in list(self._nodes.items()):
            if node not in served and address not in self.url.seeds:  # no longer a master (failed over, emptied)
                del self._nodes[address]
                self._asked_last.pop(address, None)
                # Closed once a reply already under way would have come (or timed out), not under it.
                self._retired.add(node)
                asyncio.get_running_loop().call_later(self.url.timeout, self._retire, node)
        self._event("map")
        (log.info if first else log.debug)(
            "Redis Cluster slot map: %s", ", ".join(f"{_name(n)} ({count} slots)" for n, count in served.items())
        )

    def _node(self, host: str, port: int) -> RedisClient:
        node = self._nodes.get((host, port))
        if node is None:
            node = self._nodes[(host, port)] = RedisClient(replace(self.url, host=host, port=port), self.clock)
        return node

    def _retire(self, node: RedisClient) -> None:
        self._retired.discard(node)
        node.disconnect()

    # -- control plane ----------------------------------------------------------------------------------------

    def masters(self) -> list[RedisClient]:
        """The masters that serve slots, as the map last read says."""
        return list(self._masters)

    async def ping(self) -> None:
        """Every master answers and says its cluster is up (a plain PING passes on a node whose cluster is down).
        A master that cannot be reached may have been failed over: the map is read again and, if its masters
        changed, they are asked once more."""
        if not self._masters:
            task = self._start_load(forced=False)
            if task is not None:
                await asyncio.shield(task)
        masters = self.masters()
        if not masters:
            raise RedisUnavailableError("no Redis Cluster slot map yet")
        try:
            await self._probe(masters)
        except RedisUnavailableError:
            await self._reload()
            if not self._masters or set(self._masters) == set(masters):
                raise
            await self._probe(self.masters())

    async def _probe(self, masters: list[RedisClient]) -> None:
        replies = await asyncio.gather(*(n.call("CLUSTER", "INFO") for n in masters), return_exceptions=True)
        for node, reply in zip(masters, replies, strict=True):
            if isinstance(reply, RedisUnavailableError):
                raise self._unreachable(node, reply)
            if isinstance(reply, RedisReplyError):
                raise self._refused(node, reply)
            if isinstance(reply, BaseException):
                raise reply
            if b"cluster_state:ok" not in reply:
                raise RedisUnavailableError(f"node {_name(node)}: cluster_state is not ok")

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        for node in [*self._nodes.values(), *self._retired]:
            await node.close()


_: type[Commands] = ClusterClient

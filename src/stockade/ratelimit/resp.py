"""A lean Redis client for the request path: one pipelined connection per process, hiredis for parsing.

Redis answers a connection's commands in order, so concurrent requests share one connection and each waits
for its own reply: no pool checkout, no per-call allocations beyond a future, and the commands of one event
loop iteration leave in one write. redis-py's asyncio client costs about 75 µs of CPU per EVALSHA on this
machine class; this costs about 13 µs alone and 5 µs under concurrency (see docs/rate-limiting.md).
Outages surface as RedisUnavailableError; a reply error (e.g. NOSCRIPT) as RedisReplyError.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from stockade.storage import mask_url

if TYPE_CHECKING:
    from stockade.clock import Clock

Arg = str | bytes | int | float


class RedisUnavailableError(Exception):
    """Redis could not be reached, dropped the connection, or did not answer in time."""


class RedisReplyError(Exception):
    """Redis answered with an error reply."""


SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
OPTIONS = ("prefix", "timeout", "connect_timeout", "retry")


@dataclass(frozen=True)
class RedisUrl:
    """`redis[s]://[user:password@]host[:port][/db][?prefix=..&timeout=..&connect_timeout=..&retry=..]`, or
    `redis[s]+cluster://[user:password@]host[:port][,host[:port]...][/0][?...]` for Redis Cluster: the hosts are
    seed nodes, asked for the slot map (any one that answers will do), and a cluster has only database 0."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    prefix: str = "stockade:"
    timeout: float = 0.5  # a reply later than this is an outage (the request must not hang on Redis)
    connect_timeout: float = 1.0
    retry: float = 1.0  # after a failed connect or a reply timeout, calls fail at once this long, then try again
    cluster: bool = False
    seeds: tuple[tuple[str, int], ...] = ()  # (host, port) of every node named; standalone: the one

    @classmethod
    def parse(cls, url: str) -> RedisUrl:
        parts = urlsplit(url)
        shown = repr(mask_url(url))  # for messages: never the password
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{shown}: expected redis://, rediss://, redis+cluster:// or rediss+cluster://")
        cluster = parts.scheme.endswith("+cluster")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        if "," in hosts and not cluster:
            raise ValueError(f"{shown}: several hosts; for Redis Cluster use redis+cluster://host:port,host:port")
        if cluster:
            seeds = _seeds(hosts, shown)
            host, port = seeds[0]
        else:
            host = parts.hostname or "127.0.0.1"
            try:
                port = parts.port or 6379
            except ValueError:
                raise ValueError(f"{shown}: bad port") from None
            seeds = ((host, port),)
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{shown}: the path must be a database number")
        if cluster and path not in ("", "0"):
            raise ValueError(f"{shown}: Redis Cluster has only database 0; remove '/{path}' from the URL")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(q) - set(OPTIONS)
        if unknown:
            raise ValueError(f"{shown}: unknown option(s) {', '.join(sorted(unknown))}")
        prefix = q.get("prefix", "stockade:")
        if any(c in prefix for c in "{}*?[] "):
            raise ValueError(f"{shown}: prefix must not contain braces, glob characters or spaces")
        try:
            times = {k: float(q[k]) for k in ("timeout", "connect_timeout", "retry") if k in q}
        except ValueError:
            raise ValueError(f"{shown}: timeout, connect_timeout and retry are seconds") from None
        if any(not 0 < t <= 60 for t in times.values()):
            raise ValueError(f"{shown}: timeouts must be between 0 and 60 seconds")
        user, colon, password = userinfo.partition(":")
        return cls(
            host=host,
            port=port,
            db=int(path or 0),
            username=unquote(user) if user else None,
            password=unquote(password) if colon and password else None,
            tls=parts.scheme.startswith("rediss"),
            prefix=prefix,
            cluster=cluster,
            seeds=seeds,
            **times,
        )


def _seeds(hosts: str, shown: str) -> tuple[tuple[str, int], ...]:
    if not hosts:
        raise ValueError(f"{shown}: name at least one seed node (redis+cluster://host:port,host:port)")
    seeds = []
    for entry in hosts.split(","):
        node = urlsplit(f"//{entry}")
        if not node.hostname:
            raise ValueError(f"{shown}: empty seed node")
        try:
            seeds.append((node.hostname, node.port or 6379))
        except ValueError:
            raise ValueError(f"{shown}: bad port") from None
    return tuple(seeds)


class Script:
    """A Lua script run with EVALSHA (one round trip), falling back to EVAL once if Redis lost it (NOSCRIPT)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class _Connection(asyncio.Protocol):
    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.reader = hiredis.Reader()
        self.waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.out: list[bytes] = []  # commands not yet written (flushed at the end of this loop iteration)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports do not subclass it

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while (reply := reader.gets()) is not False:
            if not waiters:
                self.abort("reply without a request")
                return
            fut = waiters.popleft()[0]
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(RedisReplyError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        waiters, self.waiters = self.waiters, deque()
        for fut, _ in waiters:
            if not fut.done():
                fut.set_exception(RedisUnavailableError(f"connection lost: {exc or 'closed'}"))
        self.client._lost(self)

    def send(self, args: Sequence[Arg]) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise RedisUnavailableError("connection closed")
        fut = self.loop.create_future()
        if not self.waiters and self.timer is None:
            self.timer = self.loop.call_later(self.client.url.timeout, self._check_timeout)
        self.waiters.append((fut, self.loop.time()))
        out = self.out
        out.append(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]  # its stub says 1-tuple
        if len(out) == 1:  # commands sent in one loop iteration (concurrent requests) share one write
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _check_timeout(self) -> None:
        self.timer = None
        if not self.waiters:
            return
        due = self.waiters[0][1] + self.client.url.timeout
        now = self.loop.time()
        if due <= now:
            self.client.pause()  # as after a failed connect: the next calls fail at once, not after a timeout each
            self.abort(f"no reply within {self.client.url.timeout}s")
        else:
            self.timer = self.loop.call_later(due - now, self._check_timeout)

    def abort(self, why: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        waiters, self.waiters = self.waiters, deque()
        for fut, _ in waiters:
            if not fut.done():
                fut.set_exception(RedisUnavailableError(why))


class Commands(Protocol):
    """What the limits backend sends: RedisClient (one server) and ClusterClient (cluster.py) both do it."""

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any: ...
    async def call_on(self, key: str, *args: Arg) -> Any: ...  # on the node that owns `key`
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class RedisClient:
    """Connects on first use and again after a failure, at most once per `retry` seconds (injected clock)."""

    def __init__(self, url: RedisUrl, clock: Clock) -> None:
        self.url = url
        self.clock = clock
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._retry_at = 0.0

    async def call(self, *args: Arg) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await conn.send(args)

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script.text, len(keys), *keys, *args)  # also caches it for EVALSHA

    async def call_on(self, key: str, *args: Arg) -> Any:
        """A command on the node that owns `key`: here, the one server."""
        return await self.call(*args)

    async def ping(self) -> None:
        await self.call("PING")

    # Redis Cluster's ASK redirection (cluster.py): the target of a slot migration serves a key of it only in the
    # command that follows ASKING on the same connection. Apart from evalsha, so its cost stays as it is.

    async def asking(self, *args: Arg) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        # Sent in one go, so nothing else on this connection comes between them; gather retrieves both outcomes.
        return (await asyncio.gather(conn.send(("ASKING",)), conn.send(args)))[1]

    async def evalsha_asking(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.asking("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.asking("EVAL", script.text, len(keys), *keys, *args)

    async def _connection(self) -> _Connection:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        if self.clock.monotonic() < self._retry_at:
            raise RedisUnavailableError("Redis unreachable; waiting before the next attempt")
        self._connecting = fut = asyncio.get_running_loop().create_future()
        try:
            conn = await asyncio.wait_for(self._open(), self.url.connect_timeout)
        except (OSError, TimeoutError, RedisReplyError, RedisUnavailableError) as exc:
            self.pause()
            err = RedisUnavailableError(f"cannot connect to {self.url.host}:{self.url.port}: {exc or 'timeout'}")
            fut.set_exception(err)
            fut.exception()  # retrieved: nobody else may be waiting
            raise err from None
        finally:
            self._connecting = None
        self._conn = conn
        fut.set_result(conn)
        return conn

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context() if self.url.tls else None
        _, conn = await loop.create_connection(lambda: _Connection(self), self.url.host, self.url.port, ssl=ctx)
        setup: list[asyncio.Future[Any]] = []
        if self.url.password is not None:
            auth = ("AUTH", self.url.username, self.url.password) if self.url.username else ("AUTH", self.url.password)
            setup.append(conn.send(auth))
        if self.url.db:
            setup.append(conn.send(("SELECT", self.url.db)))
        try:
            for f in setup:
                await f
        except BaseException:
            conn.abort("setup failed")
            raise
        return conn

    def pause(self) -> None:
        """No new connection for `retry` seconds: calls fail at once meanwhile (a failed connect, or a server that
        stopped answering)."""
        self._retry_at = self.clock.monotonic() + self.url.retry

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def close(self) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None and not conn.closed:
            conn.transport.close()


_: type[Commands] = RedisClient

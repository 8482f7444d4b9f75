"""The cluster client against fake nodes (a few lines of RESP each): a redirection is followed only to a master the
cluster's own map names, a MOVED loop reads the map at a bounded rate, the map is asked of its masters before the
seeds, masters that left the map are dropped, and a failover does not fail the readiness probe."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest

from stockade.clock import SYSTEM_CLOCK
from stockade.ratelimit.cluster import ClusterClient
from stockade.ratelimit.resp import RedisReplyError, RedisUnavailableError, RedisUrl, Script

SCRIPT = Script("return 1")
KEY = "p:{203.0.113.9}:g"


def _encode(x: Any) -> bytes:
    if isinstance(x, int):
        return b":%d\r\n" % x
    if isinstance(x, bytes):
        return b"$%d\r\n%s\r\n" % (len(x), x)
    return b"*%d\r\n" % len(x) + b"".join(_encode(i) for i in x)


class FakeNode:
    """Answers CLUSTER SLOTS with `slots` (every slot on one port), EVALSHA with `answer`, and counts commands and
    connections. `hang`: accepts, reads, never answers."""

    def __init__(self, answer: Callable[[int], bytes] = lambda _: b":1\r\n", *, hang: bool = False) -> None:
        self.answer, self.hang = answer, hang
        self.port = 0
        self.owner = 0  # the port CLUSTER SLOTS names for all slots; 0: this node
        self.seen: Counter[str] = Counter()
        self.connections = 0
        self.open: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> FakeNode:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.open):
            writer.close()

    def slot_map(self) -> bytes:
        return _encode([[0, 16383, [b"127.0.0.1", self.owner or self.port, b"f" * 40]]])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (cmd := parser.gets()) is not False:
                    name = b" ".join(cmd[:2]).upper().decode() if cmd[0].upper() == b"CLUSTER" else cmd[0].decode()
                    self.seen[name.upper()] += 1
                    if self.hang:
                        continue
                    if name == "CLUSTER SLOTS":
                        writer.write(self.slot_map())
                    elif name == "CLUSTER INFO":
                        writer.write(_encode(b"cluster_state:ok\r\n"))
                    elif name.upper() in ("EVALSHA", "EVAL"):
                        writer.write(self.answer(int(cmd[2])))
                    else:
                        writer.write(b"+OK\r\n")
        except ConnectionError:
            pass
        finally:
            self.open.discard(writer)
            writer.close()


@asynccontextmanager
async def client_of(*seeds: FakeNode, timeout: float = 0.5, auth: bool = True) -> AsyncIterator[ClusterClient]:
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in seeds)
    password = ":s3cret@" if auth else ""  # without AUTH to hang in, a silent node costs a reply timeout
    client = ClusterClient(RedisUrl.parse(f"redis+cluster://{password}{hosts}?timeout={timeout}"), SYSTEM_CLOCK)
    try:
        yield client
    finally:
        await client.close()


async def reread(client: ClusterClient) -> None:
    """The map read again now, as a MOVED would have it (past the pause between two such reads)."""
    await asyncio.sleep(0.12)
    task = client._start_load(forced=True)
    if task is not None:
        with contextlib.suppress(RedisUnavailableError):
            await task


@pytest.mark.parametrize("kind", ["MOVED", "ASK"])
def test_a_redirection_to_a_node_the_map_does_not_name_is_never_followed(kind: str) -> None:
    async def body() -> None:
        recorder = await FakeNode().start()  # an address of the liar's choosing: it must learn nothing
        liar = await FakeNode(lambda _: b"-%s 1 127.0.0.1:%d\r\n" % (kind.encode(), recorder.port)).start()
        async with client_of(liar) as client:
            for _ in range(3):
                with pytest.raises(RedisUnavailableError, match=f"127.0.0.1:{recorder.port}.* not name"):
                    await client.evalsha(SCRIPT, [KEY], [])
            assert recorder.connections == 0 and not recorder.seen  # no AUTH, no EVALSHA, not even a connect
            assert ("127.0.0.1", recorder.port) not in client._nodes
            assert liar.seen["CLUSTER SLOTS"] >= 2  # it looked at the map again before refusing
        await liar.stop()
        await recorder.stop()

    asyncio.run(body())


def test_a_moved_to_a_node_that_joined_the_map_is_followed() -> None:
    async def body() -> None:
        new = await FakeNode().start()
        old = await FakeNode(lambda _: b"-MOVED 1 127.0.0.1:%d\r\n" % new.port).start()
        async with client_of(old) as client:
            await client.ping()  # the map: every slot on `old`
            old.owner = new.port  # resharded since
            assert await client.evalsha(SCRIPT, [KEY], []) == 1  # MOVED to a node the map names once read again
            assert new.seen["EVALSHA"] == 1 and old.seen["CLUSTER SLOTS"] == 2
        await old.stop()
        await new.stop()

    asyncio.run(body())


def test_a_moved_loop_reads_the_map_at_a_bounded_rate() -> None:
    async def body() -> None:
        node = FakeNode(lambda slot: b"-MOVED %d 127.0.0.1:%d\r\n" % (slot, node.port))  # to itself, forever
        await node.start()
        async with client_of(node) as client:
            start = time.monotonic()
            for _ in range(40):
                with pytest.raises(RedisReplyError, match="too many redirections"):
                    await client.evalsha(SCRIPT, [KEY], [])
            elapsed = time.monotonic() - start
            assert node.seen["CLUSTER SLOTS"] <= 2 + elapsed / 0.1  # at most one forced read per 100 ms
        await node.stop()

    asyncio.run(body())


def test_the_map_is_read_from_its_masters_before_the_seeds_and_a_silent_seed_is_asked_last() -> None:
    async def body() -> None:
        master = await FakeNode().start()
        silent = await FakeNode(hang=True).start()
        seed = await FakeNode().start()
        seed.owner = master.port
        async with client_of(silent, seed, timeout=0.2, auth=False) as client:
            await client.evalsha(SCRIPT, [KEY], [])  # the silent seed's timeout, then the other seed's map
            assert (silent.connections, seed.seen["CLUSTER SLOTS"]) == (1, 1)
            await reread(client)
            assert master.seen["CLUSTER SLOTS"] == 1 and seed.seen["CLUSTER SLOTS"] == 1  # the master answered
            await master.stop()
            await reread(client)  # the master is gone; the seed that answered is asked before the silent one
            assert (silent.connections, seed.seen["CLUSTER SLOTS"]) == (1, 2)
        await silent.stop()
        await seed.stop()

    asyncio.run(body())


def test_a_master_that_left_the_map_is_dropped_and_disconnected() -> None:
    async def body() -> None:
        first = await FakeNode().start()
        second = await FakeNode().start()
        seed = await FakeNode().start()
        seed.owner = first.port
        async with client_of(seed, timeout=0.1) as client:
            await client.evalsha(SCRIPT, [KEY], [])
            assert first.seen["EVALSHA"] == 1 and len(first.open) == 1
            first.owner = seed.owner = second.port  # the slots moved on; `first` is no longer a master
            await reread(client)
            assert ("127.0.0.1", first.port) not in client._nodes
            assert await client.evalsha(SCRIPT, [KEY], []) == 1 and second.seen["EVALSHA"] == 1
            await asyncio.sleep(0.3)  # closed once a reply already under way could have come
            assert not first.open
        for node in (first, second, seed):
            await node.stop()

    asyncio.run(body())


def test_ping_after_a_failover_probes_the_new_masters() -> None:
    async def body() -> None:
        old = await FakeNode().start()
        new = await FakeNode().start()
        seed = await FakeNode().start()
        seed.owner = old.port
        async with client_of(seed) as client:
            await client.ping()
            await old.stop()  # failed over: the seed now names the promoted replica
            seed.owner = new.port
            await asyncio.sleep(0.05)
            await client.ping()
            assert new.seen["CLUSTER INFO"] == 1
        await new.stop()
        await seed.stop()

    asyncio.run(body())

"""The cluster client against fake nodes (a few lines of RESP each): a MOVED loop reads the map at a bounded
rate."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest

from stockade.clock import SYSTEM_CLOCK
from stockade.ratelimit.cluster import ClusterClient
from stockade.ratelimit.resp import RedisReplyError, RedisUrl, Script

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
async def client_of(*seeds: FakeNode, timeout: float = 0.5) -> AsyncIterator[ClusterClient]:
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in seeds)
    client = ClusterClient(RedisUrl.parse(f"redis+cluster://:s3cret@{hosts}?timeout={timeout}"), SYSTEM_CLOCK)
    try:
        yield client
    finally:
        await client.close()


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

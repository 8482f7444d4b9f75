"""Redis Cluster for the tests: three `redis-server --cluster-enabled yes` masters of our own (ports 26000-26999,
cluster bus 36000-36999), formed with CLUSTER ADDSLOTSRANGE and MEET, and the moves a test makes on one (a
node killed and restarted, a slot migrated step by step). One cluster is shared by the session (a fresh key
prefix per test, like the shared Redis); tests that break a cluster get their own."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest

PORTS = (26000, 27000)  # ours on this machine; each node's cluster bus is its port + 10000
BUS_OFFSET = 10000
SLOTS = 16384
NODE_TIMEOUT_MS = 15000  # longer than any outage a test makes: no node is failed over or marked FAIL


class ClusterCommandError(Exception):
    """A node answered a test's command with an error."""


def command(port: int, *args: str | int | bytes, timeout: float = 10.0) -> Any:
    """One command to the node on `port`, on a connection of its own (test set-up and assertions only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(hiredis.pack_command(args))  # type: ignore[arg-type]  # its stub says 1-tuple
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError(f"node {port} closed the connection")
            reader.feed(chunk)
    if isinstance(reply, hiredis.ReplyError):
        raise ClusterCommandError(f"node {port}: {reply}")
    return reply


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """`n` ports in our range whose cluster bus port is free too (other runs may hold some)."""
    low, high = PORTS
    start = low + secrets.randbelow(high - low)
    found: list[int] = []
    for i in range(high - low):
        port = low + (start - low + i) % (high - low)
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            found.append(port)
            if len(found) == n:
                return found
    raise OSError(f"no {n} free ports in {low}-{high - 1}")


def redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true requires redis-server for the Redis Cluster tests")
        pytest.skip("redis-server is not installed: the Redis Cluster tests need it")
    return binary


class Node:
    """One cluster node: a redis-server whose config file (its id and slots) survives a restart; data does not."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.dir = workdir / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.id = ""

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"]
        with (self.dir / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:  # waiting for a real process to listen, not timing the code under test
            try:
                command(self.port, "PING", timeout=0.5)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise OSError(f"redis-server on {self.port} did not start: {self.log_tail()}") from None
                time.sleep(0.02)
        self.id = command(self.port, "CLUSTER", "MYID").decode()

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed (the cluster config file is written on every change anyway)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def log_tail(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class LocalCluster:
    """Masters on free ports in our range, every slot assigned, `cluster_state:ok` on each before use."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.masters = masters
        self.nodes: list[Node] = []

    @property
    def url(self) -> str:
        """`redis+cluster://` naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        binary = redis_server()
        for attempt in range(3):  # a port taken between our check and redis-server's bind: try others
            self.nodes = [Node(binary, port, self.workdir) for port in _free_ports(self.masters)]
            try:
                for node in self.nodes:
                    node.start()
                break
            except OSError:
                self.stop()
                if attempt == 2:
                    raise
        self._form()

    def _form(self) -> None:
        per = SLOTS // self.masters
        for i, node in enumerate(self.nodes):
            command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)  # distinct epochs: no collision to resolve
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
            command(node.port, "CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for node in self.nodes[1:]:
            command(self.nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", node.port)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every running node says `cluster_state:ok` and they all agree who owns which slot."""
        deadline = time.monotonic() + timeout
        while True:  # waiting for gossip between real processes, not timing the code under test
            try:
                running = [n for n in self.nodes if n.proc is not None]
                states = [command(n.port, "CLUSTER", "INFO").decode() for n in running]
                maps = {self._slot_map(n.port) for n in running}
                if all("cluster_state:ok" in s for s in states) and len(maps) == 1:
                    return
            except (OSError, ClusterCommandError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _slot_map(port: int) -> tuple[tuple[int, int, int], ...]:
        return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in command(port, "CLUSTER", "SLOTS")))

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    # -- what tests do to a running cluster --------------------------------------------------------------------

    def keyslot(self, key: str) -> int:
        """The slot as Redis computes it (CLUSTER KEYSLOT), independently of our client's CRC16."""
        return int(command(self.nodes[0].port, "CLUSTER", "KEYSLOT", key))

    def owner(self, slot: int) -> Node:
        for start, end, port in self._slot_map(self.nodes[0].port):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"slot {slot} has no owner")

    def begin_migration(self, slot: int, source: Node, target: Node) -> None:
        command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)

    def move_keys(self, slot: int, source: Node, target: Node) -> int:
        """Every key of `slot` from `source` to `target` in one MIGRATE (atomic for the source's clients)."""
        keys = command(source.port, "CLUSTER", "GETKEYSINSLOT", slot, 10_000)
        if keys:
            command(source.port, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        return len(keys)

    def finish_migration(self, slot: int, target: Node) -> None:
        """The slot is the target's: told to the target first, then every other node (the documented order), and
        then until every node agrees.

        The target claims the slot with a new config epoch only if its own is not already the highest it knows of
        (Redis' clusterBumpConfigEpochWithoutConsensus). Right after an earlier move the last owner's bumped epoch
        may not have reached it by gossip yet: the target would keep its old, lower epoch, and the last owner's
        next ping, still claiming the slot, would take it back (each then sends MOVED to the other). So the target
        must know the cluster's highest epoch first."""
        self._await_epoch(target)
        for node in [target, *(n for n in self.nodes if n is not target)]:
            command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target.id)
        self.wait_ok()

    def _await_epoch(self, target: Node, timeout: float = 30) -> None:
        """Until `target`'s current epoch is at least every running node's own config epoch."""
        deadline = time.monotonic() + timeout
        highest = None
        while True:  # waiting for gossip between real processes, not timing the code under test
            try:
                running = [n for n in self.nodes if n.proc is not None]
                highest = max(_info_int(n.port, "cluster_my_epoch") for n in running)
                if _info_int(target.port, "cluster_current_epoch") >= highest:
                    return
            except (OSError, ClusterCommandError):
                pass  # a node busy or restarting: asked again, as wait_ok does
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {target.port} did not learn of config epoch {highest}")
            time.sleep(0.02)


def _info_int(port: int, field: str) -> int:
    """One integer field of a node's CLUSTER INFO."""
    for line in command(port, "CLUSTER", "INFO").decode().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value)
    raise LookupError(f"node {port}: no {field} in CLUSTER INFO")


@contextlib.contextmanager
def local_cluster(workdir: Path, masters: int = 3) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workdir, masters)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


_shared: LocalCluster | None = None


def shared_cluster() -> LocalCluster:
    """The session's cluster, started on first use (tests/conftest.py stops it when the session ends)."""
    global _shared
    if _shared is None:
        cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="stockade-cluster-")))
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            shutil.rmtree(cluster.workdir, ignore_errors=True)
            raise
        _shared = cluster
    return _shared


def stop_shared_cluster() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        shutil.rmtree(_shared.workdir, ignore_errors=True)
        _shared = None


def fresh_cluster_url() -> str:
    """The shared cluster with a key prefix no other test uses."""
    return f"{shared_cluster().url}?prefix=t{secrets.token_hex(6)}:"

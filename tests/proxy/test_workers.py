"""The supervisor's reload round, with this test playing the workers on their control sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.config.loader import load_config_text
from stockade.proxy import workers
from stockade.proxy.workers import Supervisor

OLD = """
listen: {host: 127.0.0.1, port: 34501}  # never bound here
admin: {enabled: false}
workers: 2
routes:
  - id: api
    match: {path: "/api/**"}
    upstream: http://127.0.0.1:9
    stages: [{use: anonymous}]
"""
NEW = OLD.replace('"/api/**"', '"/v2/**"')

# Each worker's answers, in order: to the new config, then (if the supervisor sends it) to the previous one again.
ROUNDS = {
    "all-accept": ({0: [True], 1: [True]}, NEW, [[NEW], [NEW]], [True, True]),
    "all-refuse": ({0: [False], 1: [False]}, OLD, [[NEW], [NEW]], [True, True]),
    # The one that accepted goes back to what the other still runs: one policy, the previous one.
    "one-refuses": ({0: [True, True], 1: [False]}, OLD, [[NEW, OLD], [NEW]], [True, True]),
    # ...and if it cannot, it serves another policy than the rest: it must not look ready.
    "revert-refused": ({0: [True, False], 1: [False]}, OLD, [[NEW, OLD], [NEW]], [False, True]),
}


async def _round(
    path: Path, answers: dict[int, list[bool]], hung: int | None = None
) -> tuple[Supervisor, list[list[str]], list[bool], list[bool]]:
    """One SIGHUP's round; returns the supervisor, the config texts each worker was sent, the ready flags as the
    round left them, and which workers' processes were still there a moment after it (closing the sockets
    afterwards ends the workers). Worker `hung` is a stopped process that answers nothing."""
    sup = Supervisor(str(path), load_config_text(OLD, source=str(path), base_dir=path.parent, env={}), 2, env={})
    got: list[list[str]] = [[], []]
    peers: list[asyncio.StreamWriter] = []
    tasks = []

    async def play(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for ok in answers[index]:
            msg: dict[str, Any] = orjson.loads(await reader.readline())
            assert msg["op"] == "reload"
            got[index].append(msg["text"])
            problems = [] if ok else [f"secrets: worker {index} has no pepper file"]
            writer.write(orjson.dumps({"op": "reloaded", "ok": ok, "problems": problems}) + b"\n")
            await writer.drain()

    for w in sup.workers:
        ours, theirs = socket.socketpair()
        reader, w.writer = await asyncio.open_connection(sock=ours)
        w.ready = True
        if w.index == hung:
            w.proc = await asyncio.create_subprocess_exec("sleep", "60")
            os.kill(w.proc.pid, signal.SIGSTOP)
        tasks.append(asyncio.create_task(sup._watch(w, reader)))
        peer_reader, peer_writer = await asyncio.open_connection(sock=theirs)
        peers.append(peer_writer)
        tasks.append(asyncio.create_task(play(w.index, peer_reader, peer_writer)))
    await asyncio.wait_for(sup.reload(), 10)
    ready = [w.ready for w in sup.workers]
    sup.stopping = True
    alive = []
    for w in sup.workers:
        if w.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.proc.wait(), 5)  # a killed worker is gone at once
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
                alive.append(True)
                continue
        alive.append(False)
    for peer in peers:
        peer.close()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    return sup, got, ready, alive


@pytest.mark.parametrize(("answers", "runs", "sent", "ready"), ROUNDS.values(), ids=ROUNDS.keys())
def test_supervisor_reload_commits_only_what_every_worker_accepted(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    answers: dict[int, list[bool]],
    runs: str,
    sent: list[list[str]],
    ready: list[bool],
) -> None:
    """The supervisor adopted a config as soon as it had sent it: every worker restarted later got a config the
    workers had refused (and crash-looped on it)."""
    path = tmp_path / "gw.yaml"
    path.write_text(NEW)
    os.utime(path, ns=(0, 0))  # written long ago: no wait for a writer to finish
    sup, got, ready_after, _ = asyncio.run(_round(path, answers))
    assert sup.loaded.text == runs  # what a restarted worker is given
    assert got == sent
    assert ready_after == ready
    assert sup.reloads["ok" if runs == NEW else "error"] == 1
    messages = [r.getMessage() for r in caplog.records]
    if runs == OLD:  # the worker's own reason reaches the operator
        assert any("worker 1 refused the reload" in m and "worker 1 has no pepper file" in m for m in messages)
        assert not any("no detail" in m for m in messages)


def test_a_worker_that_does_not_answer_a_reload_is_killed_and_not_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was sent SIGTERM, which a stopped process does not act on, and kept its ready flag: it held its share of
    the port unanswered, /readyz said 200, and every later reload waited for it again."""
    monkeypatch.setattr(workers, "RELOAD_ANSWER_TIMEOUT", 0.5)
    path = tmp_path / "gw.yaml"
    path.write_text(NEW)
    os.utime(path, ns=(0, 0))
    sup, got, ready, alive = asyncio.run(_round(path, {0: [True, True], 1: []}, hung=1))
    assert sup.loaded.text == OLD  # no answer is a refusal: the one that took it went back
    assert got == [[NEW, OLD], []]
    assert ready == [True, False]
    assert alive == [False, False]  # SIGKILLed, and so restarted by the supervisor's _watch as after a crash
    assert any("did not answer the reload" in r.getMessage() for r in caplog.records)

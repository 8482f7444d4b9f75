"""A client change on the feed, through the `jwt` stage: the client's tokens wait for its re-read (shared by every
request) instead of being refused, a client known to be disabled is refused at once, a re-read that fails is a 503
rather than a 401, and one client that cannot be read holds up no other. Real stores (SQLite, and PostgreSQL under
CI), the gateway's fake clock, and a store wrapper that holds a client's reads until the test releases them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.errors import StorageError
from stockade.identity.watch import shared_watcher
from stockade.oauth2.revocation import MAX_BACKOFF, revoked_jtis
from stockade.storage import storage_from_url
from stockade.storage.records import OAuthClient
from stockade.testing import TestGateway
from tests.oauth2.flow import CONFIG, call_books, create_client, get_token, oauth_gateway
from tests.storage.conftest import dispose, postgres_store_url


@pytest.fixture(params=["sqlite", "postgres"])
def config_text(request: pytest.FixtureRequest) -> Iterator[str]:
    """The token endpoint's gateway config over each real store."""
    if request.param == "sqlite":
        yield CONFIG
        return
    url = postgres_store_url()
    try:
        yield CONFIG.replace("sqlite:///stockade.db", url)
    finally:
        dispose(storage_from_url(url))


class HeldReads:
    """The gateway's store, as the re-reads see it: `get_client` of a client in `held` waits until `release()`,
    one in `broken` fails (a record the store cannot return); `reads` counts the calls per client."""

    def __init__(self, gw: TestGateway) -> None:
        self.gw = gw
        self.held: set[str] = set()
        self.broken: set[str] = set()
        self.reads: Counter[str] = Counter()
        self.paused = threading.Event()
        self._gate = asyncio.Event()
        store = gw.services.shared["store"]
        original = store.get_client

        async def get_client(client_id: str) -> OAuthClient:
            self.reads[client_id] += 1
            if client_id in self.broken:
                raise StorageError("could not decode the client record")
            if client_id in self.held:
                self.paused.set()
                await self._gate.wait()
            return await original(client_id)

        store.get_client = get_client

    def release(self) -> None:
        self.held.clear()
        self.gw.bg.call(self._gate.set)


def quiet_feed(gw: TestGateway) -> Callable[[], None]:
    """Stop the watcher's background polls (so a change reaches the worker exactly when the test says): a function
    that delivers what the feed holds and lets the reads it starts run to the end, the held ones excepted."""
    watcher = shared_watcher(gw.services)
    gw.bg.run(watcher.aclose())
    watcher.ensure_running = lambda: None  # type: ignore[method-assign]

    def sync() -> None:
        gw.bg.run(watcher.poll())

    sync()  # the baseline: every change from now on is delivered
    return sync


def in_threads(gw: TestGateway, token: str, n: int) -> tuple[list[threading.Thread], list[int]]:
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(call_books(gw, token)[0])) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, statuses


def reason(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    return answer[0], orjson.loads(answer[2])["reason"] if answer[2] else ""


def _create(gw: TestGateway, config: Path) -> tuple[str, str]:
    return create_client(config, "--name", "new", "--scopes", "books:read")  # type: ignore[return-value]


def _rename(gw: TestGateway, config: Path, client_id: str) -> None:
    store = gw.services.shared["store"]

    async def go() -> None:
        client = await type(store).get_client(store, client_id)  # not the held or broken read
        await store.update_client(dataclasses.replace(client, name="renamed"), actor="cli:x", at=gw.clock.time())

    gw.bg.run(go())


def _disable(gw: TestGateway, config: Path, client_id: str) -> None:
    result = CliRunner().invoke(cli, ["clients", "revoke", client_id, "--config", str(config)])
    assert result.exit_code == 0, result.output


def _delete(gw: TestGateway, config: Path, client_id: str) -> None:
    store = gw.services.shared["store"]
    gw.bg.run(store.delete_client(client_id, actor="cli:x", at=gw.clock.time()))


@pytest.mark.parametrize(
    ("change", "status"),
    [(None, 200), (_rename, 200), (_disable, 401), (_delete, 401)],
    ids=["created", "renamed", "disabled", "deleted"],
)
def test_a_clients_tokens_wait_for_its_reread_after_a_change(
    tmp_path: Path, config_text: str, change: Callable[[TestGateway, Path, str], None] | None, status: int
) -> None:
    """Every change naming a client made its tokens 401 `jwt.revoked` until the re-read finished, a brand-new
    client's too (its creation is such a change): 1 to 4 of 5 new clients had their first requests refused. Now they
    wait for the one re-read, and get what it finds; a disabled client's tokens never pass meanwhile."""
    with oauth_gateway(tmp_path, config_text) as (gw, _up, config):
        sync = quiet_feed(gw)
        reads = HeldReads(gw)
        client_id, secret = _create(gw, config)
        token = get_token(gw, client_id, secret)
        if change is not None:
            assert call_books(gw, token)[0] == 200
            sync()
            gw.bg.run(revoked_jtis(gw.services).settle())
            change(gw, config, client_id)
        reads.reads.clear()  # the token endpoint's
        reads.held.add(client_id)
        sync()  # the change arrives, and its re-read is held
        assert reads.paused.wait(10)
        threads, statuses = in_threads(gw, token, 3)
        for t in threads:
            t.join(0.3)
        assert [t.is_alive() for t in threads] == [True] * 3  # waiting, neither refused nor let through
        reads.release()
        for t in threads:
            t.join(10)
        assert statuses == [status] * 3
        assert reads.reads[client_id] == 1  # one read, shared by the requests
        assert call_books(gw, token)[0] == status


def test_a_wait_for_a_reread_ends_at_the_pipeline_timeout_without_cancelling_the_read(
    tmp_path: Path, config_text: str
) -> None:
    """The wait is bounded like any stage's (503 `stage.timeout`), and the read it joined goes on for the others."""
    with oauth_gateway(tmp_path, config_text) as (gw, _up, config):
        sync = quiet_feed(gw)
        reads = HeldReads(gw)
        client_id, secret = _create(gw, config)
        token = get_token(gw, client_id, secret)
        reads.reads.clear()  # the token endpoint's
        reads.held.add(client_id)
        sync()
        assert reads.paused.wait(10)
        threads, statuses = in_threads(gw, token, 1)
        threads[0].join(0.3)
        assert threads[0].is_alive()
        gw.advance(gw.services.config.limits.pipeline_timeout + 1)  # type: ignore[union-attr]
        threads[0].join(10)
        assert statuses == [503]
        reads.release()
        gw.bg.run(revoked_jtis(gw.services).settle())
        assert call_books(gw, token)[0] == 200
        assert reads.reads[client_id] == 1


def test_a_client_that_cannot_be_read_is_503_and_holds_up_no_other(
    tmp_path: Path, config_text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-read that failed left the client 401 `jwt.revoked` (it may be fine: 503 says the truth), and stopped the
    re-reads of every client named after it: a healthy client created later stayed refused, and the only log line
    named the first client. A client last read as disabled is refused at once, even while a change about it is
    being read."""
    with oauth_gateway(tmp_path, config_text) as (gw, _up, config):
        sync = quiet_feed(gw)
        reads = HeldReads(gw)
        broken, broken_secret = _create(gw, config)
        gone, gone_secret = _create(gw, config)
        broken_token, gone_token = get_token(gw, broken, broken_secret), get_token(gw, gone, gone_secret)
        sync()
        gw.bg.run(revoked_jtis(gw.services).settle())
        assert call_books(gw, broken_token)[0] == call_books(gw, gone_token)[0] == 200
        with caplog.at_level(logging.WARNING, logger="stockade"):
            reads.broken.add(broken)
            _rename(gw, config, broken)
            sync()  # its re-read fails
            fresh, fresh_secret = _create(gw, config)
            fresh_token = get_token(gw, fresh, fresh_secret)
            _disable(gw, config, gone)
            sync()
            gw.bg.run(revoked_jtis(gw.services).settle())
            assert call_books(gw, fresh_token)[0] == 200
            assert reason(call_books(gw, broken_token)) == (503, "auth.unavailable")
            assert call_books(gw, gone_token)[0] == 401
            failed = reads.reads[broken]
            assert [call_books(gw, broken_token)[0] for _ in range(5)] == [503] * 5
            assert reads.reads[broken] == failed  # no read per request during the back-off
            reads.held.add(gone)
            _rename(gw, config, gone)
            sync()  # a change about the disabled client: its read is held, its tokens are refused meanwhile
            assert reads.paused.wait(10)
            assert call_books(gw, gone_token)[0] == 401
            reads.release()
            reads.broken.clear()
            gw.advance(MAX_BACKOFF)
            assert call_books(gw, broken_token)[0] == 200  # the back-off is over: the request reads it again
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and broken in errors[0] and fresh not in errors[0]
        assert any(broken in r.getMessage() and "re-read again" in r.getMessage() for r in caplog.records)

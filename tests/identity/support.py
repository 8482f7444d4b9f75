"""Test support: a real gateway + upstream with an API-key route, and the identity service over its store."""

from __future__ import annotations

import textwrap
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from stockade.identity.service import IdentityService, Issued
from stockade.identity.watch import shared_watcher
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store
from stockade.testing import TestGateway, TestUpstream, gateway_with_upstream

T = TypeVar("T")

ROUTE = """
storage: "{storage}"
routes:
  - id: books
    match: {{path: /books}}
    upstream: "{{upstream}}"
    stages:
{stages}
"""


@dataclass
class KeyedGateway:
    gw: TestGateway
    up: TestUpstream
    service: IdentityService
    log_path: Path

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on the gateway's loop (where its store, cache and watcher live)."""
        return self.gw.bg.run(coro)

    def issue(self, consumer: str = "alice", **kw: Any) -> Issued:
        async def go() -> Issued:
            try:
                await self.service.store.get_consumer(consumer)
            except Exception:
                await self.service.create_consumer(consumer, roles=("reader",), plan="gold")
            return await self.service.create_key(consumer, **kw)

        return self.run(go())

    def sync(self) -> None:
        """Apply the change feed now (what the watcher does every 0.5 s in the background)."""
        self.run(shared_watcher(self.gw.services).poll())

    def get(self, target: str = "/books", **headers: str) -> tuple[int, dict[str, str], bytes]:
        return self.gw.request("GET", target, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def decisions(self) -> list[dict[str, Any]]:
        self.gw.flush_log()
        return [orjson.loads(line) for line in self.log_path.read_bytes().splitlines()]


@contextmanager
def keyed_gateway(tmp_path: Path, stages: str = "- use: api_key", storage: str = "memory://") -> Iterator[KeyedGateway]:
    config = ROUTE.format(storage=storage, stages=textwrap.indent(stages.strip(), "      "))
    log_path = tmp_path / "decisions.log"
    with gateway_with_upstream(config, base_dir=tmp_path, log_path=log_path) as (gw, up):
        services = gw.services
        service = IdentityService(shared_store(services), shared_secrets(services).pepper, gw.clock, "test:setup")
        yield KeyedGateway(gw, up, service, log_path)

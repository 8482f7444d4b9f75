"""/readyz: whether this gateway can serve what its config asks for.

Not ready while workers start or drain, and while a backend the routes fail closed without (`Services.needs`:
the identity store, a limits backend that a stage not marked `fail_open` uses) does not answer a ping. A backend
used only by `fail_open` stages is reported, but keeps the gateway ready: those requests still pass.

A probe flood does not become a backend flood: one check runs at a time and its answer is reused for `ttl`
seconds. A ping that takes longer than `timeout` counts as a failure. The body names each check and its
state, never a URL, a host or an error text (the port is open); a change of state is logged once, with why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from stockade.clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from stockade.pipeline.stage import Services

log = logging.getLogger("stockade.ready")

OK = "ok"
UNREACHABLE = "unreachable"


def _pings(services: Services) -> dict[str, Callable[[], Awaitable[None]]]:
    from stockade.ratelimit.backend import limits_backend
    from stockade.storage import shared_store

    return {
        "store": lambda: shared_store(services).ping(),
        "limits": lambda: limits_backend(services).ping(),
    }


class Readiness:
    def __init__(
        self,
        serving: Callable[[], bool],
        needs: Callable[[], Mapping[str, bool]],
        services: Services | None,
        *,
        timeout: float = 2.0,
        ttl: float = 1.0,
    ) -> None:
        self.serving = serving  # workers up and not draining: no I/O
        self.needs = needs  # the current config's backends (Runtime.needs), read on every check
        self.services = services
        self.timeout = timeout
        self.ttl = ttl
        self._pending: asyncio.Task[dict[str, str]] | None = None
        self._last: tuple[float, dict[str, str]] | None = None
        self._states: dict[str, str] = {}
        self.clock = services.clock if services is not None else SYSTEM_CLOCK

    async def check(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check: state}). `workers` is always there; each backend the config uses is too."""
        needs = dict(self.needs())
        states = {"workers": OK if self.serving() else "not serving"}
        if needs and self.services is not None:
            states.update(await self._backends())
        ready = states["workers"] == OK and all(states.get(name) == OK for name, required in needs.items() if required)
        for name, required in needs.items():
            if not required and name in states:
                states[name] += "" if states[name] == OK else " (fail_open: requests pass)"
        return ready, states

    async def _backends(self) -> dict[str, str]:
        if self._last is not None and self.clock.monotonic() - self._last[0] < self.ttl:
            return self._last[1]
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._ping_all())
        pending = self._pending
        try:
            states = await asyncio.shield(pending)
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None
        self._last = (self.clock.monotonic(), states)
        return states

    async def _ping_all(self) -> dict[str, str]:
        assert self.services is not None  # noqa: S101 - _backends checks it
        pings = _pings(self.services)
        names = [name for name in self.needs() if name in pings]
        results = await asyncio.gather(*(self._ping(name, pings[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def _ping(self, name: str, ping: Callable[[], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(ping(), self.timeout)
        except TimeoutError:
            state, why = UNREACHABLE, f"no answer within {self.timeout:g} s"
        except Exception as exc:  # any failure of a ping means the backend cannot serve
            state, why = UNREACHABLE, f"{type(exc).__name__}: {exc}"
        else:
            state, why = OK, ""
        if self._states.get(name, OK) != state:
            if state == OK:
                log.warning("readiness: %s reachable again", name)
            else:
                log.error("readiness: %s %s (%s)", name, state, why)
        self._states[name] = state
        return state

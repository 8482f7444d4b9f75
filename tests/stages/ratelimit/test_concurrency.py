"""Concurrency limits through a real gateway: slots are held while a request is in flight and released
when the exchange completes - normally, when the client goes away, and when the upstream fails."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from stockade.ratelimit.backend import SHARED_KEY
from stockade.testing import TestGateway, gateway_with_upstream, read_responses

CONFIG = """
routes:
  - id: slow
    match: {path: /slow}
    upstream: "{upstream}"
    stages:
      - use: anonymous
      - use: rate_limit
        config: {limits: [{name: inflight, concurrency: 2, key: ip}]}
"""


def send(gw: TestGateway, path: str = "/slow") -> socket.socket:
    sock = gw.connect()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    return sock


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():  # waiting for another thread's state, not timing the code under test
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def held(gw: TestGateway) -> int:
    backend = gw.services.shared[SHARED_KEY]
    return sum(len(v) for v in backend._conc.values())


def test_slots_are_held_in_flight_and_released_on_completion() -> None:
    with gateway_with_upstream(CONFIG) as (gw, up):
        up.stall()
        a, b = send(gw), send(gw)
        wait_for(lambda: len(up.received) == 2)
        status, headers, _ = gw.request("GET", "/slow")
        assert status == 429 and headers["retry-after"] == "1"
        assert headers["ratelimit"] == '"inflight";r=0'
        assert headers["ratelimit-policy"] == '"inflight";q=2;qu="concurrent-requests"'
        up.release()
        assert [read_responses(s, 1)[0][0] for s in (a, b)] == [200, 200]
        a.close()
        b.close()
        wait_for(lambda: held(gw) == 0)
        _, headers, _ = gw.request("GET", "/slow")
        assert headers["ratelimit"] == '"inflight";r=1'


def test_client_disconnect_releases_its_slot() -> None:
    with gateway_with_upstream(CONFIG) as (gw, up):
        up.stall()
        a, b = send(gw), send(gw)
        wait_for(lambda: len(up.received) == 2)
        a.close()  # the client gives up while its request is at the upstream
        wait_for(lambda: held(gw) == 1)
        c = send(gw)
        wait_for(lambda: len(up.received) == 3)  # admitted: it reached the upstream
        up.release()
        assert read_responses(c, 1)[0][0] == 200
        b.close()
        c.close()
        wait_for(lambda: held(gw) == 0)


def test_upstream_failure_releases_its_slot() -> None:
    with socket.socket() as refusing:  # bound, never listening: refused, and no other process can take the port
        refusing.bind(("127.0.0.1", 0))
        config = CONFIG.replace('"{upstream}"', f'"http://127.0.0.1:{refusing.getsockname()[1]}"')
        _upstream_failure_releases_its_slot(config)


def _upstream_failure_releases_its_slot(config: str) -> None:
    with gateway_with_upstream(config) as (gw, _up):
        assert [gw.request("GET", "/slow")[0] for _ in range(4)] == [502] * 4  # never 429: each slot came back
        assert held(gw) == 0

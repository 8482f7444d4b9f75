"""Raw-socket helpers for proxy tests."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from stockade.testing import TestGateway, read_responses

Response = tuple[int, dict[str, str], bytes]


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll until the gateway reaches a state (a synchronisation point, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


def exchange(gw: TestGateway, raw: bytes, count: int = 1, *, head: bool = False) -> tuple[list[Response], bool]:
    """Send raw bytes on a fresh connection; return the responses and whether the gateway then closed it."""
    with gw.connect() as sock:
        sock.sendall(raw)
        responses = read_responses(sock, count, head_request=head)
        return responses, closed(sock)


def closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closed (EOF or reset). Returns at once on a close; waits `timeout` only on failure."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    """True if the gateway has neither closed the connection nor sent anything more (a sync point, not timing)."""
    sock.settimeout(0.3)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        return True
    except ConnectionResetError:
        pass
    return False


def wait_until_quiet(value: Callable[[], int], quiet: float = 0.3, timeout: float = 20.0) -> None:
    """Until `value()` has not changed for `quiet` seconds (bytes in flight have landed; a sync point only)."""
    end = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < end, "never quiet"
        time.sleep(0.02)
        if (now := value()) != last:
            last, since = now, time.monotonic()


def reason(response: Response) -> str:
    body = json.loads(response[2])
    return str(body["reason"])


def echo(response: Response) -> dict[str, object]:
    """The test upstream's JSON echo of what it received."""
    doc: dict[str, object] = json.loads(response[2])
    return doc

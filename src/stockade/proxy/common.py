"""Constants shared by the proxy's connection and exchange modules, and the limits as the request path reads them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from stockade.config.models import Limits

INF: Final = float("inf")
# Why client reads are paused (a bitmask: one reason ending must not resume reads another still needs paused).
PAUSE_BUFFER: Final = 1
PAUSE_PIPELINE: Final = 2
PAUSE_UPSTREAM: Final = 4
PAUSE_TUNNEL: Final = 8
MAX_DISCARD: Final = 64 * 1024  # a denied request's unread body up to this size is drained to keep the connection
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})


@dataclass(frozen=True, slots=True)
class HotLimits:
    """`config.Limits` copied into a slotted object, once per (re)load: a pydantic model answers every attribute
    read through its `__getattr__` hook (~40 ns more each), and the request path reads a dozen of them."""

    max_header_bytes: int
    max_headers: int
    max_body_bytes: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    keepalive_requests: int
    max_pipelined: int
    send_timeout: float
    tunnel_idle_timeout: float  # read from the server's current limits, so a reload reaches open tunnels
    drain_timeout: float
    pipeline_timeout: float
    buffer_bytes: int
    spool_bytes: int
    spool_total_bytes: int
    response_buffer_total_bytes: int
    max_client_connections: int  # read by the server as each connection is accepted
    tls_handshake_timeout: float | None  # read once, when the listener starts
    path_parameters: bool  # read from the Runtime by both fronts (intake.route_request); kept for completeness
    case_insensitive_routing: bool  # compiled into the Runtime's router; kept for completeness

    @classmethod
    def of(cls, limits: Limits) -> HotLimits:
        return cls(**{f.name: getattr(limits, f.name) for f in fields(cls)})


def not_connected(data: bytes) -> None:
    """A connection's bound `transport.write` before it has a transport (its write() checks for one first)."""
    raise AssertionError("no transport yet")


def transport_closed() -> bool:
    """A connection's bound `transport.is_closing` before it has a transport."""
    return True

"""The request head as parsed, its headers already sorted into what is forwarded and what is not."""

from __future__ import annotations


class RequestHead:
    """A request head as parsed, with the headers already sorted into what is forwarded and what is not."""

    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "expect",
        "forwarding",
        "fwd",
        "fwd_names",
        "host",
        "host_count",
        "keep_alive",
        "method",
        "proxy_connection",
        "raw",
        "request_id",
        "size",
        "upgrade",
        "upgrade_flag",
        "url",
        "version",
        "wire_bytes",
    )

    def __init__(self) -> None:
        self.url = b""
        self.size = 0
        self.wire_bytes = 0
        self.raw: list[tuple[bytes, bytes]] = []
        self.fwd: list[bytes] = []  # the forwarded headers, each a whole "name: value\r\n" line
        self.fwd_names: list[bytes] = []  # their names as received (same order), for a route that drops some
        self.host: bytes | None = None  # the first Host value (no list: there is one, or the request is refused)
        self.host_count = 0
        self.forwarding: list[tuple[bytes, bytes, bytes]] | tuple[()] = ()  # created when one arrives (rare)
        self.connection: list[bytes] | tuple[()] = ()
        self.proxy_connection = False  # llhttp reads keep-alive from Proxy-Connection too (it is never forwarded)
        self.expect: bytes | None = None
        self.request_id: bytes | None = None
        self.upgrade: bytes | None = None
        self.chunked = False
        self.content_length = 0
        self.method = b""
        self.version = "1.1"
        self.keep_alive = False
        self.upgrade_flag = False

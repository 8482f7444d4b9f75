"""A request body received beyond `limits.buffer_bytes`, kept in an unlinked temporary file until it is sent.

Like nginx's client body temp files: with request buffering on, a body up to `limits.spool_bytes` is received
whole before the upstream is contacted, so a client that drips a large upload ties up a gateway connection and
some disk, never an upstream worker. Each worker reserves a spool's greatest size up front against
`limits.spool_total_bytes`; a body that does not fit (or whose spool cannot be created) streams as before.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stockade.proxy.server import ProxyServer

CHUNK: Final = 64 * 1024  # read back and written upstream this much at a time (the transport's high-water mark)


class Spool:
    """An append-only temporary file with its own read offset: writes go to the end, reads come from `read_off`,
    so a body still arriving can be appended while earlier parts are read back."""

    __slots__ = ("fd", "paused", "read_off", "reserved", "server", "size")

    def __init__(self, server: ProxyServer, reserved: int, fd: int) -> None:
        self.server = server
        self.reserved = reserved
        self.fd = fd
        self.size = 0
        self.read_off = 0
        self.paused = False  # the upstream stopped taking what is read back (resume_writing goes on)

    @classmethod
    def open(cls, server: ProxyServer, reserve: int, chunks: Iterable[bytes]) -> Spool | None:
        """A spool holding `chunks`, or None if the worker's spool budget or the disk cannot take `reserve` more."""
        if server.spool_reserved + reserve > server.limits.spool_total_bytes:
            return None
        try:
            fd, path = tempfile.mkstemp(prefix="stockade-body-")  # mode 0600
            os.unlink(path)  # nothing on disk outlives the process, even a crash
        except OSError:
            return None
        server.spool_reserved += reserve
        spool = cls(server, reserve, fd)
        try:
            for chunk in chunks:
                spool.write(chunk)
        except OSError:
            spool.close()
            return None
        return spool

    def write(self, data: bytes) -> None:
        """Append (raises OSError: a full disk)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, self.size)
            self.size += n
            view = view[n:]

    def read(self) -> bytes:
        """The next part not yet read back (b"" at the end)."""
        data = os.pread(self.fd, CHUNK, self.read_off)
        self.read_off += len(data)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.server.spool_reserved -= self.reserved

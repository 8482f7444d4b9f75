"""The decision log: one JSON line per request, buffered and written in whole lines; never a credential."""

from __future__ import annotations

import os
import stat
import sys
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.pipeline.context import RequestContext

_FLUSH_AT = 64 * 1024
_PIPE_BUF = 4096  # writes up to this size are atomic on a pipe, so workers sharing stdout never interleave


class DecisionLog:
    """Appends lines to stdout, stderr or a file. `flush()` runs on a short timer and at shutdown."""

    def __init__(self, target: str, clock: Clock) -> None:
        self.clock = clock
        self._buf: list[bytes] = []
        self._size = 0
        self._owned = False
        if target == "off":
            self._fd = -1
        elif target == "stdout":
            self._fd = sys.stdout.fileno()
        elif target == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True
        # Only a pipe needs writes cut at PIPE_BUF to keep workers' lines whole; a file or terminal takes one write.
        self._chunk = _PIPE_BUF if self._fd >= 0 and stat.S_ISFIFO(os.fstat(self._fd).st_mode) else 1 << 30

    @property
    def enabled(self) -> bool:
        return self._fd >= 0

    def record(self, ctx: RequestContext, status: int, total_us: int, upstream_us: int, error: str = "") -> None:
        if self._fd < 0:
            return
        p = ctx.principal
        entry = {
            "ts": int(self.clock.time() * 1000) / 1000,
            "request_id": ctx.request_id,
            "route": ctx.route_id,
            "method": ctx.method,
            "path": ctx.path,
            "principal": p.id if p is not None else None,
            "decision": ctx.decision,
            "reason": ctx.reason,
            "stage": ctx.stage,
            "status": status,
            "latency_us": total_us,
            "upstream_us": upstream_us,
            "client_ip": ctx.client_ip,
        }
        if ctx.detail:
            entry["detail"] = ctx.detail
        if error:
            entry["error"] = error
        if ctx.findings:
            entry["findings"] = [f.rule for f in ctx.findings]
        if "failed_open" in ctx.state:
            entry["failed_open"] = ctx.state["failed_open"]
        line = orjson.dumps(entry) + b"\n"
        self._buf.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self._fd < 0:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            chunk = self._chunk
            while data:
                cut = len(data) if len(data) <= chunk else data.rfind(b"\n", 0, chunk) + 1
                if cut <= 0:
                    cut = data.find(b"\n") + 1 or len(data)
                written = os.write(self._fd, data[:cut])
                data = data[written:]
        except OSError:
            pass  # a closed stdout must not take the data plane down; metrics still count the requests

    def close(self) -> None:
        self.flush()
        if self._owned and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

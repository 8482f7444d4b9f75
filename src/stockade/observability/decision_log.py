"""The decision log: one JSON line per request, buffered and written in whole lines; never a credential."""

from __future__ import annotations

import os
import select
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import orjson

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.observability.metrics import Metrics
    from stockade.pipeline.context import RequestContext

_FLUSH_AT: Final = 64 * 1024
_PIPE_BUF: Final = 4096  # writes up to this size are atomic on a pipe, so workers sharing stdout never interleave
# Lines kept while a pipe's reader does not keep up; beyond, new lines are dropped.
_MAX_PENDING: Final = 8 * 1024 * 1024
# Client-controlled fields are cut to this many characters (the line says `"truncated": true`), and a line is never
# longer than _PIPE_BUF: written after a poll says the pipe has room, a longer line could still block the event
# loop (a pipe reports room for one page), and it would not be atomic between workers sharing stdout.
_MAX_FIELD: Final = 1024
_MAX_PRINCIPAL: Final = 256
_dumps: Final = orjson.dumps  # compiled code reads a module's attribute by a lookup at every call
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE


def _fit(entry: dict[str, object]) -> bytes:
    """The line cut to one pipe page (wide characters or escapes made it longer): the detail, then the path are
    shortened (a prefix of each is kept), then the findings go; who and what was decided always stay."""
    entry["truncated"] = True
    line = orjson.dumps(entry) + b"\n"
    for key, floor in (("detail", 0), ("path", 16)):
        value = entry.get(key)
        while len(line) > _PIPE_BUF and isinstance(value, str) and len(value) > floor:
            value = entry[key] = value[: max(floor, len(value) // 2)]
            line = orjson.dumps(entry) + b"\n"
    if len(line) > _PIPE_BUF:
        entry.pop("findings", None)
        line = orjson.dumps(entry) + b"\n"
    return line


def _mask_parameters(path: str) -> str:
    """Each segment's `;` parameters cut after the `;`: a session id (`;jsessionid=`) travels there as tokens do in
    the query string, which is never logged either. The `;` stays, so a request that carried some still shows it."""
    return "/".join(seg[: seg.index(";") + 1] if ";" in seg else seg for seg in path.split("/"))


class DecisionLog:
    """Appends lines to stdout, stderr or a file. `flush()` runs on a short timer and at shutdown."""

    def __init__(self, target: str, clock: Clock, metrics: Metrics | None = None) -> None:
        self.clock = clock
        self.time: Callable[[], float] = clock.time  # the bound function: one C call per line
        self.metrics = metrics  # counts dropped lines (stockade_events{event="decision_log",label="dropped"})
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
        # Only a pipe or socket needs writes cut at PIPE_BUF to keep workers' lines whole; a file or terminal takes
        # one write. A pipe or socket is polled before each write: a reader that stops (a stuck log shipper) must
        # cost decision lines, never block the event loop and with it the whole data plane.
        mode = os.fstat(self._fd).st_mode if self._fd >= 0 else 0
        streamed = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        self._chunk = _PIPE_BUF if streamed else 1 << 30
        self._poll: select.poll | None = None
        if streamed:
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLOUT)
        self._entry: dict[str, object] = {}  # the fields of a line without extras, refilled for each
        self.dropped = 0  # lines dropped while the reader did not keep up
        self._behind = False  # the last flush left lines behind: retry on the timer, not on every request

    @property
    def enabled(self) -> bool:
        return self._fd >= 0

    def record(self, ctx: RequestContext, status: int, total_us: int, upstream_us: int, error: str = "") -> None:
        if self._fd < 0:
            return
        p = ctx.principal
        principal = p.id if p is not None else None
        path = ctx.path
        if ";" in path:
            path = _mask_parameters(path)
        detail = ctx.detail
        # Client-controlled fields, cut (rarely: one length test each on the common path).
        cut = len(path) > _MAX_FIELD or len(detail) > _MAX_FIELD
        if principal is not None and len(principal) > _MAX_PRINCIPAL:
            principal = principal[:_MAX_PRINCIPAL]
            cut = True
        extras = bool(detail) or cut or bool(error) or bool(ctx.findings) or "failed_open" in ctx.state
        # The common line reuses one dict (orjson copies it out at once): same keys, same order, no new dict.
        entry = self._entry if not extras else {}
        entry["ts"] = int(self.time() * 1000) / 1000
        entry["request_id"] = ctx.request_id
        entry["route"] = ctx.route_id
        entry["method"] = ctx.method[:32]
        entry["path"] = path[:_MAX_FIELD] if cut else path
        entry["principal"] = principal
        entry["decision"] = ctx.decision
        entry["reason"] = ctx.reason
        entry["stage"] = ctx.stage
        entry["status"] = status
        entry["latency_us"] = total_us
        entry["upstream_us"] = upstream_us
        entry["client_ip"] = ctx.client_ip
        if extras:
            if detail:
                entry["detail"] = detail[:_MAX_FIELD] if cut else detail
            if cut:
                entry["truncated"] = True
            if error:
                entry["error"] = error
            if ctx.findings:
                entry["findings"] = [f.rule for f in ctx.findings]
            if "failed_open" in ctx.state:
                entry["failed_open"] = ctx.state["failed_open"]
        line = _dumps(entry, option=_NEWLINE)
        if len(line) > _PIPE_BUF:
            line = _fit(dict(entry))
        if self._size > _MAX_PENDING:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.event("decision_log", "dropped")
            return
        self._buf.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT and not self._behind:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self._fd < 0:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        poll = self._poll
        try:
            chunk = self._chunk
            while data:
                if poll is not None and not poll.poll(0):
                    break  # the reader is behind: keep the rest for the next flush (bounded by _MAX_PENDING)
                cut = len(data) if len(data) <= chunk else data.rfind(b"\n", 0, chunk) + 1
                if cut <= 0:
                    cut = data.find(b"\n") + 1 or len(data)
                written = os.write(self._fd, data[:cut])
                data = data[written:]
        except OSError:
            data = b""  # a closed stdout must not take the data plane down; metrics still count the requests
        self._behind = bool(data)
        if data:
            self._buf.append(data)
            self._size = len(data)

    def close(self) -> None:
        self.flush()
        if self._owned and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

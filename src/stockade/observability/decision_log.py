"""The decision log: one JSON line per request, buffered and written in whole lines; never a credential."""

from __future__ import annotations

import os
import select
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

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
# Kept boxed: a Final int is a C integer that compiled code boxes again (a new int object) at every call.
_NEWLINE: Final[Any] = orjson.OPT_APPEND_NEWLINE


class _Fragment:
    """One str field of the common line: its last value and that value as JSON (cut to `cut` characters if set)."""

    __slots__ = ("cut", "json", "value")

    def __init__(self, cut: int = 0) -> None:
        self.cut = cut
        self.value = ""
        self.json = b'""'

    def update(self, value: str) -> bool:
        """Take `value`; True if it differs from the last one (`==` on str compares pointers first)."""
        if value == self.value:
            return False
        self.json = _dumps(value[: self.cut] if self.cut else value)
        self.value = value
        return True


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
        # The common line (no extras) is one bytes format of cached JSON fragments (compiled: one copy of each piece
        # into the new bytes object). A field's fragment is remade only when its value changes, and most (route,
        # method, decision, ...) repeat from request to request. `_head` holds the timestamp, `_mid` the fields from
        # route to status, `_tail` the client address; beside each fragment, the values it was made from.
        # `_expected` in the tests checks that the bytes are orjson's.
        self._ms = -1  # the timestamp in milliseconds (-1: no line yet)
        self._head = b""
        self._route = _Fragment()
        self._method = _Fragment(32)  # the value as the context has it, the fragment cut
        self._path = _Fragment()  # masked
        self._principal: str | None = None
        self._principal_j = b"null"
        self._decision = _Fragment()
        self._reason = _Fragment()
        self._stage = _Fragment()
        self._status = -1  # no line yet: the first one makes `_mid`
        self._mid = b""
        self._client_ip = ""
        self._tail = b',"client_ip":""}\n'
        # The last path seen and its masked form: most requests repeat one (normalised paths are cached objects).
        self._seen_path = ""
        self._seen_masked = ""
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
        if path == self._seen_path:
            path = self._seen_masked
        else:
            self._seen_path = path
            if ";" in path:
                path = _mask_parameters(path)
            self._seen_masked = path
        detail = ctx.detail
        # Client-controlled fields, cut (rarely: one length test each on the common path).
        cut = len(path) > _MAX_FIELD or len(detail) > _MAX_FIELD
        if principal is not None and len(principal) > _MAX_PRINCIPAL:
            principal = principal[:_MAX_PRINCIPAL]
            cut = True
        state = ctx.existing_state()
        ms = int(self.time() * 1000)
        if detail or cut or error or ctx.existing_findings() or (state and "failed_open" in state):
            entry = self._extras_entry(ctx, ms, path, principal, status, total_us, upstream_us, detail, cut, error)
            line = _dumps(entry, option=_NEWLINE)
        else:
            line = self._common_line(ctx, ms, path, principal, status, total_us, upstream_us)
        if len(line) > _PIPE_BUF:  # wide characters or escapes: the entry again, cut to fit
            line = _fit(self._extras_entry(ctx, ms, path, principal, status, total_us, upstream_us, detail, cut, error))
        if self._size > _MAX_PENDING:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.event("decision_log", "dropped")
            return
        self._buf.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT and not self._behind:
            self.flush()

    def _common_line(
        self,
        ctx: RequestContext,
        ms: int,
        path: str,
        principal: str | None,
        status: int,
        total_us: int,
        upstream_us: int,
    ) -> bytes:
        """The line without extras: what `_extras_entry` would hold, as orjson writes it, from cached fragments.
        `==` on two str objects compares pointers first, so an unchanged field costs one compare."""
        if ms != self._ms:
            self._head = b'{"ts":%b,"request_id":"' % _dumps(ms / 1000)
            self._ms = ms
        rid = ctx.request_id
        # Intake makes its own ids of letters and digits, or lets through a client's of [A-Za-z0-9._:-]: those go in as
        # they are. Anything else (a context built elsewhere) is escaped, never trusted: a quote or a line end in it
        # would forge fields. (A letter or digit is never one JSON escapes, whatever the script.)
        if not rid.isalnum() and not (rid.isprintable() and '"' not in rid and "\\" not in rid):
            rid_b = _dumps(rid)[1:-1]
        else:
            rid_b = ctx.request_id_bytes()  # encoded once, shared with the upstream head
        # `|`, not `or`: every fragment is brought up to date, whatever changed before it.
        changed = status != self._status
        changed = self._route.update(ctx.route_id) | changed
        changed = self._method.update(ctx.method) | changed
        changed = self._path.update(path) | changed
        changed = self._decision.update(ctx.decision) | changed
        changed = self._reason.update(ctx.reason) | changed
        changed = self._stage.update(ctx.stage) | changed
        last = self._principal
        if principal is None:
            if last is not None:
                self._principal_j = b"null"
                self._principal = None
                changed = True
        elif last is None or principal != last:
            self._principal_j = _dumps(principal)
            self._principal = principal
            changed = True
        if changed:
            self._status = status
            self._mid = (
                b'"route":%b,"method":%b,"path":%b,"principal":%b,'
                b'"decision":%b,"reason":%b,"stage":%b,"status":%d,"latency_us":'
                % (
                    self._route.json,
                    self._method.json,
                    self._path.json,
                    self._principal_j,
                    self._decision.json,
                    self._reason.json,
                    self._stage.json,
                    status,
                )
            )
        s = ctx.client_ip
        if s != self._client_ip:
            self._tail = b',"client_ip":%b}\n' % _dumps(s)
            self._client_ip = s
        return b'%b%b",%b%d,"upstream_us":%d%b' % (self._head, rid_b, self._mid, total_us, upstream_us, self._tail)

    @staticmethod
    def _extras_entry(
        ctx: RequestContext,
        ms: int,
        path: str,
        principal: str | None,
        status: int,
        total_us: int,
        upstream_us: int,
        detail: str,
        cut: bool,
        error: str,
    ) -> dict[str, object]:
        """The fields of a line with extras (a detail, a cut, an error, findings or a fail-open), in a dict of its
        own: the common line's dict keeps exactly its thirteen fields, in their order."""
        entry: dict[str, object] = {
            "ts": ms / 1000,
            "request_id": ctx.request_id,
            "route": ctx.route_id,
            "method": ctx.method[:32],
            "path": path[:_MAX_FIELD] if cut else path,
            "principal": principal,
            "decision": ctx.decision,
            "reason": ctx.reason,
            "stage": ctx.stage,
            "status": status,
            "latency_us": total_us,
            "upstream_us": upstream_us,
            "client_ip": ctx.client_ip,
        }
        if detail:
            entry["detail"] = detail[:_MAX_FIELD] if cut else detail
        if cut:
            entry["truncated"] = True
        if error:
            entry["error"] = error
        findings = ctx.existing_findings()
        if findings:
            entry["findings"] = [f.rule for f in findings]
        state = ctx.existing_state()
        if state and "failed_open" in state:
            entry["failed_open"] = state["failed_open"]
        return entry

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
                # A file takes the whole buffer at once: slicing it would copy it all first.
                written = os.write(self._fd, data if cut == len(data) else data[:cut])
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

"""Getting a request to its upstream: a pooled or new connection, the rebuilt head, the (re-framed) body.

Functions of an Exchange (bound as its methods in exchange.py): split from it for size, not as a separate
object, so they use its state directly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from stockade.pipeline.forward import names_other_host, replaced_headers
from stockade.proxy import local_replies
from stockade.proxy.common import IDEMPOTENT, INF, PAUSE_BUFFER, PAUSE_UPSTREAM
from stockade.proxy.http import CRLF, connection_tokens
from stockade.proxy.spool import Spool
from stockade.security.forwarded import forwarded_for

if TYPE_CHECKING:
    from stockade.proxy.exchange import Exchange
    from stockade.proxy.upstream import UpstreamConnection

_XF_REBUILT: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_drop_cache: Final[dict[frozenset[str], frozenset[bytes]]] = {}


def _drop_bytes(names: frozenset[str]) -> frozenset[bytes]:
    """Header names to drop, as bytes, cached by the (hash-caching) frozenset a stage's verdict carries."""
    found = _drop_cache.get(names)
    if found is None:
        found = frozenset(n.encode("latin-1") for n in names)
        if len(_drop_cache) < 1024:
            _drop_cache[names] = found
    return found


def _forward(ex: Exchange) -> None:
    route = ex.route
    assert route is not None  # noqa: S101 - only called after routing
    if route.handler is not None:
        local_replies._run_handler(ex, route.handler)
        return
    if route.upstream is None:
        local_replies._error_local(ex, 502, "upstream.unavailable", "route has no upstream")
        return
    h = ex.head
    if (
        not ex.request_done
        and (h.content_length or h.chunked)
        and route.request_buffering
        and (ex.body_size <= ex.buffer_cap or _spool(ex))
    ):
        # Receive the body first, as far as the buffer and the spool hold it (nginx's proxy_request_buffering): a
        # client that drips its body costs a gateway connection, never an upstream worker. request_body /
        # request_complete go on with _to_upstream; the client's body timer runs meanwhile.
        ex.held = True
        ex.t_held = ex.monotonic()  # until _to_upstream: the client's time, not the gateway's
        ex.conn.resume(PAUSE_BUFFER)  # paused if the body had filled the buffer: the spool takes it now
        ex._send_continue()
        return
    _to_upstream(ex)


def _spool(ex: Exchange) -> bool:
    """Move the held body into a spool (proxy/spool.py), if its size allows and the worker's budget has room."""
    limits = ex.conn.limits
    cap = limits.spool_bytes
    h = ex.head
    if cap < limits.buffer_bytes or h.content_length > cap:  # 0, or no bigger than memory holds: no spool
        return False
    spool = Spool.open(ex.server, h.content_length or cap, ex.body)
    if spool is None:
        return False
    ex.spool = spool
    ex.body = ()
    ex.retried = True  # the spool is read once: no transparent retry on a fresh connection
    return True


def _buffer_full(ex: Exchange) -> None:
    """The held body outgrew the memory buffer: on into a spool, or the upstream takes the rest as it comes."""
    if not _spool(ex):
        ex.held = False
        _to_upstream(ex)


def _spool_more(ex: Exchange, chunk: bytes) -> None:
    spool = ex.spool
    assert spool is not None  # noqa: S101 - request_body checked
    try:
        spool.write(chunk)
    except OSError as exc:
        _spool_failed(ex, exc)
        return
    if ex.held and spool.size > spool.reserved:
        # A chunked body outgrew its spool: the upstream gets what is spooled, then the rest as it comes. The
        # client waits meanwhile (paused as by the upstream: its body timer waits while the upstream is slow).
        ex.held = False
        ex.conn.pause(PAUSE_UPSTREAM)
        _to_upstream(ex)


def _pump(ex: Exchange) -> None:
    """Send the spool upstream as fast as the upstream takes it; then end the body, or stream the rest."""
    spool = ex.spool
    up = ex.upstream
    route = ex.route
    assert spool is not None and up is not None and route is not None  # noqa: S101
    chunked = ex.head.chunked
    while not spool.paused:
        try:
            data = spool.read()
        except OSError as exc:
            _spool_failed(ex, exc)
            return
        if not data:
            break
        up.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)  # may pause: upstream_pause
    else:
        return  # the upstream is full: upstream_pause(False) calls again
    spool.close()
    ex.spool = None
    if ex.request_done:
        ex.streaming = False
        if chunked:
            up.write(b"0\r\n\r\n")
        ex._set_deadline(ex.monotonic() + route.read_timeout, "upstream")
    else:
        _body_from_client(ex)
    ex.conn.resume(PAUSE_UPSTREAM)


def _body_from_client(ex: Exchange) -> None:
    """The upstream has taken all it was given; the rest of the body comes as the client sends it (the client's
    body timer). No send deadline then, but an upstream response already under way keeps its read deadline."""
    route = ex.route
    if ex.resp_started and route is not None:
        ex._set_deadline(ex.monotonic() + route.read_timeout, "upstream")
    else:
        ex.deadline = INF


def _spool_failed(ex: Exchange, exc: OSError) -> None:
    ex.request_aborted(503, "gateway.error", f"request body spool: {exc.strerror}")


def _to_upstream(ex: Exchange) -> None:
    route = ex.route
    assert route is not None and route.upstream is not None  # noqa: S101 - _forward checked
    if ex.t_held:
        ex.t_wait += ex.monotonic() - ex.t_held
        ex.t_held = 0.0
    ex.pool = pool = ex.server.pools.get(route.upstream)
    up = pool.acquire()
    if up is not None:
        _send(ex, up)
    else:
        _connect(ex)


def _connect(ex: Exchange) -> None:
    pool = ex.pool
    route = ex.route
    assert pool is not None and route is not None  # noqa: S101
    ex.t_sent = now = ex.monotonic()  # a connect timeout is the upstream's time; _send marks it again
    ex._set_deadline(now + route.connect_timeout, "connect")
    ex.task = task = asyncio.get_running_loop().create_task(pool.connect())
    task.add_done_callback(ex._connected)


def _connected(ex: Exchange, task: asyncio.Future[Any]) -> None:
    if ex.task is task:
        ex.task = None
    if task.cancelled():
        return
    exc = task.exception()
    if ex.finished:
        if exc is None and ex.pool is not None:
            ex.pool.release(task.result())
        return
    ex.deadline = INF
    if exc is not None:
        local_replies._error_local(ex, 502, "upstream.unavailable", f"connect failed: {exc!r}")
        return
    _send(ex, task.result())


def _send(ex: Exchange, up: UpstreamConnection) -> None:
    ex.upstream = up
    h = ex.head
    pipeline = ex.pipeline
    route = ex.route
    assert pipeline is not None and ex.pool is not None and route is not None  # noqa: S101
    head_only = h.method == b"HEAD"
    buffer_response = pipeline.needs_response_body and not head_only
    ex.collected = [] if buffer_response else None
    up.begin(ex, decode=buffer_response or h.version == "1.0", head_only=head_only, exchange=ex)
    if ex.conn.write_paused_at < INF:
        # The client is backed up already (by an earlier response on its connection): this response waits for it
        # too, as the one that was sending when it backed up did. resume_writing resumes whichever is sending.
        up.pause_reading()
    data = encode_request_head(ex)
    if ex.body:
        if h.chunked:
            data += b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in ex.body if c)
        else:
            data += b"".join(ex.body)
    spool = ex.spool
    if ex.request_done and h.chunked and spool is None:
        data += b"0\r\n\r\n"
    if not (ex.request_done and h.method in IDEMPOTENT):
        ex.body = ()  # kept only while a retry on a fresh connection is still possible
    if not ex.request_done or spool is not None:
        # Streaming from here: set before the write, which may fill the upstream's buffer and pause it at once
        # (upstream_pause then gives the upstream a send deadline).
        ex.streaming = True
        ex.deadline = INF
    if spool is not None:
        spool.paused = False
    up.write(data)
    now = ex.monotonic()
    ex.t_sent = now
    if spool is not None:
        _pump(ex)
        return
    ex.conn.resume(PAUSE_BUFFER)
    if ex.request_done:
        ex._set_deadline(now + route.read_timeout, "upstream")
    else:
        ex._send_continue()


_RID: Final = b"\r\nx-request-id: "
_END_LAST_LINE: Final = b"\r\n\r\n"


def encode_request_head(ex: Exchange) -> bytes:
    """The request head sent upstream, rebuilt from parsed parts only (never the client's raw bytes)."""
    h = ex.head
    ctx = ex.ctx
    pool = ex.pool
    pipeline = ex.pipeline
    route = ex.route
    assert ctx is not None and pool is not None and pipeline is not None and route is not None  # noqa: S101
    target = ctx.raw_path.encode("latin-1")
    if pool.base_path:
        target = pool.base_path + target
    if ctx.query:
        target = b"%b?%b" % (target, ctx.query.encode("latin-1"))
    if route.preserve_host and h.host is not None:
        host_line = b" HTTP/1.1\r\nhost: %b\r\n" % h.host
    else:
        host_line = pool.host_line
    removed = ctx.remove_headers
    if h.connection or removed or ctx.set_headers:
        if ctx.set_headers:
            drop = frozenset(n.encode("latin-1") for n in replaced_headers(ctx) or ())
        else:
            drop = _drop_bytes(removed or frozenset())
        if h.connection:
            drop |= connection_tokens(h.connection)
        # A plain loop: cheaper than a comprehension (3.11 builds a function per comprehension) for the few lines
        # a request has; zip without strict= because on_header appends both lists in lockstep. (The names are
        # kept apart: taken from each line, a bytes.index per header is a generic call with argument parsing.)
        kept = []
        for name, line in zip(h.fwd_names, h.fwd):  # noqa: B905
            if name.lower() not in drop:
                kept.append(line)
        fwd = b"".join(kept)
    else:
        fwd = b"".join(h.fwd) if h.fwd else b""
    conn = ex.conn
    fhost = h.host if h.host is not None else pool.host_header
    if ex.trusted and h.forwarding:
        proto = b"https" if conn.tls else b"http"
        xff_values = []
        by_host = ex.runtime.router.by_host
        lines: list[bytes] = []
        for lname, name, value in h.forwarding:
            if lname == b"x-forwarded-for":
                xff_values.append(value.decode("latin-1"))
            elif lname == b"x-forwarded-proto":
                proto = value
            elif lname == b"x-forwarded-host":
                if not (by_host and names_other_host(lname, value, ctx.host)):
                    fhost = value
            elif lname == b"forwarded" and by_host and names_other_host(lname, value, ctx.host):
                continue
            if lname not in _XF_REBUILT:
                lines.extend((name, b": ", value, CRLF))
        xff = forwarded_for(conn.peer_ip, xff_values, ex.runtime.trusted_proxies).encode("latin-1")
        lines.extend(
            (b"x-forwarded-for: ", xff, b"\r\nx-forwarded-proto: ", proto, b"\r\nx-forwarded-host: ", fhost, _RID)
        )
        forwarded = b"".join(lines)
    else:
        # The same lines for the peer itself, built once per connection (and per X-Forwarded-Host value).
        if fhost != conn.forwarded_block_host:
            conn.forwarded_block = conn.forwarded_lines + fhost + _RID
            conn.forwarded_block_host = fhost
        forwarded = conn.forwarded_block
    rid = ctx.request_id_bytes()
    identity = pipeline.identity_header_bytes(ctx)
    # Compiled, each of these is one native copy of every piece into the new bytes object.
    if not (h.chunked or ex.upgrade_ok or identity or ctx.set_headers):
        return b"%b %b%b%b%b%b\r\n\r\n" % (h.method, target, host_line, fwd, forwarded, rid)  # the usual request
    return b"%b %b%b%b%b%b\r\n%b%b%b%b\r\n" % (
        h.method,
        target,
        host_line,
        fwd,
        forwarded,
        rid,
        b"transfer-encoding: chunked\r\n" if h.chunked else b"",
        b"connection: upgrade\r\nupgrade: websocket\r\n" if ex.upgrade_ok else b"",
        identity,
        _set_lines(ctx.set_headers) if ctx.set_headers else b"",
    )


def _set_lines(headers: dict[str, str]) -> bytes:
    """The header lines a stage set (`Continue(set_headers=...)`, values made safe by the runner)."""
    lines: list[bytes] = []
    for name, value in headers.items():
        lines.extend((name.encode("latin-1"), b": ", value.encode("latin-1"), CRLF))
    return b"".join(lines)

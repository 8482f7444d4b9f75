"""The exchange's response side: the upstream's head and body on their way to the client.

Functions of an Exchange (bound as its methods in exchange.py): split from it for size, not as a separate
object, so they use its state directly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from stockade.pipeline.local import run_response_hooks
from stockade.pipeline.response import Response, head_fields
from stockade.pipeline.runner import MAX_RESPONSE_BYTES
from stockade.proxy import forwarding, local_replies
from stockade.proxy.common import IDEMPOTENT, INF, PAUSE_UPSTREAM
from stockade.proxy.http import (
    ResponseFraming,
    append_headers,
    build_head,
    cut_headers,
    forwardable,
    rewrite_response_head,
    status_line,
)

if TYPE_CHECKING:
    from stockade.proxy.exchange import Exchange
    from stockade.proxy.upstream import UpstreamConnection

log: Final = logging.getLogger("stockade.proxy")

_FRAMING_NAMES: Final = frozenset({"content-length", "transfer-encoding"})


def upstream_head(ex: Exchange, head: bytes, status: int, first: bytes, framing: ResponseFraming) -> None:
    """The upstream's response head arrived, with `first`: the body bytes that came in the same read (re-framed,
    if chunked), and its `framing`."""
    now = ex.monotonic()
    ex.t_head = now
    ex.upstream_status = status
    route = ex.route
    assert route is not None  # noqa: S101
    ex._set_deadline(now + route.read_timeout, "upstream")
    if not 100 <= status <= 599:
        _upstream_broken(ex, "upstream.bad_response", f"status {status}")
        return
    if not framing.status_ok:
        # RTSP/1.0, HTTP/2.0 or a reason phrase with control bytes: llhttp took it, the client may not. The
        # gateway says the status in its own words.
        head = status_line(status) + head[head.index(b"\r\n") + 2 :]
        framing = ResponseFraming.of(head)
    if framing.bad_coding:
        _upstream_broken(ex, "upstream.bad_response", "a transfer coding other than chunked")
        return
    if status == 101:
        if not ex.upgrade_ok:
            _upstream_broken(ex, "upstream.bad_response", "101 without an upgrade request")
            return
        _write_head(ex, head, status, framing, None, b"connection: upgrade\r\nupgrade: websocket\r\n")
        if ex.finished:  # a response hook refused the 101: answered and recorded already, no tunnel
            return
        ex.tunnel_open = True
        ex.deadline = INF
        ex._record(hooks=False)  # completion hooks when the tunnel closes
        ex.conn.start_tunnel(ex)
        return
    ex.framing = framing
    if ex.collected is not None:
        ex.resp_head = head
        if first:
            ex.upstream_body(first)
        return
    _write_head(ex, head, status, framing, None, None, first)


def _write_head(
    ex: Exchange,
    head: bytes,
    status: int,
    framing: ResponseFraming,
    body: bytes | None,
    extra: bytes | None,
    first: bytes = b"",
) -> bytes | None:
    """Write the response head (and `first`, streamed body bytes that came with it) to the client; returns the
    buffered body to send when hooks had it (they may have replaced it)."""
    h = ex.head
    conn = ex.conn
    pipeline = ex.pipeline
    ctx = ex.ctx
    assert pipeline is not None and ctx is not None  # noqa: S101
    dechunk = h.version == "1.0" and framing.chunked
    close = (
        conn.should_close_after(ex)
        or not ex.request_done
        or dechunk
        or (framing.delimited_by_close and _has_body(status, h.method))
    )
    ex.close_after = close
    if extra is None:
        extra = b"connection: close\r\n" if close else (b"connection: keep-alive\r\n" if h.version == "1.0" else b"")
        if body is None and h.version == "1.1" and framing.delimited_by_close and _has_body(status, h.method):
            # The body ends when the upstream closes: re-framed as chunked (as nginx does), so that a client can
            # tell a cut (a reset, a read timeout: no last chunk) from the end.
            ex.chunk_to_close = True
            extra += b"transfer-encoding: chunked\r\n"
            if first:
                first = b"%x\r\n%b\r\n" % (len(first), first)
    plan = None
    edits = pipeline.head_edits
    if edits is not None and not (framing.needs_rebuild or dechunk or body is not None):
        try:
            plan = edits(ctx, head)
        except Exception:
            plan = None  # the hook itself runs below, where a failure is answered (fail closed)
    if plan is not None:
        # The route's one response hook stated its edits without a Response object: the same cut and append
        # as below, for a fraction of the cost.
        out = rewrite_response_head(head, framing, extra)
        if plan[0]:
            out = cut_headers(out, plan[0])
        if plan[1]:
            out = append_headers(out, plan[1])
    elif pipeline.response_hooks or framing.needs_rebuild or dechunk or body is not None:
        if framing.needs_rebuild:  # hooks see what can be forwarded (not what the upstream's Connection drops)
            resp = Response(status, headers=forwardable(head_fields(head)), body=body)
        else:
            resp = Response(status, raw_head=head, body=body)
        failed = run_response_hooks(pipeline, ctx, resp)
        if failed is not None:
            local_replies._error_local(ex, failed.status, failed.reason, failed.detail, keep_decision=True)
            return None
        length = None
        if body is not None:
            body = resp.body
            if status == 204 or status == 304:
                body = b""  # none, whatever a hook made of it, and none announced (RFC 9110 8.6)
            elif body is not None:
                length = str(len(body))
        if framing.needs_rebuild:
            # The upstream's Connection header names other headers as hop-by-hop: parse and rebuild.
            headers = resp.final_headers()
            if dechunk or body is not None:
                headers = [(n, v) for n, v in headers if n != "transfer-encoding" and n != "content-length"]
                if length is not None:
                    headers.append(("content-length", length))
            out = build_head(status_line(status), headers, extra)
        else:
            # Surgical edits on the verbatim head: hop-by-hop lines cut as usual, the hooks' removals (and,
            # when the body is re-framed, the framing lines) cut with one search, additions appended -
            # instead of parsing and rebuilding every header.
            out = rewrite_response_head(head, framing, extra)
            removed = resp.removed
            added = resp.added
            if dechunk or body is not None:
                removed = removed | _FRAMING_NAMES
                if length is not None:
                    added = [*added, ("content-length", length)]
            if removed:
                out = cut_headers(out, removed)
            if added:
                out = append_headers(out, added)
    else:
        out = rewrite_response_head(head, framing, extra)
    if first:
        out = b"%b%b" % (out, first)  # compiled: one native copy of each (`+=` on bytes is a generic call)
    conn.write(out)
    ex.resp_started = True
    ex.status = status
    ex.bytes_sent += len(out)
    return body


def _has_body(status: int, method: bytes) -> bool:
    return status >= 200 and status != 204 and status != 304 and method != b"HEAD"


def upstream_body(ex: Exchange, data: bytes) -> None:
    if ex.tunnel_open:
        conn = ex.conn
        conn.write(data)
        server = ex.server
        conn.read_deadline = ex.monotonic() + server.limits.tunnel_idle_timeout  # see data_received
        return
    collected = ex.collected
    if collected is not None:
        collected.append(data)
        ex.collected_size += len(data)
        server = ex.server
        server.collected_total += len(data)  # given back once, when the exchange is recorded (Exchange._record)
        if ex.collected_size > MAX_RESPONSE_BYTES:
            _upstream_broken(ex, "upstream.response_too_large", "response body exceeds the buffer for hooks")
        elif server.collected_total > server.limits.response_buffer_total_bytes:
            ex._drop_upstream(reusable=False)
            local_replies._error_local(ex, 503, "gateway.busy", "response buffers of this worker are full")
        elif ex.route is not None:
            ex.deadline = ex.monotonic() + ex.route.read_timeout  # between reads, as when streamed
        return
    if ex.chunk_to_close:
        data = b"%x\r\n%b\r\n" % (len(data), data)
    ex.conn.write(data)
    ex.bytes_sent += len(data)
    route = ex.route
    if ex.pool is not None and route is not None:
        now = ex.monotonic()
        if not ex.t_fwd:
            ex.t_fwd = now
        ex.deadline = now + route.read_timeout


def upstream_done(ex: Exchange) -> None:
    up = ex.upstream
    if up is not None:
        # Not reusable while part of the request body is still unsent (received whole, but the spool not yet sent),
        # nor after a response whose head says so (ResponseFraming.reusable: a 204 or 304 announcing a body, an
        # HTTP/1.0 response with Transfer-Encoding; after HEAD, which llhttp cannot know, the connection is never
        # pooled: UpstreamConnection.on_headers_complete). Nor after an upgrade request the upstream refused: a
        # server that handed the socket to its upgrade handler (Node's 'upgrade' event) no longer reads HTTP on
        # it, and the next client's request, credentials and all, would go there.
        reusable = up.keep_alive and ex.request_done and ex.spool is None and not up.decoded and not ex.upgrade_ok
        if reusable:
            framing = ex.framing
            reusable = framing is None or framing.reusable
        now = 0.0
        if ex.collected is None:  # (a buffered response still has its hooks and writes to go: _record reads later)
            # One clock reading for the end of the exchange: the pool's idle timer, the log line, the keep-alive.
            now = ex.t_end = ex.monotonic()
        ex._drop_upstream(reusable=reusable, now=now)
    if ex.collected is not None:
        _flush_collected(ex)
        if ex.finished:
            return
    ex._finish(close=ex.close_after)


def _flush_collected(ex: Exchange) -> None:
    collected = ex.collected
    assert collected is not None and ex.framing is not None  # noqa: S101
    ex.collected = None
    body = _write_head(ex, ex.resp_head, ex.upstream_status, ex.framing, b"".join(collected), None)
    if body is not None and not ex.finished:
        ex.conn.write(body)
        ex.bytes_sent += len(body)


def upstream_closed(ex: Exchange, conn: UpstreamConnection) -> None:
    if ex.tunnel_open:
        ex._tunnel_done()
        ex._drop_upstream(reusable=False)
        ex.conn.close()
        return
    if ex.finished or ex.upstream is not conn:
        return
    ex._drop_upstream(reusable=False)
    if not conn.head_sent:
        h = ex.head
        if not conn.received_any and conn.reused and not ex.retried and ex.request_done and h.method in IDEMPOTENT:
            ex.retried = True  # a pooled connection the upstream had already closed: try a fresh one
            forwarding._connect(ex)
            return
        local_replies._error_local(ex, 502, "upstream.unavailable", "upstream closed the connection")
        return
    framing = ex.framing
    if framing is not None and framing.delimited_by_close:
        if conn.reset:  # not the end of the body: a cut
            _upstream_broken(ex, "upstream.truncated", "upstream reset the connection mid-response")
            return
        if ex.collected is not None:
            _flush_collected(ex)
        elif ex.chunk_to_close and not ex.finished:
            ex.conn.write(b"0\r\n\r\n")
            ex.bytes_sent += 5
        ex._finish(close=True)
        return
    _upstream_broken(ex, "upstream.truncated", "upstream closed mid-response")


def upstream_failed(ex: Exchange, reason: str, detail: str) -> None:
    _upstream_broken(ex, reason, detail)


def _upstream_broken(ex: Exchange, reason: str, detail: str) -> None:
    if ex.finished:
        return
    ex._drop_upstream(reusable=False)
    if ex.resp_started:
        ex.error = reason
        log.warning("upstream failed mid-response: %s", detail)
        framing = ex.framing
        if framing is not None and framing.delimited_by_close and not ex.chunk_to_close:
            ex.conn.reset()  # an HTTP/1.0 client reads to the close: only a reset tells it the body is cut
        else:
            ex.conn.abort()
        ex._finish(close=True)
    else:
        local_replies._error_local(
            ex, 502, "upstream.bad_response" if reason != "upstream.unavailable" else reason, detail
        )


def upstream_pause(ex: Exchange, paused: bool) -> None:
    """The upstream stopped (or resumed) taking what the gateway writes. While a request body is streaming, the
    client is not read meanwhile (its body timer waits, see `ClientConnection.check_deadlines`) and the upstream
    gets the route's read timeout to take the body again, as nginx's proxy_send_timeout."""
    spool = ex.spool
    if paused:
        ex.conn.pause(PAUSE_UPSTREAM)
        if spool is not None:
            spool.paused = True
        if ex.streaming and ex.route is not None:
            ex._set_deadline(ex.monotonic() + ex.route.read_timeout, "send")
        return
    if ex.streaming and ex.deadline_kind == "send":
        forwarding._body_from_client(ex)
    if spool is not None and not ex.held and ex.upstream is not None:
        spool.paused = False
        forwarding._pump(ex)  # it resumes the client once the spool is sent
        return
    ex.conn.resume(PAUSE_UPSTREAM)


def client_pause(ex: Exchange, paused: bool) -> None:
    """The client stopped (or resumed) taking what the gateway writes: so does the upstream's response. While it
    is paused, its read deadline waits (Exchange.check_deadline); it starts again from here."""
    up = ex.upstream
    if up is not None:
        if paused:
            up.pause_reading()
            return
        up.resume_reading()
        route = ex.route
        if ex.deadline_kind == "upstream" and not ex.finished and not ex.tunnel_open and route is not None:
            ex._set_deadline(ex.monotonic() + route.read_timeout, "upstream")


def tunnel_from_client(ex: Exchange, data: bytes) -> None:
    if ex.upstream is not None:
        ex.upstream.write(data)

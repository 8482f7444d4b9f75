"""One WebSocket handshake through the middleware: the pipeline judges the upgrade request; a denial rejects it.

A rejection is the same problem+json the proxy sends when the server offers the `websocket.http.response`
extension, else a close with 1008 (policy violation) before accepting, which servers turn into a 403.
Once accepted, frames pass between client and app untouched, as through the proxy's tunnel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stockade.asgi.base import ClientDisconnectedError, Exchange
from stockade.asgi.scope import Message, app_scope, to_raw_headers
from stockade.pipeline.local import denial
from stockade.pipeline.record import complete_upgraded
from stockade.pipeline.runner import Pipeline
from stockade.pipeline.verdict import Deny

if TYPE_CHECKING:
    from stockade.pipeline.context import RequestContext

POLICY_VIOLATION = 1008
REJECTED_STATUS = 403  # what servers answer a handshake the app closed before accepting


class WebSocketExchange(Exchange):
    """One `websocket` scope, judged as the GET request that carried the upgrade."""

    async def run(self) -> None:
        try:
            await self._run()
        except ClientDisconnectedError:
            self.client_gone()
        finally:
            if not self.recorded:
                if not self.status:
                    self.status = 499 if self.disconnected else 500
                    self.error = self.error or ("client.closed" if self.disconnected else "app.incomplete")
                self.record()
            elif self.status == 101 and self.ctx is not None:
                # The accepted WebSocket is over: its completion hooks (a concurrency slot) end with it.
                complete_upgraded(self.pipeline, self.ctx, self.times, self.clock.monotonic(), self.bytes_sent)

    async def _run(self) -> None:
        ctx, route = self.intake(b"GET")
        if isinstance(route, Deny):
            await self._reject(ctx, route)
            return
        if not route.websocket or route.handler is not None:
            # The proxy would forward this as a plain GET without the upgrade; in ASGI a WebSocket scope cannot
            # become one, so a route that did not opt in refuses it (fail closed).
            deny = Pipeline.deny(
                ctx, "router", Deny(403, "websocket.not_allowed", detail="route does not allow WebSocket upgrades")
            )
            await self._reject(ctx, deny)
            return
        pipeline = route.pipeline
        verdict = await self.run_pipeline(ctx, pipeline)
        if verdict is not None:
            await self._reject(ctx, verdict)
            return
        self.times.t_sent = self.clock.monotonic()
        rt = self.runtime
        scope = app_scope(self.scope, ctx, pipeline, rt.trusted_proxies, mount=self.mount, by_host=rt.router.by_host)
        await self.mw.app(scope, self.receive, self._app_send)

    async def _app_send(self, message: Message) -> None:
        if not self.recorded:
            kind = message["type"]
            if kind == "websocket.accept":
                self._handshake_done(101)
            elif kind == "websocket.close":
                self._handshake_done(REJECTED_STATUS)
            elif kind == "websocket.http.response.start":
                self._handshake_done(int(message["status"]))
        await self.send(message)

    def _handshake_done(self, status: int) -> None:
        """The decision is logged once the handshake is answered, as the proxy logs an upgrade at its 101."""
        now = self.clock.monotonic()
        self.times.t_head = now
        self.times.t_fwd = now
        self.app_status = status
        self.status = status
        self.record(hooks=status != 101)  # an accepted WebSocket runs its completion hooks when it closes

    async def _reject(self, ctx: RequestContext, deny: Deny) -> None:
        # The handshake begins with `websocket.connect`; take it before answering, as the ASGI spec orders.
        message = await self.receive()
        if message["type"] == "websocket.disconnect":
            raise ClientDisconnectedError
        if "websocket.http.response" in (self.scope.get("extensions") or {}):
            reply = denial(ctx, deny)
            start = {"type": "websocket.http.response.start", "status": reply.status}
            await self.send({**start, "headers": to_raw_headers(reply.headers)})
            await self.send({"type": "websocket.http.response.body", "body": reply.body, "more_body": False})
            self.status = reply.status
            self.bytes_sent = len(reply.body)
        else:
            await self.send({"type": "websocket.close", "code": POLICY_VIOLATION})
            self.status = REJECTED_STATUS
        self.times.t_fwd = self.clock.monotonic()
        self.record()

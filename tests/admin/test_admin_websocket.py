"""WebSocket handshakes on the admin listener meet the Host guard and admin authentication, before any accept."""

from __future__ import annotations

import base64
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.clock import FakeClock
from stockade.config.models import GatewayConfig
from stockade.identity.service import IdentityService
from stockade.observability.metrics import merge
from stockade.pipeline.stage import Services
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store
from stockade.testing import BackgroundLoop


async def probe(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The admin app on a real socket, with a WebSocket route added as a future endpoint would add one."""
    config = GatewayConfig.model_validate({"storage": "sqlite:///admin.db"})
    services = Services(clock=FakeClock(), config=config, base_dir=tmp_path)
    app = admin_app(AdminState(lambda: merge([]), lambda: True, services))
    app.router.routes.append(WebSocketRoute("/ws-probe", probe))
    bg = BackgroundLoop()
    server = AdminServer(app, "127.0.0.1", 0)
    bg.run(server.start())
    service = IdentityService(shared_store(services), shared_secrets(services).pepper, services.clock, "cli:test")
    tokens = {role: bg.run(service.create_admin_token(f"{role}-bot", role)).secret for role in ("viewer", "admin")}
    try:
        yield server.port, tokens
    finally:
        bg.run(server.stop())
        bg.run(services.close())
        bg.stop()


def handshake(port: int, path: str, host: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    """An RFC 6455 opening handshake over a plain socket: (status, headers, body bytes read with the head)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *([f"Authorization: Bearer {token}"] if token else []),
    ]
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("path", "host", "who", "status", "reason"),
    [
        ("/ws-probe", "evil.example", "admin", 421, "admin.bad_host"),  # DNS rebinding, with a token even
        ("/ws-probe", "127.0.0.1", None, 401, "admin.unauthenticated"),
        ("/ws-probe", "127.0.0.1", "stk_admin_nonsense", 401, "admin.unauthenticated"),
        ("/ws-probe", "127.0.0.1", "viewer", 403, "admin.forbidden"),  # no endpoint declares it: admin only
        ("/ws-probe", "127.0.0.1", "admin", 101, None),
        ("/consumers", "evil.example", None, 421, "admin.bad_host"),
        ("/consumers", "127.0.0.1", None, 401, "admin.unauthenticated"),
        ("/consumers", "127.0.0.1", "admin", 403, None),  # no WebSocket there: the router refuses it
    ],
    ids=["bad-host", "no-token", "bad-token", "viewer", "admin", "api-bad-host", "api-no-token", "api-admin"],
)
def test_admin_websocket_handshakes_are_guarded_before_accept(
    listener: tuple[int, dict[str, str]], path: str, host: str, who: str | None, status: int, reason: str | None
) -> None:
    """HostGuard and AdminAuth acted on `http` scopes only: a `websocket` scope passed both, with no token and any
    Host, so a page on a rebound name could open any WebSocket route the admin app gains."""
    port, tokens = listener
    got, headers, body = handshake(port, path, host, tokens.get(who or "", who))
    assert got == status
    if reason is not None:
        assert orjson.loads(body)["reason"] == reason
    if status == 401:
        assert headers["www-authenticate"] == 'Bearer realm="stockade-admin"'

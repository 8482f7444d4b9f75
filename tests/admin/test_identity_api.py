"""The admin API over a real socket: admin-token authentication, the role table, and the change log."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.admin.app import AdminState, admin_app
from stockade.admin.server import AdminServer
from stockade.clock import FakeClock
from stockade.config.models import GatewayConfig
from stockade.identity.service import IdentityService
from stockade.observability.metrics import merge
from stockade.pipeline.stage import Services
from stockade.security import keys
from stockade.security.secrets import shared_secrets
from stockade.storage import shared_store
from stockade.testing import BackgroundLoop


class Admin:
    def __init__(self, port: int, bg: BackgroundLoop, service: IdentityService) -> None:
        self.port, self.bg, self.service = port, bg, service
        self.tokens: dict[str, str] = {}

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = orjson.dumps(body) if body is not None else None
        conn.request(method, path, body=data, headers={**headers, "Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        doc = orjson.loads(raw) if raw and resp.getheader("content-type", "").endswith("json") else raw
        return resp.status, doc, resp.getheader("www-authenticate") or ""


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    config = GatewayConfig.model_validate({"storage": "sqlite:///admin.db"})
    services = Services(clock=FakeClock(), config=config, base_dir=tmp_path)
    bg = BackgroundLoop()
    server = AdminServer(admin_app(AdminState(lambda: merge([]), lambda: True, services)), "127.0.0.1", 0)
    bg.run(server.start())
    service = IdentityService(shared_store(services), shared_secrets(services).pepper, services.clock, "cli:test")
    api = Admin(server.port, bg, service)
    for role in ("viewer", "operator", "admin"):
        api.tokens[role] = bg.run(service.create_admin_token(f"{role}-bot", role)).secret
    bg.run(service.create_consumer("alice"))
    try:
        yield api
    finally:
        bg.run(server.stop())
        bg.run(services.close())
        bg.stop()


ROLE_TABLE = [
    ("GET", "/consumers", None, {"viewer": 200, "operator": 200, "admin": 200}),
    ("POST", "/consumers", {"name": "bob"}, {"viewer": 403, "operator": 201, "admin": 409}),
    ("GET", "/keys", None, {"viewer": 200, "operator": 200, "admin": 200}),
    ("POST", "/keys", {"consumer": "alice", "scopes": ["a"]}, {"viewer": 403, "operator": 201, "admin": 201}),
    ("GET", "/admin/changes", None, {"viewer": 200, "operator": 200, "admin": 200}),
    ("GET", "/admin/tokens", None, {"viewer": 403, "operator": 403, "admin": 200}),
    ("POST", "/admin/tokens", {"role": "viewer", "name": "x"}, {"viewer": 403, "operator": 403, "admin": 201}),
    ("DELETE", "/consumers/nobody", None, {"viewer": 403, "operator": 404, "admin": 404}),
    # HEAD runs the GET handler: it needs GET's role (it once fell back to viewer)
    ("HEAD", "/admin/tokens", None, {"viewer": 403, "operator": 403, "admin": 200}),
    ("HEAD", "/consumers", None, {"viewer": 200, "operator": 200, "admin": 200}),
    # a method the path does not declare needs the path's strictest role before it can learn anything
    ("PUT", "/admin/tokens", None, {"viewer": 403, "operator": 403, "admin": 405}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), ROLE_TABLE, ids=[f"{m} {p}" for m, p, _, _ in ROLE_TABLE]
)
def test_admin_role_table(admin: Admin, method: str, path: str, body: Any, expected: dict[str, int]) -> None:
    got = {role: admin.call(method, path, admin.tokens[role], body)[0] for role in ("viewer", "operator", "admin")}
    assert got == expected


@pytest.mark.parametrize(
    "token",
    [None, "stk_admin_nope", keys.generate("admin"), "Basic abc", "{operator-as-api-key}"],
    ids=["none", "malformed", "unknown", "not-bearer", "wrong-kind"],
)
def test_admin_unauthenticated_is_401_with_challenge(admin: Admin, token: str | None) -> None:
    if token == "{operator-as-api-key}":
        token = admin.bg.run(admin.service.create_key("alice")).secret
    status, doc, challenge = admin.call("GET", "/consumers", token)
    assert (status, doc["reason"], challenge) == (401, "admin.unauthenticated", 'Bearer realm="stockade-admin"')


def test_admin_revoked_and_expired_tokens_are_refused(admin: Admin) -> None:
    issued = admin.bg.run(admin.service.create_admin_token("short", "admin", ttl=60))
    assert admin.call("GET", "/consumers", issued.secret)[0] == 200
    admin.service.clock.advance(61)  # type: ignore[attr-defined]
    assert admin.call("GET", "/consumers", issued.secret)[0] == 401
    operator_id = next(t.id for t in admin.bg.run(admin.service.store.list_admin_tokens()) if t.name == "operator-bot")
    assert admin.call("POST", f"/admin/tokens/{operator_id}/revoke", admin.tokens["admin"])[0] == 204
    assert admin.call("GET", "/consumers", admin.tokens["operator"])[0] == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_admin_health_and_metrics_stay_open(admin: Admin, path: str) -> None:
    assert admin.call("GET", path)[0] == 200


def test_admin_key_lifecycle_and_change_log_names_the_token(admin: Admin) -> None:
    op = admin.tokens["operator"]
    status, created, _ = admin.call("POST", "/keys", op, {"consumer": "alice", "scopes": "a,b", "ttl": 3600})
    assert status == 201 and keys.parse(created["key"]) and created["scopes"] == ["a", "b"]
    key_id = created["id"]
    listed = admin.call("GET", "/keys?consumer=alice", admin.tokens["viewer"])[1]
    assert [k["id"] for k in listed["keys"]] == [key_id] and created["key"] not in orjson.dumps(listed).decode()
    status, rotated, _ = admin.call("POST", f"/keys/{key_id}/rotate", op, {"overlap": 60})
    assert status == 201 and rotated["key"] != created["key"]
    assert admin.call("POST", "/keys/revoke", op, {"key": rotated["key"]})[1]["status"] == "revoked"
    assert admin.call("POST", f"/keys/{key_id}/revoke", op)[1]["status"] == "revoked"
    changes = admin.call("GET", "/admin/changes?limit=4", admin.tokens["viewer"])[1]["changes"]
    assert [c["action"] for c in changes] == ["api_key.revoke", "api_key.revoke", "api_key.rotate", "api_key.create"]
    assert all(c["actor"].startswith("admin-token:adm_") and "(operator-bot)" in c["actor"] for c in changes)
    assert created["key"] not in orjson.dumps(changes).decode()


def test_admin_revoking_a_revoked_key_answers_it_again_and_logs_no_change(admin: Admin) -> None:
    op = admin.tokens["operator"]
    created = admin.call("POST", "/keys", op, {"consumer": "alice"})[1]
    status, first, _ = admin.call("POST", f"/keys/{created['id']}/revoke", op)
    assert status == 200 and first["status"] == "revoked"
    assert admin.call("POST", f"/keys/{created['id']}/revoke", op)[:2] == (200, first)  # as it was: same time
    assert admin.call("POST", "/keys/revoke", op, {"key": created["key"]})[:2] == (200, first)
    changes = admin.call("GET", "/admin/changes?limit=10", admin.tokens["viewer"])[1]["changes"]
    assert [c["action"] for c in changes if c["target"] == created["id"]] == ["api_key.revoke", "api_key.create"]


@pytest.mark.parametrize(
    ("given", "status"),
    [(" {key}", 200), ("{key}\n", 200), ("{key}x", 404), ('"{key}"', 404)],
    ids=["leading-space", "trailing-newline", "extra-char", "quoted"],
)
def test_admin_revoke_by_key_takes_whitespace_and_never_echoes_the_key(admin: Admin, given: str, status: int) -> None:
    """POST /keys/revoke {"key": " KEY"} was looked up as an id, and the 404's detail repeated the key."""
    op = admin.tokens["operator"]
    key = admin.call("POST", "/keys", op, {"consumer": "alice"})[1]["key"]
    got, doc, _ = admin.call("POST", "/keys/revoke", op, {"key": given.format(key=key)})
    assert got == status
    assert key not in orjson.dumps(doc).decode() and key[9:20] not in orjson.dumps(doc).decode()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/keys", {"scopes": ["a"]}, 400),
        ("POST", "/keys", {"consumer": "alice", "ttl": "soon"}, 400),
        ("POST", "/keys", {"consumer": "nobody"}, 404),
        ("POST", "/keys", [1, 2], 400),
        ("POST", "/consumers", {"name": "bad name"}, 400),
        ("POST", "/keys/revoke", {}, 400),
        ("GET", "/admin/changes?limit=x", None, 400),
    ],
    ids=["no-consumer", "ttl-not-number", "unknown-consumer", "not-object", "bad-name", "revoke-nothing", "bad-limit"],
)
def test_admin_bad_input_is_a_precise_4xx(admin: Admin, method: str, path: str, body: Any, status: int) -> None:
    got, doc, _ = admin.call(method, path, admin.tokens["operator"], body)
    assert got == status and doc["reason"].startswith("admin.")


@pytest.mark.parametrize("path", ["/consumers", "/clients", "/lockouts/clear"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_admin_bodies_are_limited_however_they_are_framed(admin: Admin, path: str, chunked: bool) -> None:
    """The 64 KiB limit was checked on Content-Length only: a chunked body of any size was read and stored."""
    body = orjson.dumps({"name": "x" * 70_000})
    conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=10)
    headers = {"Authorization": f"Bearer {admin.tokens['admin']}", "Content-Type": "application/json"}
    if chunked:
        conn.request("POST", path, body=iter([body[:30_000], body[30_000:]]), headers=headers, encode_chunked=True)
    else:
        conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    doc = orjson.loads(resp.read())
    conn.close()
    assert (resp.status, doc["reason"]) == (413, "admin.body_too_large")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/clients", {"name": "c", "consumer_id": "con_nope"}),
        ("POST", "/clients", {"name": "c", "consumer_id": 5}),
        ("POST", "/clients", {"name": "c", "auth_method": "private_key_jwt", "jwks": [1, 2]}),
        ("POST", "/clients", {"name": "c", "auth_method": "private_key_jwt", "jwks": "x"}),
        ("GET", "/admin/changes?before=99999999999999999999", None),
        ("GET", "/admin/changes?before=-1", None),
    ],
)
def test_admin_bad_input_is_400_not_500(admin: Admin, method: str, path: str, body: Any) -> None:
    status, _, _ = admin.call(method, path, admin.tokens["admin"], body)
    assert status == 400

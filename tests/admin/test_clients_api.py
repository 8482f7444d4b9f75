"""Admin API for OAuth2 clients over a real socket: roles, the secret shown once, revocation, the change log."""

from __future__ import annotations

import http.client

import pytest

from tests.admin.test_identity_api import Admin, admin  # noqa: F401 - the admin fixture and its client

CLIENT_ROLES = [
    ("GET", "/clients", None, {"viewer": 200, "operator": 200, "admin": 200}),
    ("POST", "/clients", {"name": "svc", "scopes": ["a"]}, {"viewer": 403, "operator": 201, "admin": 201}),
    ("POST", "/clients/cl_nobody/revoke", None, {"viewer": 403, "operator": 404, "admin": 404}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), CLIENT_ROLES, ids=[f"{m} {p}" for m, p, _, _ in CLIENT_ROLES]
)
def test_clients_api_roles(admin: Admin, method: str, path: str, body: object, expected: dict[str, int]) -> None:  # noqa: F811
    got = {role: admin.call(method, path, admin.tokens[role], body)[0] for role in ("viewer", "operator", "admin")}
    assert got == expected


def test_clients_api_create_list_revoke(admin: Admin) -> None:  # noqa: F811
    token = admin.tokens["operator"]
    status, created, _ = admin.call("POST", "/clients", token, {"name": "svc", "scopes": ["books:read"]})
    assert status == 201 and created["client_secret"].startswith("stk_secret_")
    status, listing, _ = admin.call("GET", "/clients", token)
    assert status == 200 and [c["client_id"] for c in listing["clients"]] == [created["client_id"]]
    assert "client_secret" not in listing["clients"][0] and created["client_secret"] not in str(listing)
    status, revoked, _ = admin.call("POST", f"/clients/{created['client_id']}/revoke", token)
    assert status == 200 and revoked["disabled_at"] is not None
    status, changes, _ = admin.call("GET", "/admin/changes", token)
    actions = [c["action"] for c in changes["changes"]] if isinstance(changes, dict) else []
    assert status == 200 and any(a.startswith("client.") for a in actions), changes
    assert created["client_secret"] not in str(changes)


@pytest.mark.parametrize(
    "body",
    [
        {"scopes": ["a"]},
        {"name": "x", "scopes": "a"},
        {"name": "x", "auth_method": "none"},
        {"name": "x", "scopes": ['a"']},
    ],
    ids=["no-name", "scopes-string", "bad-method", "bad-scope"],
)
def test_clients_api_rejects_bad_input(admin: Admin, body: object) -> None:  # noqa: F811
    assert admin.call("POST", "/clients", admin.tokens["operator"], body)[0] == 400


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": ' + b"[" * 20000 + b"]" * 20000 + b"}",  # deep nesting: a RecursionError and a 500 with a traceback
        b'{"name": "x", "scopes": [], "weight": NaN}',  # the standard parser took NaN
        b'{"name": "x", "auth_method": "client_secret_basic", "jwks": {"keys": []}}',  # a JWK Set nobody would use
    ],
    ids=["deep", "nan", "jwks-on-a-secret-client"],
)
def test_clients_api_parses_json_as_every_admin_endpoint(admin: Admin, raw: bytes) -> None:  # noqa: F811
    conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=10)
    headers = {"Authorization": f"Bearer {admin.tokens['operator']}", "Content-Type": "application/json"}
    conn.request("POST", "/clients", body=raw, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 400 and b"Traceback" not in body

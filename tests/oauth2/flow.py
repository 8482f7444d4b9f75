"""Helpers for end-to-end token endpoint tests: a gateway with `oauth2_server`, a store in a temp dir, the CLI."""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import orjson
from click.testing import CliRunner

from stockade.cli import cli
from stockade.errors import StorageError
from stockade.security import jose
from stockade.testing import BackgroundLoop, TestGateway, TestUpstream
from tests.security.issuer import TestIssuer

ISSUER = "http://127.0.0.1"
CONFIG = """
storage: sqlite:///stockade.db
oauth2_server:
  issuer: "http://127.0.0.1"
  audiences: [api]
  token_ttl: 600
stages:
  - use: jwt
    config:
      issuers:
        - {issuer: "http://127.0.0.1", gateway: true, audiences: [api]}
  - use: scopes
    config: {require: ["books:read"]}
routes:
  - id: books
    match: {path: /books}
    upstream: "{upstream}"
"""


def write_config(tmp: Path, upstream: str, text: str = CONFIG) -> Path:
    path = tmp / "stockade.yaml"
    path.write_text(text.replace("{upstream}", upstream))
    return path


@contextlib.contextmanager
def oauth_gateway(
    tmp: Path, text: str = CONFIG, log_path: Path | None = None
) -> Iterator[tuple[TestGateway, TestUpstream, Path]]:
    """A gateway with the token endpoint in front of a test upstream, its config written in `tmp`, both on one
    background loop: (gateway, upstream, config path)."""
    bg = BackgroundLoop()
    try:
        with TestUpstream(bg) as up:
            config = write_config(tmp, up.url, text)
            with TestGateway(config.read_text(), loop=bg, base_dir=tmp, log_path=log_path) as gw:
                yield gw, up, config
    finally:
        bg.stop()


def create_client(config: Path, *args: str) -> tuple[str, str | None]:
    result = CliRunner().invoke(cli, ["--config", str(config), "clients", "create", *args])
    assert result.exit_code == 0, result.output
    client_id = re.search(r"^client_id: (\S+)$", result.stdout, re.M)
    secret = re.search(r"^client_secret: (\S+)$", result.stdout, re.M)
    assert client_id is not None
    return client_id.group(1), secret.group(1) if secret else None


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def post_form(
    gw: TestGateway, path: str, form: dict[str, str] | str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, object]]:
    body = (form if isinstance(form, str) else urlencode(form)).encode()
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    status, resp_headers, raw = gw.request("POST", path, headers=hdrs, body=body)
    return status, resp_headers, orjson.loads(raw) if raw else {}


def get_token(gw: TestGateway, client_id: str, secret: str, **form: str) -> str:
    status, _, doc = post_form(
        gw, "/oauth2/token", {"grant_type": "client_credentials", **form}, basic(client_id, secret)
    )
    assert status == 200, doc
    token = doc["access_token"]
    assert isinstance(token, str)
    return token


def call_books(gw: TestGateway, token: str) -> tuple[int, dict[str, str], bytes]:
    return gw.request("GET", "/books", headers={"Authorization": f"Bearer {token}"})


def assertion_client(config: Path, tmp: Path) -> tuple[str, TestIssuer]:
    """A private_key_jwt client created with the CLI, and the key set whose `client-key` signs its assertions."""
    keys = TestIssuer().add_ec("client-key")
    jwks_file = tmp / "client-jwks.json"
    jwks_file.write_text(orjson.dumps(keys.jwks()).decode())
    client_id, secret = create_client(
        config,
        "--name",
        "signer",
        "--scopes",
        "books:read",
        "--auth-method",
        "private_key_jwt",
        "--jwks",
        str(jwks_file),
    )
    assert secret is None
    return client_id, keys


def client_assertion(keys: TestIssuer, client_id: str, now: float, **over: object) -> str:
    """An RFC 7523 client assertion for the token endpoint, with a fresh jti; `None` in `over` drops a claim."""
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER + "/oauth2/token", "iat": now, "exp": now + 60}
    claims |= {"jti": secrets.token_hex(8), **over}
    key, _ = keys.keys["client-key"]
    return jose.sign({k: v for k, v in claims.items() if v is not None}, key, "ES256", kid="client-key")


def assertion_request(gw: TestGateway, assertion: str) -> tuple[int, dict[str, object]]:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    status, _, doc = post_form(gw, "/oauth2/token", form)
    return status, doc


@contextlib.contextmanager
def store_down(gw: TestGateway, calls: tuple[str, ...]) -> Iterator[None]:
    """The gateway's store fails these calls, as a database that went away does."""
    store = gw.services.shared["store"]

    async def unreachable(*_args: object, **_kw: object) -> None:
        raise StorageError("postgresql: connection refused")

    for name in calls:
        setattr(store, name, unreachable)
    try:
        yield
    finally:
        for name in calls:
            delattr(store, name)

"""The `oauth2_server:` section: expanded into four routes that skip global authn/authz; gateway issuers checked."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.oauth2.clients import new_client
from tests.security.issuer import TestIssuer

BASE = """
oauth2_server: {issuer: "https://gw.example", audiences: [api]}
stages:
  - use: ip_filter
    config: {allow: ["127.0.0.0/8"]}
  - use: jwt
    config: {issuers: [{issuer: "https://gw.example", gateway: true, audiences: [api]}]}
  - use: scopes
    config: {require: [a]}
routes:
  - {id: api, match: {path: /api}, upstream: "http://127.0.0.1:9"}
"""


def test_oauth2_server_expands_into_routes_without_global_auth() -> None:
    loaded = load_config_text(BASE, env={})
    routes = {r.id: r for r in loaded.config.routes}
    assert set(routes) == {"api", "oauth2.token", "oauth2.revoke", "oauth2.jwks", "oauth2.metadata"}
    assert routes["oauth2.token"].match.methods == ["POST"]
    token_stages = [p.entry.use for p in loaded.route_stages["oauth2.token"]]
    assert token_stages == ["ip_filter", "anonymous"]  # pre-auth stages still apply; jwt and scopes do not
    assert [p.entry.use for p in loaded.route_stages["api"]] == ["ip_filter", "jwt", "scopes"]
    assert loaded.route_handlers["oauth2.jwks"].cls.id == "oauth2_jwks"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("oauth2_server: {issuer: 'http://gw.example', audiences: [a]}\n", "must use https"),
        ("oauth2_server: {issuer: 'https://gw.example', audiences: []}\n", "at least 1"),
        ("oauth2_server: {issuer: 'https://gw.example', audiences: [a], algorithm: HS256}\n", "Input should be"),
        ("oauth2_server: {issuer: 'https://gw.example', audiences: [a], token_ttl: 10}\n", "greater than or equal"),
    ],
    ids=["http-issuer", "no-audience", "hs256", "ttl"],
)
def test_oauth2_server_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_text(text, env={})


def test_gateway_issuer_without_oauth2_server_is_a_config_error() -> None:
    from stockade.pipeline.stage import Services
    from stockade.runtime import build_runtime
    from stockade.testing import FakeClock

    text = BASE.replace('oauth2_server: {issuer: "https://gw.example", audiences: [api]}\n', "")
    loaded = load_config_text(text, env={})
    with pytest.raises(ConfigError, match="no `oauth2_server` with that issuer"):
        build_runtime(loaded, Services(clock=FakeClock()))


@pytest.mark.parametrize(
    ("extra", "accepted"),
    [
        (None, True),
        ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}, False),  # a private key beside a public one
        ({"kty": "oct", "k": "c2VjcmV0"}, False),  # a symmetric key
    ],
    ids=["public-only", "with-private-key", "with-oct-key"],
)
def test_a_client_jwks_with_secret_key_material_is_refused(extra: dict[str, str] | None, accepted: bool) -> None:
    """The set is stored as given: parse_jwks only skipped a private key when another key was usable, so the
    private half reached the store in clear, for anyone who reads it to forge the client's assertions."""
    public = TestIssuer().add_ec("ec-1").jwks()
    doc = {"keys": [*public["keys"], *([extra] if extra else [])]}
    args: dict[str, Any] = {"name": "c", "scopes": ["a"], "auth_method": "private_key_jwt", "pepper": b"p" * 32}
    args |= {"now": 1.0, "jwks": doc}
    if accepted:
        client, secret = new_client(**args)
        assert secret is None and client.jwks == doc
    else:
        with pytest.raises(ValueError, match="public keys only"):
            new_client(**args)

"""The `oauth2_server:` section: expanded into four routes that skip global authn/authz; gateway issuers checked."""

from __future__ import annotations

import pytest

from stockade.config.loader import load_config_text
from stockade.errors import ConfigError

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

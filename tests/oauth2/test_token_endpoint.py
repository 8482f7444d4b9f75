"""The token endpoint end to end: CLI-created clients, every client authentication method, a protected route,
revocation through `jti`, client revocation, RFC 6749 §5.2 errors, JWKS and RFC 8414 metadata."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.oauth2.clients import ASSERTION_TYPE
from stockade.security import jose
from stockade.testing import TestGateway, TestUpstream
from tests.oauth2.flow import (
    ISSUER,
    assertion_client,
    assertion_request,
    basic,
    call_books,
    client_assertion,
    create_client,
    get_token,
    oauth_gateway,
    post_form,
    store_down,
)
from tests.security.issuer import TestIssuer


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestGateway, TestUpstream, Path]]:
    with oauth_gateway(tmp_path) as (gw, up, config):
        yield gw, up, config


def test_token_client_secret_basic_calls_a_protected_route(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, up, config = env
    client_id, secret = create_client(config, "--name", "ci", "--scopes", "books:read,books:write")
    assert secret is not None and secret.startswith("stk_secret_")
    status, headers, doc = post_form(
        gw, "/oauth2/token", {"grant_type": "client_credentials"}, basic(client_id, secret)
    )
    assert status == 200, doc
    assert headers["cache-control"] == "no-store"
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 600 and doc["scope"] == "books:read books:write"
    parsed = jose.parse(str(doc["access_token"]))
    assert parsed.header["typ"] == "at+jwt" and parsed.header["alg"] == "ES256"
    assert parsed.claims["iss"] == ISSUER and parsed.claims["sub"] == client_id == parsed.claims["client_id"]
    assert parsed.claims["aud"] == "api" and parsed.claims["exp"] - parsed.claims["iat"] == 600
    status, _, _ = call_books(gw, str(doc["access_token"]))
    assert status == 200
    assert up.received[-1].header("x-stockade-principal") == client_id
    assert up.received[-1].header("authorization") is not None


def test_token_client_secret_post_and_scope_subset(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, _, config = env
    client_id, secret = create_client(config, "--name", "poster", "--scopes", "books:read,books:write")
    assert secret is not None
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": "books:read"}
    status, _, doc = post_form(gw, "/oauth2/token", form)
    assert status == 200 and doc["scope"] == "books:read"
    assert call_books(gw, str(doc["access_token"]))[0] == 200


def test_token_private_key_jwt_and_assertion_replay(
    env: tuple[TestGateway, TestUpstream, Path], tmp_path: Path
) -> None:
    gw, _, config = env
    client_id, keys = assertion_client(config, tmp_path)
    now = gw.clock.time()
    first = client_assertion(keys, client_id, now)
    status, doc = assertion_request(gw, first)
    assert status == 200, doc
    assert call_books(gw, str(doc["access_token"]))[0] == 200
    assert assertion_request(gw, first) == (
        401,
        {"error": "invalid_client", "error_description": "client authentication failed"},
    )
    for bad in (
        client_assertion(keys, client_id, now, aud="https://elsewhere.example"),
        client_assertion(keys, client_id, now, exp=now + 3600),
        client_assertion(keys, client_id, now, jti=None),
        client_assertion(keys, client_id, now, iss="someone-else"),
        client_assertion(keys, client_id, now, exp=now - 120),
    ):
        assert assertion_request(gw, bad)[0] == 401
    other = TestIssuer().add_ec("client-key")  # same kid, a key the client never registered
    forged = jose.sign(
        {"iss": client_id, "sub": client_id, "aud": ISSUER, "exp": now + 60, "jti": "x"},
        other.keys["client-key"][0],
        "ES256",
        kid="client-key",
    )
    assert assertion_request(gw, forged)[0] == 401


def test_assertion_replayed_on_another_gateway_is_refused(
    env: tuple[TestGateway, TestUpstream, Path], tmp_path: Path
) -> None:
    """Two gateways sharing the store (as workers or nodes do): an assertion used on one fails on the other."""
    gw, _, config = env
    client_id, keys = assertion_client(config, tmp_path)
    with TestGateway(config.read_text(), loop=gw.bg, base_dir=tmp_path, clock=gw.clock) as second:
        assert second.services is not gw.services  # its own store instance and connection
        first = client_assertion(keys, client_id, gw.clock.time())
        assert assertion_request(gw, first)[0] == 200
        assert assertion_request(second, first)[0] == 401
        fresh = client_assertion(keys, client_id, gw.clock.time())
        assert assertion_request(second, fresh)[0] == 200
        assert assertion_request(gw, fresh)[0] == 401


def test_token_revocation_is_honoured_through_jti(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, _, config = env
    client_id, secret = create_client(config, "--name", "rev", "--scopes", "books:read")
    assert secret is not None
    token = get_token(gw, client_id, secret)
    keep = get_token(gw, client_id, secret)
    assert call_books(gw, token)[0] == 200  # cached as verified
    other_id, other_secret = create_client(config, "--name", "other", "--scopes", "books:read")
    assert other_secret is not None
    status, _, _ = post_form(gw, "/oauth2/revoke", {"token": token}, basic(other_id, other_secret))
    assert status == 200 and call_books(gw, token)[0] == 200  # another client cannot revoke it
    status, headers, _ = post_form(
        gw, "/oauth2/revoke", {"token": token, "token_type_hint": "access_token"}, basic(client_id, secret)
    )
    assert status == 200 and headers["cache-control"] == "no-store"
    status, headers, body = call_books(gw, token)
    assert status == 401
    assert orjson.loads(body)["reason"] == "auth.invalid_token"
    assert headers["www-authenticate"] == 'Bearer realm="stockade", error="invalid_token"'
    assert call_books(gw, keep)[0] == 200
    assert post_form(gw, "/oauth2/revoke", {"token": "garbage"}, basic(client_id, secret))[0] == 200


def test_token_revoking_a_client_with_the_cli_ends_its_tokens(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, _, config = env
    client_id, secret = create_client(config, "--name", "gone", "--scopes", "books:read")
    assert secret is not None
    token = get_token(gw, client_id, secret)
    assert call_books(gw, token)[0] == 200
    result = CliRunner().invoke(cli, ["clients", "revoke", client_id, "--config", str(config)])
    assert result.exit_code == 0, result.output
    from stockade.identity.watch import shared_watcher
    from stockade.oauth2.revocation import revoked_jtis

    watcher = shared_watcher(gw.services)
    gw.bg.run(watcher.poll())  # what the watcher task does every 0.5 s, run now instead of waiting for it
    gw.bg.run(revoked_jtis(gw.services).settle())  # and the client re-read that the change triggered
    assert call_books(gw, token)[0] == 401
    status, _, doc = post_form(gw, "/oauth2/token", {"grant_type": "client_credentials"}, basic(client_id, secret))
    assert status == 401 and doc["error"] == "invalid_client"
    listing = CliRunner().invoke(cli, ["--config", str(config), "clients", "list"])
    assert client_id in listing.stdout and "revoked" in listing.stdout and secret not in listing.stdout


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "password"}, "basic", 400, "unsupported_grant_type"),
        ({}, "basic", 400, "invalid_request"),  # RFC 6749 5.2: a required parameter is missing
        ({"grant_type": ""}, "basic", 400, "invalid_request"),
        ({"grant_type": "client_credentials", "scope": "admin"}, "basic", 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": "books:read  admin"}, "basic", 400, "invalid_scope"),
        ({"grant_type": "client_credentials"}, "wrong-secret", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "unknown-client", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 400, "invalid_request"),
        ("grant_type=client_credentials&grant_type=client_credentials", "basic", 400, "invalid_request"),
        ({"grant_type": "client_credentials", "client_secret": "x"}, "basic", 400, "invalid_request"),
        # a secret outside latin-1 can be no client's: 401, never a 500 from hashing it
        ({"grant_type": "client_credentials"}, "euro-secret-basic", 401, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_id": "{id}", "client_secret": "\u20ac"},
            None,
            401,
            "invalid_client",
        ),
        # an assertion's (unverified) subject with a lone surrogate never reaches the store
        (
            {
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": "{surrogate}",
            },
            None,
            401,
            "invalid_client",
        ),
    ],
    ids=[
        "password-grant",
        "no-grant",
        "empty-grant",
        "scope-beyond",
        "scope-double-space",
        "wrong-secret",
        "unknown-client",
        "no-client-auth",
        "duplicate-param",
        "two-auth-methods",
        "euro-secret-basic",
        "euro-secret-post",
        "assertion-subject-surrogate",
    ],
)
def test_token_errors_follow_rfc6749(
    env: tuple[TestGateway, TestUpstream, Path], form: dict[str, str] | str, auth: str | None, status: int, error: str
) -> None:
    gw, _, config = env
    client_id, secret = create_client(config, "--name", "e", "--scopes", "books:read")
    assert secret is not None
    headers = {
        "basic": basic(client_id, secret),
        "wrong-secret": basic(client_id, secret + "x"),
        "unknown-client": basic("cl_nobody", secret),
        "euro-secret-basic": basic(client_id, "%E2%82%AC"),
        None: {},
    }[auth]
    if isinstance(form, dict):
        surrogate = ".".join(
            base64.urlsafe_b64encode(part).rstrip(b"=").decode()
            for part in (b'{"alg":"ES256"}', b'{"sub":"\\ud800","iss":"x"}', b"sig")
        )
        form = {k: v.replace("{id}", client_id).replace("{surrogate}", surrogate) for k, v in form.items()}
    got_status, got_headers, doc = post_form(gw, "/oauth2/token", form, headers)
    assert (got_status, doc["error"]) == (status, error)
    assert got_headers["cache-control"] == "no-store"
    assert secret not in json.dumps(doc)
    if status == 401:  # Basic is the only HTTP scheme a client authenticates with here; Bearer is not one
        assert got_headers["www-authenticate"] == 'Basic realm="stockade", error="invalid_client"'


def test_token_endpoint_requires_a_form_body(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, _, config = env
    client_id, secret = create_client(config, "--name", "j", "--scopes", "books:read")
    assert secret is not None
    headers = {"Content-Type": "application/json", **basic(client_id, secret)}
    status, _, body = gw.request("POST", "/oauth2/token", headers=headers, body=b'{"grant_type":"client_credentials"}')
    assert status == 400 and orjson.loads(body)["error"] == "invalid_request"
    assert gw.request("GET", "/oauth2/token")[0] == 405


@pytest.mark.parametrize("path", ["/oauth2/token", "/oauth2/revoke"])
@pytest.mark.parametrize(("size", "status"), [(16 * 1024, 400), (16 * 1024 + 1, 413), (10 * 1024 * 1024, 413)])
def test_token_and_revoke_bodies_are_capped_before_they_are_read(
    env: tuple[TestGateway, TestUpstream, Path], path: str, size: int, status: int
) -> None:
    """Decoding a 10 MiB form of `%41` escapes held the worker's event loop for about two seconds, before any client
    authentication: a form beyond 16 KiB is now refused unread."""
    gw, _, _ = env
    got, _, body = gw.request(
        "POST",
        path,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"a=" + b"%41" * ((size - 2) // 3) + b"A" * ((size - 2) % 3),
    )
    assert got == status
    if status == 413:
        assert orjson.loads(body)["reason"] == "request.body_too_large"


def test_token_insufficient_scope_is_403_with_challenge(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, _, config = env
    client_id, secret = create_client(config, "--name", "w", "--scopes", "books:write")
    assert secret is not None
    status, headers, body = call_books(gw, get_token(gw, client_id, secret))
    assert status == 403
    assert headers["www-authenticate"] == 'Bearer realm="stockade", error="insufficient_scope", scope="books:read"'
    assert orjson.loads(body)["reason"] == "auth.insufficient_scope"


def test_token_jwks_and_metadata_are_published(env: tuple[TestGateway, TestUpstream, Path]) -> None:
    gw, _, config = env
    status, headers, body = gw.request("GET", "/.well-known/jwks.json")
    assert status == 200 and headers["content-type"] == "application/jwk-set+json"
    jwks = orjson.loads(body)
    assert len(jwks["keys"]) == 1 and jwks["keys"][0]["kty"] == "EC" and "d" not in jwks["keys"][0]
    client_id, secret = create_client(config, "--name", "k", "--scopes", "books:read")
    assert secret is not None
    assert jose.parse(get_token(gw, client_id, secret)).header["kid"] == jwks["keys"][0]["kid"]
    status, _, body = gw.request("GET", "/.well-known/oauth-authorization-server")
    meta = orjson.loads(body)
    assert status == 200 and meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == ISSUER + "/oauth2/token" and meta["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]


@pytest.mark.parametrize("how", ["basic", "form"])
def test_a_client_that_swaps_id_and_secret_does_not_put_the_secret_in_the_log(tmp_path: Path, how: str) -> None:
    log_path = tmp_path / "decisions.log"
    with oauth_gateway(tmp_path, log_path=log_path) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "swapped", "--scopes", "books:read")
        assert secret is not None
        form = {"grant_type": "client_credentials"}
        if how == "basic":
            status, _, doc = post_form(gw, "/oauth2/token", form, basic(secret, client_id))
        else:
            form |= {"client_id": secret, "client_secret": client_id}
            status, _, doc = post_form(gw, "/oauth2/token", form, {})
        assert (status, doc["error"]) == (401, "invalid_client")
        gw.flush_log()
    logged = log_path.read_text()
    (line,) = [json.loads(raw) for raw in logged.splitlines() if '"/oauth2/token"' in raw]
    assert line["status"] == 401 and "characters, fingerprint" in line["detail"]  # the refusal, id not shown
    assert secret not in logged
    assert secret[:24] not in logged


@pytest.mark.parametrize("name", ["two\nlines", "esc\x1b[31m", "", "x" * 129])
def test_client_names_are_printable_lines(name: str) -> None:
    from stockade.oauth2.clients import new_client

    with pytest.raises(ValueError, match="printable"):
        new_client(name=name, scopes=["a"], auth_method="client_secret_basic", pepper=b"p" * 32, now=0.0)


@pytest.mark.parametrize(
    ("who", "why"),
    [("wrong-secret", "wrong secret"), ("unknown", "unknown or disabled"), ("assertion-client", "not a secret")],
)
def test_the_decision_log_says_why_a_client_was_refused(tmp_path: Path, who: str, why: str) -> None:
    """The client hears only invalid_client (no enumeration oracle); the operator's log says which it was."""
    log_path = tmp_path / "decisions.log"
    with oauth_gateway(tmp_path, log_path=log_path) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "c", "--scopes", "books:read")
        assert secret is not None
        if who == "assertion-client":
            client_id, _keys = assertion_client(config, tmp_path)
        elif who == "unknown":
            client_id = "cl_nobody"
        else:
            secret += "x"
        status, _, doc = post_form(gw, "/oauth2/token", {"grant_type": "client_credentials"}, basic(client_id, secret))
        assert (status, doc) == (401, {"error": "invalid_client", "error_description": "client authentication failed"})
        gw.flush_log()
    (line,) = [json.loads(raw) for raw in log_path.read_text().splitlines() if '"/oauth2/token"' in raw]
    assert line["detail"].endswith(why)


@pytest.mark.parametrize(
    ("path", "auth", "calls"),
    [
        ("/oauth2/token", "basic", ("get_client",)),
        ("/oauth2/token", "post", ("get_client",)),
        ("/oauth2/token", "post-unknown", ("get_client",)),
        ("/oauth2/token", "assertion", ("use_once",)),
        ("/oauth2/token", "basic", ("list_signing_keys",)),  # the first token needs the first signing key
        ("/oauth2/revoke", "basic", ("get_client",)),
        ("/oauth2/revoke", "basic", ("revoke_token",)),
    ],
    ids=[
        "token-basic",
        "token-post",
        "token-unknown-client",
        "token-assertion",
        "token-first-key",
        "revoke-client",
        "revoke-write",
    ],
)
def test_a_store_outage_is_temporarily_unavailable_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str, auth: str, calls: tuple[str, ...]
) -> None:
    """A store failure escaped the token endpoint: 500 handler.error and two tracebacks in the log for every request,
    unauthenticated ones too. RFC 6749 has `temporarily_unavailable` for it; the log says it once per outage."""
    with oauth_gateway(tmp_path) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "c", "--scopes", "books:read")
        assert secret is not None
        signer_id, keys = assertion_client(config, tmp_path)
        token = get_token(gw, client_id, secret) if path == "/oauth2/revoke" else ""

        def attempt() -> tuple[int, dict[str, str], dict[str, object]]:
            form = {"grant_type": "client_credentials"} if path == "/oauth2/token" else {"token": token}
            if auth == "basic":
                return post_form(gw, path, form, basic(client_id, secret))
            if auth == "assertion":
                assertion = client_assertion(keys, signer_id, gw.clock.time())
                return post_form(
                    gw, path, {**form, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
                )
            who = client_id if auth == "post" else "cl_nobody"
            return post_form(gw, path, {**form, "client_id": who, "client_secret": secret})

        with caplog.at_level(logging.INFO, logger="stockade"), store_down(gw, calls):
            answers = [attempt() for _ in range(5)]
        assert [(status, doc.get("error")) for status, _, doc in answers] == [(503, "temporarily_unavailable")] * 5
        assert all(headers["cache-control"] == "no-store" for _, headers, _ in answers)
        assert not [r for r in caplog.records if r.exc_info]  # no traceback for an outage
        down = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(down) == 1 and "connection refused" in down[0].getMessage()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="stockade"):
            status = attempt()[0]
        # Only a request that succeeds says the store is back: refused ones in between cannot make the log flap.
        assert status == (401 if auth == "post-unknown" else 200)
        back = sum("store answers again" in r.getMessage() for r in caplog.records)
        assert back == (0 if auth == "post-unknown" else 1)


def test_the_jwks_endpoint_during_a_store_outage_is_503_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before its first signing key a worker reads the store to publish the JWKS: unauthenticated GETs during an
    outage were 500 handler.error with a traceback each."""
    with oauth_gateway(tmp_path) as (gw, _up, _config):
        with caplog.at_level(logging.INFO, logger="stockade"), store_down(gw, ("list_signing_keys",)):
            answers = [gw.request("GET", "/.well-known/jwks.json") for _ in range(3)]
        assert [(status, orjson.loads(body)["reason"]) for status, _, body in answers] == [
            (503, "auth.unavailable")
        ] * 3
        assert not [r for r in caplog.records if r.exc_info]
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        status, _, body = gw.request("GET", "/.well-known/jwks.json")
        assert status == 200 and len(orjson.loads(body)["keys"]) == 1

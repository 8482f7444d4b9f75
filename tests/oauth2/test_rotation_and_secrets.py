"""Signing key rotation with overlap (FakeClock), and no issued secret or token at rest or in the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from stockade.oauth2.signing import shared_signing_keys
from stockade.security import jose
from stockade.testing import TestGateway
from tests.oauth2.flow import CONFIG, basic, call_books, create_client, get_token, oauth_gateway, post_form

ROTATING = CONFIG.replace("  token_ttl: 600\n", "  token_ttl: 600\n  rotate_every: 3600\n  publish_ahead: 600\n")


def jwks_kids(gw: TestGateway) -> list[str]:
    status, _, body = gw.request("GET", "/.well-known/jwks.json")
    assert status == 200
    return [k["kid"] for k in orjson.loads(body)["keys"]]


def test_signing_keys_rotate_with_overlap(tmp_path: Path) -> None:
    with oauth_gateway(tmp_path, ROTATING) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "rot", "--scopes", "books:read")
        assert secret is not None
        signing = shared_signing_keys(gw.services)
        server_cfg = gw.services.config.oauth2_server  # type: ignore[union-attr]
        assert server_cfg is not None

        def maintain() -> None:
            gw.bg.run(signing.maintain(server_cfg))

        first = get_token(gw, client_id, secret)
        kid_a = jose.parse(first).header["kid"]
        assert jwks_kids(gw) == [kid_a]

        gw.advance(3000)  # within publish_ahead (600 s) of the active key's end of life
        maintain()
        kids = jwks_kids(gw)
        assert len(kids) == 2 and kids[0] == kid_a  # the next key is published before it signs
        kid_b = kids[1]
        late_a = get_token(gw, client_id, secret)
        assert jose.parse(late_a).header["kid"] == kid_a

        gw.advance(600)  # the active key is an hour old and the next one was published 600 s ago
        maintain()
        fresh = get_token(gw, client_id, secret)
        assert jose.parse(fresh).header["kid"] == kid_b
        assert jwks_kids(gw) == [kid_a, kid_b]  # the retired key stays while its tokens live
        assert call_books(gw, late_a)[0] == 200
        assert call_books(gw, fresh)[0] == 200

        gw.advance(600 + 61)  # past the retired key's not_after (token_ttl + max leeway)
        maintain()
        assert jwks_kids(gw) == [kid_b]
        assert call_books(gw, late_a)[0] == 401  # its key is gone (and it has expired)
        newest = get_token(gw, client_id, secret)
        assert jose.parse(newest).header["kid"] == kid_b and call_books(gw, newest)[0] == 200


def test_no_issued_secret_or_token_in_the_database_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    decisions = tmp_path / "decisions.log"
    with oauth_gateway(tmp_path, log_path=decisions) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "scan", "--scopes", "books:read")
        assert secret is not None
        token = get_token(gw, client_id, secret)
        posted = post_form(
            gw,
            "/oauth2/token",
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        )[2]["access_token"]
        assert isinstance(posted, str)
        assert call_books(gw, token)[0] == 200
        assert (
            post_form(gw, "/oauth2/token", {"grant_type": "client_credentials"}, basic(client_id, secret + "wrong"))[0]
            == 401
        )
        assert call_books(gw, token[:-4] + "AAAA")[0] == 401
        assert post_form(gw, "/oauth2/revoke", {"token": token}, basic(client_id, secret))[0] == 200
        assert call_books(gw, token)[0] == 401
        signing = shared_signing_keys(gw.services)
        signer = signing.signer()
        assert signer is not None
        from cryptography.hazmat.primitives import serialization

        private_der = signer[2].private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        gw.flush_log()
    at_rest = b"".join(p.read_bytes() for p in tmp_path.glob("stockade.db*"))
    logs = decisions.read_bytes() + caplog.text.encode()
    assert b"decision" in decisions.read_bytes() or decisions.stat().st_size > 0
    assert client_id.encode() in at_rest  # the scan does read the real data
    forbidden = {
        "client secret": secret.encode(),
        "secret body": secret.split("_")[-1].encode(),
        "wrong secret": (secret + "wrong").encode(),
        "token": token.encode(),
        "posted token": posted.encode(),
        "token signature": token.rsplit(".", 1)[1].encode(),
        "token payload": token.split(".")[1].encode(),
        "private key": private_der[-32:],
    }
    for what, needle in forbidden.items():
        assert needle not in at_rest, f"{what} found in the SQLite file"
        assert needle not in logs, f"{what} found in the logs"

"""Signing key rotation with overlap (FakeClock), and no issued secret or token at rest or in the logs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest

from stockade.clock import FakeClock
from stockade.config.oauth2 import OAuth2Server
from stockade.identity.watch import shared_watcher
from stockade.oauth2.signing import SigningKeys, shared_signing_keys
from stockade.security import jose
from stockade.security.crypto import Keyring
from stockade.storage.memory import MemoryStore
from stockade.storage.records import SigningKey
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


ISSUER_ONLY = """
storage: sqlite:///stockade.db
oauth2_server: {issuer: "http://127.0.0.1", audiences: [api]}
routes:
  - id: books
    match: {path: /books}
    upstream: "{upstream}"
    stages: [{use: anonymous}]
"""


@pytest.mark.parametrize("first", ["token", "jwks"])
def test_a_gateway_that_only_issues_tokens_runs_rotation(tmp_path: Path, first: str) -> None:
    """Rotation runs on the change-watcher task, which only a jwt or api_key stage started: a gateway issuing
    tokens for verifiers elsewhere signed with its first key forever and never followed other nodes' rotations."""
    with oauth_gateway(tmp_path, ISSUER_ONLY) as (gw, _up, config):
        watcher = shared_watcher(gw.services)
        assert not watcher.running
        if first == "token":
            client_id, secret = create_client(config, "--name", "c", "--scopes", "books:read")
            assert secret is not None
            get_token(gw, client_id, secret)
        else:
            assert jwks_kids(gw)
        assert watcher.running


class _SlowListing(MemoryStore):
    async def list_signing_keys(self) -> list[SigningKey]:
        found = await super().list_signing_keys()
        await asyncio.sleep(0)  # let the other worker read the same (empty) list
        return found


def test_two_workers_creating_the_first_key_at_once_share_one() -> None:
    """Both saw no active key and both added one; the store refused the second, and its ConflictError was a 500."""
    cfg = OAuth2Server(issuer="https://gw.example", audiences=("api",))

    async def go() -> tuple[str, str, int]:
        store = _SlowListing()
        ring = Keyring({"k1": bytes(32)}, active="k1")
        clock = FakeClock()
        one, two = (SigningKeys(store, ring, clock, None) for _ in range(2))
        await asyncio.gather(one.maintain(cfg), two.maintain(cfg))
        s1, s2 = one.signer(), two.signer()
        assert s1 is not None and s2 is not None
        return s1[0], s2[0], len(await store.list_signing_keys())

    kid_one, kid_two, count = asyncio.run(go())
    assert kid_one == kid_two and count == 1

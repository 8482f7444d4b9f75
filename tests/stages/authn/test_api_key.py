"""The api_key stage over a real gateway and upstream: where keys are read, what is stripped, what fails how."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stockade.config.loader import load_config_text
from stockade.errors import ConfigError
from stockade.security import keys
from tests.identity.support import keyed_gateway

CHALLENGE = 'ApiKey realm="stockade"'


def _problem(body: bytes) -> dict[str, object]:
    doc = orjson.loads(body)
    doc.pop("request_id")
    return doc


@pytest.mark.parametrize(
    ("headers", "stripped"),
    [
        ({"X-API-Key": "{k}"}, "x-api-key"),
        ({"x-api-key": "{k}"}, "x-api-key"),
        ({"Authorization": "ApiKey {k}"}, "authorization"),
        ({"Authorization": "apikey {k}"}, "authorization"),
        ({"Authorization": "APIKEY    {k}  "}, "authorization"),
        ({"X-API-Key": "  {k}"}, "x-api-key"),
    ],
    ids=["x-api-key", "lowercase-header", "authorization", "scheme-lowercase", "scheme-upper-extra-space", "padded"],
)
def test_api_key_accepted_and_stripped(tmp_path: Path, headers: dict[str, str], stripped: str) -> None:
    with keyed_gateway(tmp_path) as env:
        issued = env.issue(scopes=["books:read"])
        status, _, _ = env.gw.request(
            "GET", "/books", headers={k: v.format(k=issued.secret) for k, v in headers.items()}
        )
        assert status == 200
        seen = env.up.received[-1]
        assert seen.header(stripped) is None
        assert issued.secret not in repr(seen.headers)
        assert seen.header("x-stockade-principal") == "alice"
        assert seen.header("x-stockade-auth") == "api_key"
        assert seen.header("x-stockade-scopes") == "books:read"
        assert seen.header("x-stockade-roles") == "reader"


@pytest.mark.parametrize("order", [["alice", "bob", "alice", "alice", "bob"], ["bob", "bob", "alice"]])
def test_identity_headers_follow_each_request_principal(tmp_path: Path, order: list[str]) -> None:
    """The pipeline remembers the last principal's identity lines: a different principal next must get its own."""
    with keyed_gateway(tmp_path) as env:
        keys = {name: env.issue(consumer=name).secret for name in set(order)}
        for name in order:
            assert env.get(**{"X-API-Key": keys[name]})[0] == 200
        assert [r.header("x-stockade-principal") for r in env.up.received[-len(order) :]] == order


def test_api_key_other_authorization_scheme_is_left_for_other_authenticators(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        status, headers, body = env.get(Authorization="Bearer abc")
        assert (status, _problem(body)["reason"], headers["www-authenticate"]) == (401, "auth.required", CHALLENGE)


def test_api_key_query_param_only_when_enabled_and_never_forwarded(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path, "- use: api_key\n  config: {query_param: api_key}") as env:
        issued = env.issue()
        status, _, _ = env.get(f"/books?a=1&api_key={issued.secret}&b=%20x")
        assert status == 200
        assert env.up.received[-1].target == "/books?a=1&b=%20x"


def test_api_key_query_param_ignored_when_not_enabled(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        issued = env.issue()
        status, _, body = env.get(f"/books?api_key={issued.secret}")
        assert (status, _problem(body)["reason"]) == (401, "auth.required")
        assert not env.up.received


@pytest.mark.parametrize(
    ("target", "headers", "reason"),
    [
        ("/books", [("X-API-Key", "{k}"), ("X-API-Key", "{k}")], "http.duplicate_header"),
        ("/books", [("Authorization", "ApiKey {k}"), ("Authorization", "ApiKey {k}")], "http.duplicate_header"),
        ("/books", [("X-API-Key", "{k}"), ("Authorization", "ApiKey {k}")], "auth.ambiguous_credentials"),
        ("/books?api_key={k}", [("X-API-Key", "{k}")], "auth.ambiguous_credentials"),
        ("/books?api_key={k}&api_key={k}", [], "auth.ambiguous_credentials"),
    ],
    ids=["two-x-api-key", "two-authorization", "header-and-authorization", "query-and-header", "query-twice"],
)
def test_api_key_ambiguous_credentials_are_400(
    tmp_path: Path, target: str, headers: list[tuple[str, str]], reason: str
) -> None:
    with keyed_gateway(tmp_path, "- use: api_key\n  config: {query_param: api_key}") as env:
        k = env.issue().secret
        raw = f"GET {target.format(k=k)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        raw += "".join(f"{n}: {v.format(k=k)}\r\n" for n, v in headers) + "\r\n"
        from stockade.testing import http_request

        with env.gw.connect() as sock:
            ((status, _, body),) = http_request(sock, raw.encode())
        assert (status, _problem(body)["reason"]) == (400, reason)
        assert k.encode() not in body


def test_api_key_failures_look_identical_but_log_distinct_details(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        revoked = env.issue()
        env.run(env.service.revoke_key(revoked.record.id))
        expired = env.issue(ttl=10)
        env.gw.advance(11)
        valid = env.issue().secret
        cases = {
            "unknown key": keys.generate("live"),
            f"revoked key {revoked.record.id}": revoked.secret,
            f"expired key {expired.record.id}": expired.secret,
            "malformed key (checksum)": valid[:-1] + ("A" if valid[-1] != "A" else "B"),
            "malformed key": valid + "x" * keys.MAX_KEY_LENGTH,
            "wrong key prefix": "sk_live_abc",
            "malformed key (format)": valid[:-3],
        }
        answers = set()
        for value in cases.values():
            status, headers, body = env.get(X_API_Key=value)
            answers.add((status, headers["www-authenticate"], orjson.dumps(_problem(body))))
        assert answers == {
            (
                401,
                CHALLENGE,
                b'{"type":"about:blank","title":"Unauthorized","status":401,"reason":"auth.invalid_credentials"}',
            )
        }
        details = [d["detail"] for d in env.decisions()]
        assert details == list(cases)
        assert not env.up.received
        logged = env.log_path.read_text()
        assert all(v[9:] not in logged for v in cases.values() if len(v) > 20)


def test_api_key_revocation_applies_on_the_next_feed_poll(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        issued = env.issue()
        assert env.get(X_API_Key=issued.secret)[0] == 200  # now cached
        env.run(env.service.revoke_key(issued.secret))
        env.sync()
        assert env.get(X_API_Key=issued.secret)[0] == 401
        assert env.decisions()[-1]["detail"] == f"revoked key {issued.record.id}"


def test_api_key_consumer_deletion_invalidates_its_keys(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        issued = env.issue()
        assert env.get(X_API_Key=issued.secret)[0] == 200
        env.run(env.service.delete_consumer("alice"))
        env.sync()
        assert env.get(X_API_Key=issued.secret)[0] == 401


def test_api_key_rotation_overlap_then_old_key_expires(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        old = env.issue(scopes=["books:read"])
        assert env.get(X_API_Key=old.secret)[0] == 200
        new = env.run(env.service.rotate_key(old.record.id, overlap=60))
        env.sync()
        assert env.get(X_API_Key=old.secret)[0] == 200  # inside the overlap window
        assert env.get(X_API_Key=new.secret)[0] == 200
        assert env.up.received[-1].header("x-stockade-scopes") == "books:read"
        env.gw.advance(61)
        assert env.get(X_API_Key=old.secret)[0] == 401
        assert env.decisions()[-1]["detail"] == f"expired key {old.record.id}"
        assert env.get(X_API_Key=new.secret)[0] == 200


def test_a_rotated_key_cannot_be_rotated_again_and_its_successor_keeps_the_lifetime(tmp_path: Path) -> None:
    """Rotating a key still in its overlap once issued a second successor that never expired."""
    from stockade.identity.service import InvalidInput

    with keyed_gateway(tmp_path) as env:
        old = env.issue(ttl=3600)
        new = env.run(env.service.rotate_key(old.record.id, overlap=600))
        assert new.record.expires_at is not None
        assert new.record.expires_at - new.record.created_at == pytest.approx(3600)
        with pytest.raises(InvalidInput, match="already rotated"):
            env.run(env.service.rotate_key(old.record.id))
        again = env.run(env.service.rotate_key(new.record.id, overlap=0))  # the successor can be rotated
        assert again.record.expires_at is not None


def test_api_key_last_used_written_in_one_batch_off_the_request_path(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path) as env:
        a, b = env.issue(), env.issue()
        for _ in range(5):
            assert env.get(X_API_Key=a.secret)[0] == 200
        assert env.get(X_API_Key=b.secret)[0] == 200
        store = env.service.store
        assert env.run(store.get_api_key(a.record.id)).last_used_at is None  # nothing written per request
        env.gw.advance(30)
        from stockade.identity.watch import shared_watcher

        env.run(shared_watcher(env.gw.services).run_jobs())
        used = {k.id: k.last_used_at for k in env.run(store.list_api_keys())}
        assert used == {a.record.id: env.gw.clock.time(), b.record.id: env.gw.clock.time()}


def test_api_key_env_restriction(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path, "- use: api_key\n  config: {env: test}") as env:
        assert env.get(X_API_Key=env.issue(env="live").secret)[0] == 401
        assert env.get(X_API_Key=env.issue(env="test").secret)[0] == 200


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ("{env: admin}", "env", "reserved"),
        ("{header: 'X API Key'}", "header", "pattern"),
        ("{header: ''}", "header", "pattern"),
        ("{query_param: 'api key'}", "query_param", "pattern"),
        ("{realm: 'a\"b'}", "realm", "pattern"),
        ("{realm: ''}", "realm", "pattern"),
        ("{authorization: maybe}", "authorization", "boolean"),
        ("{headers: X-Key}", "config.headers", "unknown field"),
    ],
    ids=[
        "reserved-env",
        "header-space",
        "header-empty",
        "query-space",
        "realm-quote",
        "realm-empty",
        "not-bool",
        "typo",
    ],
)
def test_api_key_config_errors(config: str, field: str, says: str) -> None:
    """Every constraint of ApiKeyConfig holds as the loader sees it: the class lives apart from the compiled stage
    (api_key_config.py), and mypyc compiling a pydantic class would drop its patterns without a word."""
    text = "routes:\n  - id: r\n    match: {path: /}\n    upstream: http://127.0.0.1:9\n"
    text += f"    stages:\n      - use: api_key\n        config: {config}\n"
    with pytest.raises(ConfigError, match=says) as info:
        load_config_text(text, env={})
    message = str(info.value)
    assert "route 'r'" in message and "api_key" in message and field in message


@pytest.mark.parametrize("stage", ["api_key", "anonymous"])
def test_memory_storage_with_several_workers_is_refused_whatever_the_stages(stage: str) -> None:
    """It was refused only where an api_key stage existed; clients, revocations and the change log are in the
    store too."""
    config = "storage: 'memory://'\nworkers: 2\nlimits_storage: redis://127.0.0.1:6379/0\n"
    config += "routes:\n  - id: r\n    match: {path: /}\n    upstream: http://127.0.0.1:9\n"
    config += f"    stages: [{{use: {stage}}}]\n"
    with pytest.raises(ConfigError, match="per process") as info:
        load_config_text(config, env={})
    assert "field 'storage'" in str(info.value)


@pytest.mark.parametrize(
    ("headers", "expect"),
    [
        ({"X-API-Key": "{k}"}, 200),
        ({"Authorization": "Bearer {t}"}, 200),
        ({"X-API-Key": "{k}", "Authorization": "Bearer {t}"}, 400),  # the JWT would reach the upstream unverified
        ({"X-API-Key": "{k}", "Authorization": "Bearer {forged}"}, 400),
        ({"X-API-Key": "{k}", "Authorization": "Basic dTpw"}, 200),  # no authenticator here takes Basic
        ({"Authorization": "ApiKey {k}"}, 200),
    ],
    ids=["key", "jwt", "key-and-jwt", "key-and-forged-jwt", "key-and-basic", "key-in-authorization"],
)
def test_a_second_credential_next_to_a_winning_key_is_refused(
    tmp_path: Path, headers: dict[str, str], expect: int
) -> None:
    """api_key wins first; a Bearer token on the same request would be forwarded without anyone verifying it."""
    from tests.security.issuer import TestIssuer

    idp = TestIssuer().add_ec("k1")
    forged = TestIssuer().add_ec("k1")  # another key under the same kid
    jwk = orjson.dumps(idp.public("k1")).decode()
    stages = (
        "- use: api_key\n"
        "- use: jwt\n"
        f"  config: {{issuers: [{{issuer: '{idp.issuer}', audiences: [api], algorithms: [ES256], keys: [{jwk}],"
        " max_lifetime: 2678400}]}\n"
        "- use: anonymous"
    )
    with keyed_gateway(tmp_path, stages) as env:
        k = env.issue().secret
        now = int(env.gw.clock.time())
        token = idp.token(iat=now, exp=now + 600, aud="api")
        bad = forged.token(iat=now, exp=now + 600, aud="api", sub="admin")
        values = {n: v.format(k=k, t=token, forged=bad) for n, v in headers.items()}
        status, _, body = env.gw.request("GET", "/books", headers=values)
        assert status == expect
        if expect == 400:
            assert _problem(body)["reason"] == "auth.ambiguous_credentials"
            assert not env.up.received

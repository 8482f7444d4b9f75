"""brute_force counts presented identities under a keyed hash, whatever the authenticator recorded: jwt,
introspection and mtls record an unkeyed digest of issuer + sub or of the certificate's name, which whoever can
list lockouts (a viewer admin token, `stockade lockouts list`) could confirm a guessed name against offline. On
Redis the key is a random one shared through Redis itself, so nodes need no pepper for it."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import orjson
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.cli import cli
from stockade.clock import FakeClock
from stockade.config.loader import load_config_text
from stockade.pipeline.context import AUTH_IDENTITY
from stockade.pipeline.response import Outcome
from stockade.pipeline.stage import Services, StageEnv
from stockade.pipeline.verdict import Continue, Deny
from stockade.ratelimit.backend import limits_backend
from stockade.ratelimit.redis import RedisBackend
from stockade.runtime import build_runtime
from stockade.security import keys
from stockade.stages.authn.api_key import ApiKeyAuthenticator
from stockade.stages.authn.api_key_config import ApiKeyConfig
from stockade.stages.authn.mtls import MtlsAuthenticator, MtlsConfig
from stockade.stages.ratelimit.brute_force import BruteForce
from stockade.stages.ratelimit.identity_key import fetch_identity_key
from stockade.stages.ratelimit.username_key import RECHECK, verify_username_key
from stockade.testing import Reply, TestGateway, TestUpstream, gateway_with_upstream, make_context, run_stage
from tests.admin.test_lockouts_admin import Api, with_api
from tests.identity.support import keyed_gateway
from tests.ratelimit.clusterutil import fresh_cluster_url
from tests.ratelimit.redisutil import PrivateRedis, fresh_redis_url
from tests.security.issuer import NOW
from tests.stages.authn import test_introspection, test_jwt
from tests.stages.ratelimit.test_brute_force import ANN_WRONG, answer

KINDS = ["jwt", "introspection", "mtls", "api_key"]
BACKENDS: dict[str, Callable[[], str]] = {"redis": fresh_redis_url, "cluster": fresh_cluster_url}
KEY = "{bf}.identity-key"

IDENTITY_RULE = "per_identity: {free_failures: 0, lockout_after: 5, backoff_base: 60}"
ROUTE = """
routes:
  - id: items
    match: {path: /items}
    upstream: http://127.0.0.1:9
    stages:
      - use: brute_force
        config:
          per_ip: null
          IDENTITY_RULE
      - use: anonymous
""".replace("IDENTITY_RULE", IDENTITY_RULE)


def recorded_identity(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """What the real `kind` authenticator records under AUTH_IDENTITY for a credential of `alice`."""
    clock = FakeClock(NOW)
    if kind == "jwt":
        ctx = make_context(headers={"Authorization": f"Bearer {test_jwt.IDP.token(sub='alice')}"}, clock=clock)
        assert isinstance(run_stage(test_jwt.make_stage(clock), ctx), Continue)
    elif kind == "introspection":
        monkeypatch.setenv("TEST_INTROSPECTION_SECRET", "s3cr:et/+")
        with TestUpstream() as idp:
            test_introspection.answer(idp, {**test_introspection.ACTIVE, "sub": "alice", "exp": NOW + 60})
            ctx = make_context(headers={"Authorization": "Bearer opaque-token"}, clock=clock)
            assert isinstance(run_stage(test_introspection.make(idp, clock), ctx), Continue)
    elif kind == "mtls":
        cert = {
            "subject": ((("commonName", "alice"),),),
            "notBefore": "Jan  1 00:00:00 2020 GMT",
            "notAfter": "Jan  1 00:00:00 2040 GMT",
        }
        ctx = make_context(clock=clock)
        ctx.peer_cert, ctx.peer_cert_der = cert, alice_certificate(tmp_path)
        stage = MtlsAuthenticator(MtlsConfig(), StageEnv("r", tmp_path, Services(clock=clock)))
        assert isinstance(run_stage(stage, ctx), Continue)
    else:
        (tmp_path / "store").mkdir()
        with keyed_gateway(tmp_path / "store") as env:
            issued = env.issue("alice")
            ctx = make_context(headers={"X-API-Key": issued.secret}, clock=env.gw.clock)
            stage = ApiKeyAuthenticator(ApiKeyConfig(), StageEnv("r", tmp_path, env.gw.services))
            assert isinstance(env.run(stage.check(ctx)), Continue)
    return cast(str, ctx.state[AUTH_IDENTITY])


CA_DN = "CN=Stockade brute-force test CA"


def alice_certificate(directory: Path) -> bytes:
    """A real certificate for CN=alice (the mtls stage reads its issuer, which is part of the identity)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stockade brute-force test CA")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365 * 20))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def unkeyed(kind: str) -> str | None:
    """The unkeyed digest `kind` records for alice (an api_key's identity is keyed already)."""
    text = {
        "jwt": f"{test_jwt.ISS}\x00alice",
        "introspection": f"{test_introspection.ACTIVE['iss']}\x00alice",
        "mtls": f"mtls\x00{CA_DN}\x00subject_cn\x00alice",
    }.get(kind)
    return hashlib.sha256(text.encode()).hexdigest()[:32] if text is not None else None


def node(tmp_path: Path, name: str, url: str) -> tuple[str, Path]:
    """A node's config text and directory (as on a host of its own): no pepper configured, `secrets.generate` as
    by default."""
    (tmp_path / name).mkdir(exist_ok=True)
    head = f'limits_storage: "{url}"\n' if url != "memory://" else ""
    return head + ROUTE, tmp_path / name


class Node:
    """A built gateway process's brute_force stage, started as serve starts one (the start-up checks)."""

    def __init__(self, text: str, base: Path, clock: FakeClock | None = None) -> None:
        self.services = Services(clock=clock or FakeClock(NOW))
        runtime = build_runtime(load_config_text(text, base_dir=base, env={}), self.services)
        [guard] = runtime.routes["items"].pipeline.auth_guards
        self.stage = cast(BruteForce, guard.stage)

    @property
    def clock(self) -> FakeClock:
        return cast(FakeClock, self.services.clock)

    async def start(self) -> None:
        await verify_username_key(self.services)
        await fetch_identity_key(self.services)

    async def present(self, identity: str) -> Deny | None:
        """`identity` as an authenticator recorded it: the guard's refusal, or None."""
        ctx = make_context(path="/items", clock=self.services.clock)
        ctx.state[AUTH_IDENTITY] = identity
        return await self.stage.after_authenticate(ctx)

    async def fail(self, identity: str) -> str:
        """Present `identity` and fail (a 401 from the authenticator): the subject the backend then lists."""
        ctx = make_context(path="/items", clock=self.services.clock)
        ctx.state[AUTH_IDENTITY] = identity
        assert await self.stage.after_authenticate(ctx) is None
        ctx.decision, ctx.status, ctx.reason, ctx.stage = "deny", 401, "auth.invalid_token", "jwt"
        self.stage.on_complete(ctx, Outcome(401))
        backend = limits_backend(self.services)
        async with asyncio.timeout(10):
            while not (found := await backend.lockouts()):  # failures are recorded after the answer
                await asyncio.sleep(0.01)
        return found[0].subject

    async def close(self) -> None:
        await self.services.close()


async def _redis(url: str, *args: str) -> object:
    """One command on the `{bf}` slot's identity key (so a cluster routes it there)."""
    backend = RedisBackend(url, FakeClock())
    key = backend.prefix + KEY
    try:
        return await backend.client.call_on(key, args[0], key, *args[1:])
    finally:
        await backend.aclose()


async def stored_key(url: str) -> bytes:
    """The identity key every node uses, as recorded in Redis (hex)."""
    found = await _redis(url, "GET")
    assert isinstance(found, bytes), found
    return bytes.fromhex(found.decode())


def recorded_key(url: str) -> bytes:
    return asyncio.run(stored_key(url))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_nodes_without_a_pepper_start_and_count_an_identity_under_one_keyed_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, backend: str
) -> None:
    """The upgrade that broke: a replicated JWT- or mTLS-only deployment on one Redis never needed a pepper; each
    node generated its own and the second refused to start (exit 2)."""
    monkeypatch.delenv("STOCKADE_PEPPER", raising=False)
    identity = recorded_identity(kind, tmp_path, monkeypatch)
    if (digest := unkeyed(kind)) is not None:
        assert identity == digest  # what the authenticator records: an unkeyed hash anyone can compute
    url = BACKENDS[backend]()

    async def go() -> tuple[str, Deny | None]:
        a, b = Node(*node(tmp_path, "a", url)), Node(*node(tmp_path, "b", url))
        try:
            await a.start()
            await b.start()  # was: ConfigError, another pepper than the one a recorded
            subject = await a.fail(identity)
            return subject, await b.present(identity)
        finally:
            await a.close()
            await b.close()

    subject, refused = asyncio.run(go())
    assert subject == f"id:{keys.identity_subject(recorded_key(url), identity)}"
    assert identity not in subject  # keyed, not the digest anyone can compute
    assert refused is not None and (refused.status, refused.reason) == (429, "auth.throttled")  # a's failure
    for name in ("a", "b"):
        assert not (tmp_path / name / ".stockade").exists()  # no pepper loaded, none generated


JWT_ONLY = """
limits_storage: "{url}"
secrets: {{generate: false}}
routes:
  - id: api
    match: {{path: /api}}
    upstream: http://127.0.0.1:9
    stages:
      - use: brute_force
      - use: jwt
        config: {{issuers: [{{issuer: "https://idp.example", audiences: [api], jwks_url: "https://idp.example/jwks"}}]}}
"""


def test_a_jwt_only_route_on_redis_needs_no_pepper_to_start_or_pass_config_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STOCKADE_PEPPER", raising=False)
    url = fresh_redis_url()
    path = tmp_path / "gw.yaml"
    path.write_text(JWT_ONLY.format(url=url))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "pepper" not in result.stderr, result.stderr

    async def start() -> None:
        services = Services(clock=FakeClock(NOW))
        try:
            build_runtime(load_config_text(path.read_text(), base_dir=tmp_path, env={}), services)  # was: refused
            await verify_username_key(services)
            await fetch_identity_key(services)
        finally:
            await services.close()

    asyncio.run(start())
    assert len(recorded_key(url)) == 32  # fetched (recorded) at start-up
    assert not (tmp_path / ".stockade").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_identity_key_is_recorded_again_and_every_node_switches_within_the_recheck(
    tmp_path: Path, backend: str
) -> None:
    """Redis lost its data (or an operator deleted the key to re-key): the first process to read it again records
    a new one, the others take it on their next read, at most RECHECK seconds later."""
    url = BACKENDS[backend]()
    alice = hashlib.sha256(b"alice").hexdigest()[:32]

    async def go() -> None:
        a, b = Node(*node(tmp_path, "a", url)), Node(*node(tmp_path, "b", url))
        try:
            await a.start()
            await b.start()
            first = await stored_key(url)
            await _redis(url, "DEL")
            a.clock.advance(RECHECK)
            subject = await a.fail(alice)  # a reads again: none recorded, so records a new one
            second = await stored_key(url)
            assert second != first and subject == f"id:{keys.identity_subject(second, alice)}"
            assert await b.present(alice) is None  # b still counts under the old key, for now
            b.clock.advance(RECHECK)
            refused = await b.present(alice)  # b has read the new key: a's failure counts here too
            assert refused is not None and refused.reason == "auth.throttled"
            assert await stored_key(url) == second
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


@pytest.mark.parametrize("value", [b"\xff\xfe", b"not a key"], ids=["not-utf8", "not-hex"])
def test_a_corrupt_identity_key_in_redis_is_503_naming_it_not_a_crash(tmp_path: Path, value: bytes) -> None:
    """Bytes that are not UTF-8 under the key raised UnicodeDecodeError: a 500 on every authenticated request, and
    a traceback at start-up."""
    url = fresh_redis_url()
    alice = hashlib.sha256(b"alice").hexdigest()[:32]

    async def go() -> None:
        await _redis(url, "SET", value)  # type: ignore[arg-type]
        n = Node(*node(tmp_path, "a", url))
        try:
            await n.start()
            refused = await n.present(alice)
            assert refused is not None and (refused.status, refused.reason) == (503, "brute_force.unavailable")
            assert KEY in (refused.detail or "")
        finally:
            await n.close()

    asyncio.run(go())


def test_redis_down_at_start_starts_with_a_warning_and_answers_503_until_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = hashlib.sha256(b"alice").hexdigest()[:32]
    server = PrivateRedis(tmp_path)  # not started yet: the outage

    async def go() -> None:
        n = Node(*node(tmp_path, "a", server.url))
        try:
            with caplog.at_level(logging.WARNING, "stockade.ratelimit"):
                await n.start()  # no refusal: the request path fetches the key once Redis answers
            assert any("identit" in r.getMessage() and "unreachable" in r.getMessage() for r in caplog.records)
            refused = await n.present(alice)
            assert refused is not None and (refused.status, refused.reason) == (503, "brute_force.unavailable")
            server.start()
            n.clock.advance(60)  # past the client's reconnect back-off
            assert await n.present(alice) is None
            assert (await n.fail(alice)).startswith("id:")
        finally:
            await n.close()

    try:
        asyncio.run(go())
    finally:
        server.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_memory_backends_key_identities_without_a_pepper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    identity = recorded_identity(kind, tmp_path, monkeypatch)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".stockade").write_text("a file where the secrets directory would go: nothing can be made")
    text = "secrets: {generate: false}\n" + ROUTE

    async def go() -> str:
        n = Node(text, tmp_path / "m")
        try:
            await n.start()
            return await n.fail(identity)
        finally:
            await n.close()

    subject = asyncio.run(go())
    assert subject.startswith("id:") and identity not in subject  # the process's own key
    assert not (tmp_path / "m" / "pepper").exists()


def test_the_admin_api_lists_and_lifts_keyed_identity_subjects(tmp_path: Path) -> None:
    n = Node('storage: "memory://"\n' + ROUTE, tmp_path)
    subject = asyncio.run(n.fail(hashlib.sha256(b"alice").hexdigest()[:32]))

    async def body(api: Api) -> None:
        listed = (await api.call("GET", "/lockouts")).json()["lockouts"]
        assert subject in [lk["subject"] for lk in listed]
        answer = await api.call("POST", "/lockouts/clear", "operator", json={"subject": subject})
        assert answer.json() == {"cleared": 1}
        assert subject not in [lk["subject"] for lk in (await api.call("GET", "/lockouts")).json()["lockouts"]]

    with_api(body, services=n.services)


AUTH = """
limits_storage: "{url}"
routes:
  - id: items
    match: {{path: /items}}
    upstream: "{{upstream}}"
    stages:
      - use: brute_force
        config: {{per_ip: null, per_identity: {{free_failures: 0, lockout_after: 3, backoff_base: 60}}}}
      - use: test_auth
"""


def _subjects(gw: TestGateway) -> list[str]:
    async def go() -> list[str]:
        backend = limits_backend(gw.services)
        async with asyncio.timeout(10):
            while not (found := await backend.lockouts()):  # failures are recorded after the answer
                await asyncio.sleep(0.01)
        return [lk.subject for lk in found]

    return gw.bg.run(go())


def test_gateways_without_a_pepper_share_an_identity_count_listed_under_the_keyed_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STOCKADE_PEPPER", raising=False)
    url = fresh_redis_url()
    _, dir_a = node(tmp_path, "a", url)
    _, dir_b = node(tmp_path, "b", url)
    config = AUTH.format(url=url)
    with (
        gateway_with_upstream(config, base_dir=dir_a) as (gw_a, up_a),
        gateway_with_upstream(config, base_dir=dir_b) as (gw_b, up_b),
    ):
        for up in (up_a, up_b):
            up.reply("/items", Reply(200))
        assert answer(gw_a, ANN_WRONG)[0] == 401
        recorded = hashlib.sha256(b"ann").hexdigest()[:24]  # what test_auth records (unkeyed)
        subject = f"id:{keys.identity_subject(recorded_key(url), recorded)}"
        assert _subjects(gw_a) == [subject]
        assert answer(gw_a, ANN_WRONG)[1] == "auth.throttled"
        assert answer(gw_b, ANN_WRONG)[1] == "auth.throttled"  # one count for every node
        assert answer(gw_b, {})[1] == "auth.required"  # no identity presented: nothing to count or refuse
        # The CLI lists and lifts the subject as listed.
        (dir_a / "stockade.yaml").write_text(f'limits_storage: "{url}"\nroutes: []\n')
        runner, conf = CliRunner(), str(dir_a / "stockade.yaml")
        listed = runner.invoke(cli, ["lockouts", "list", "--json", "--config", conf])
        assert [lk["subject"] for lk in orjson.loads(listed.output)["lockouts"]] == [subject]
        assert runner.invoke(cli, ["lockouts", "clear", subject, "--config", conf]).output == "cleared 1 lockout\n"
        assert answer(gw_a, ANN_WRONG)[0] == 401  # no longer backing off
        assert not (dir_a / ".stockade" / "pepper").exists() and not (dir_b / ".stockade").exists()

"""brute_force counts presented identities under a keyed hash, whatever the authenticator recorded: jwt,
introspection and mtls record an unkeyed digest of issuer + sub or of the certificate's name, which whoever can
list lockouts (a viewer admin token, Redis read access) could confirm a guessed name against offline."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
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
from stockade.errors import ConfigError
from stockade.pipeline.context import AUTH_IDENTITY
from stockade.pipeline.response import Outcome
from stockade.pipeline.stage import Services, StageEnv
from stockade.pipeline.verdict import Continue, Deny
from stockade.ratelimit.backend import limits_backend
from stockade.runtime import build_runtime
from stockade.security import keys
from stockade.stages.authn.api_key import ApiKeyAuthenticator, ApiKeyConfig
from stockade.stages.authn.mtls import MtlsAuthenticator, MtlsConfig
from stockade.stages.ratelimit.brute_force import BruteForce
from stockade.stages.ratelimit.username_key import verify_username_key
from stockade.testing import Reply, TestGateway, TestUpstream, gateway_with_upstream, make_context, run_stage
from tests.admin.test_lockouts_admin import Api, with_api
from tests.identity.support import keyed_gateway
from tests.ratelimit.redisutil import fresh_redis_url
from tests.security.issuer import NOW
from tests.stages.authn import test_introspection, test_jwt
from tests.stages.ratelimit.test_brute_force import ANN_WRONG, answer

KINDS = ["jwt", "introspection", "mtls", "api_key"]

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


def node(tmp_path: Path, name: str, url: str, pepper: bytes | None) -> tuple[str, Path]:
    """A node's config text and directory (as on a host of its own), with `pepper` in its pepper file."""
    (tmp_path / name).mkdir(exist_ok=True)
    if pepper is not None:
        (tmp_path / name / "pepper").write_text(base64.b64encode(pepper).decode())
    head = f'limits_storage: "{url}"\n' if url != "memory://" else ""
    return head + "secrets: {pepper_file: pepper}\n" + ROUTE, tmp_path / name


async def fail_once(
    text: str, base: Path, identity: str, services: Services | None = None
) -> tuple[Deny | None, str | None]:
    """Build the node, present `identity` (as an authenticator recorded it) and fail: (the guard's refusal, or
    None and the subject the backend then lists). Given `services`, leaves them open and the lockout in place."""
    own = services is None
    services = services or Services(clock=FakeClock(NOW))
    try:
        runtime = build_runtime(load_config_text(text, base_dir=base, env={}), services)
        [guard] = runtime.routes["items"].pipeline.auth_guards
        stage = cast(BruteForce, guard.stage)
        ctx = make_context(path="/items", clock=services.clock)
        ctx.state[AUTH_IDENTITY] = identity
        refused = await stage.after_authenticate(ctx)
        if refused is not None:
            return refused, None
        ctx.decision, ctx.status, ctx.reason, ctx.stage = "deny", 401, "auth.invalid_token", "jwt"
        stage.on_complete(ctx, Outcome(401))
        backend = limits_backend(services)
        async with asyncio.timeout(10):
            while not (found := await backend.lockouts()):  # failures are recorded after the answer
                await asyncio.sleep(0.01)
        [lockout] = found
        if own:
            await backend.clear(lockout.subject)  # the next node starts from nothing
        return None, lockout.subject
    finally:
        if own:
            await services.close()


@pytest.mark.parametrize("kind", KINDS)
def test_identity_subjects_are_keyed_with_the_pepper_on_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    identity = recorded_identity(kind, tmp_path, monkeypatch)
    if (digest := unkeyed(kind)) is not None:
        assert identity == digest  # what the authenticator records: an unkeyed hash anyone can compute
    url = fresh_redis_url()
    subjects = {}
    for name, pepper in (("a", b"A" * 32), ("c", b"A" * 32)):
        refused, subjects[name] = asyncio.run(fail_once(*node(tmp_path, name, url, pepper), identity))
        assert refused is None
    assert subjects["a"] == subjects["c"]  # every node with the pepper counts alice as one subject
    assert subjects["a"] == f"id:{keys.identity_subject(keys.identity_key(b'A' * 32), identity)}"
    assert identity not in str(subjects["a"])
    other = fresh_redis_url()  # another deployment, another pepper: another subject
    refused, subjects["b"] = asyncio.run(fail_once(*node(tmp_path, "b", other, b"B" * 32), identity))
    assert refused is None and subjects["b"] != subjects["a"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_node_with_another_pepper_refuses_at_start_and_in_after_authenticate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    identity = recorded_identity(kind, tmp_path, monkeypatch)
    url = fresh_redis_url()

    async def start(name: str, pepper: bytes) -> None:
        text, base = node(tmp_path, name, url, pepper)
        services = Services(clock=FakeClock(NOW))
        build_runtime(load_config_text(text, base_dir=base, env={}), services)
        try:
            await verify_username_key(services)
        finally:
            await services.close()

    assert asyncio.run(fail_once(*node(tmp_path, "a", url, b"A" * 32), identity))[0] is None  # records the check
    asyncio.run(start("c", b"A" * 32))
    with pytest.raises(ConfigError) as info:
        asyncio.run(start("b", b"B" * 32))  # exit 2
    [problem] = info.value.problems
    assert "brute_force" in problem and "pepper differs" in problem and "identities" in problem
    refused, _ = asyncio.run(fail_once(*node(tmp_path, "b", url, b"B" * 32), identity))
    assert refused is not None and (refused.status, refused.reason) == (503, "brute_force.unavailable")


@pytest.mark.parametrize("kind", KINDS)
def test_memory_backends_key_identities_without_a_pepper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    identity = recorded_identity(kind, tmp_path, monkeypatch)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".stockade").write_text("a file where the secrets directory would go: nothing can be made")
    text = "secrets: {generate: false}\n" + ROUTE
    refused, subject = asyncio.run(fail_once(text, tmp_path / "m", identity))
    assert refused is None and subject is not None and subject.startswith("id:")
    assert identity not in subject  # the process's own key
    assert not (tmp_path / "m" / "pepper").exists()


def test_the_admin_api_lists_and_lifts_keyed_identity_subjects(tmp_path: Path) -> None:
    services = Services(clock=FakeClock(NOW))
    text = 'storage: "memory://"\n' + ROUTE
    _, subject = asyncio.run(fail_once(text, tmp_path, hashlib.sha256(b"alice").hexdigest()[:32], services))

    async def body(api: Api) -> None:
        listed = (await api.call("GET", "/lockouts")).json()["lockouts"]
        assert subject in [lk["subject"] for lk in listed]
        answer = await api.call("POST", "/lockouts/clear", "operator", json={"subject": subject})
        assert answer.json() == {"cleared": 1}
        assert subject not in [lk["subject"] for lk in (await api.call("GET", "/lockouts")).json()["lockouts"]]

    with_api(body, services=services)


def test_a_redis_identity_route_without_a_pepper_is_refused_naming_route_and_stage(tmp_path: Path) -> None:
    """per_identity is on by default: on Redis every brute_force route now needs the pepper, not login ones only."""
    text = 'limits_storage: "redis://127.0.0.1:6379/0"\nsecrets: {generate: false}\n' + ROUTE
    loaded = load_config_text(text, base_dir=tmp_path, env={})
    with pytest.raises(ConfigError) as info:
        build_runtime(loaded, Services(clock=FakeClock()))
    [problem] = info.value.problems
    assert "route 'items'" in problem and "brute_force" in problem and "pepper does not exist" in problem
    build_runtime(loaded, Services(clock=FakeClock(), dry_run=True))  # `config check`: throwaway material
    assert not (tmp_path / ".stockade").exists()
    per_ip_only = text.replace(
        "per_identity: {free_failures: 0, lockout_after: 5, backoff_base: 60}", "per_identity: null"
    )
    build_runtime(load_config_text(per_ip_only, base_dir=tmp_path, env={}), Services(clock=FakeClock()))  # no key


AUTH = """
limits_storage: "{url}"
secrets: {{pepper_file: pepper}}
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


def test_gateways_count_an_identity_under_the_keyed_subject_and_refuse_another_pepper(tmp_path: Path) -> None:
    url = fresh_redis_url()
    _, dir_a = node(tmp_path, "a", url, b"A" * 32)
    _, dir_b = node(tmp_path, "b", url, b"B" * 32)
    config = AUTH.format(url=url)
    with (
        gateway_with_upstream(config, base_dir=dir_a) as (gw_a, up_a),
        gateway_with_upstream(config, base_dir=dir_b) as (gw_b, up_b),
    ):
        for up in (up_a, up_b):
            up.reply("/items", Reply(200))
        assert answer(gw_a, ANN_WRONG)[0] == 401
        recorded = hashlib.sha256(b"ann").hexdigest()[:24]  # what test_auth records (unkeyed)
        subject = f"id:{keys.identity_subject(keys.identity_key(b'A' * 32), recorded)}"
        assert _subjects(gw_a) == [subject]
        assert answer(gw_a, ANN_WRONG)[1] == "auth.throttled"
        assert answer(gw_b, ANN_WRONG)[:2] == (503, "brute_force.unavailable")  # was 401: a count of its own
        assert answer(gw_b, {})[1] == "auth.required"  # no identity presented: nothing to count or refuse
        # The CLI lists and lifts the subject as listed.
        (dir_a / "stockade.yaml").write_text(f'limits_storage: "{url}"\nroutes: []\n')
        runner, conf = CliRunner(), str(dir_a / "stockade.yaml")
        listed = runner.invoke(cli, ["lockouts", "list", "--json", "--config", conf])
        assert [lk["subject"] for lk in orjson.loads(listed.output)["lockouts"]] == [subject]
        assert runner.invoke(cli, ["lockouts", "clear", subject, "--config", conf]).output == "cleared 1 lockout\n"
        assert answer(gw_a, ANN_WRONG)[0] == 401  # no longer backing off

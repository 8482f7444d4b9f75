"""The `jwt` stage: the known JWT attacks, claim rules, the verified-token cache and principal mapping."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from stockade.clock import FakeClock
from stockade.pipeline.context import AUTH_IDENTITY
from stockade.pipeline.stage import Services, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.security import jose
from stockade.stages.authn.jwt import JwtAuthenticator
from stockade.stages.authn.jwt_config import JwtConfig
from stockade.testing import make_context, run_stage
from tests.security.issuer import AUD, ISS, NOW, TestIssuer

IDP = TestIssuer().add_rsa("rsa-1").add_ec("ec-1")
OTHER = TestIssuer("https://other.example").add_rsa("other-1")


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_token(header: Any, claims: Any, sig: bytes = b"sig") -> str:
    h = b64(header if isinstance(header, str) else json.dumps(header))
    p = b64(claims if isinstance(claims, str) else json.dumps(claims))
    return f"{h}.{p}.{b64(sig)}"


def signed_payload(payload: str) -> str:
    """A correctly signed token whose payload is this exact JSON text (for literals json.dumps never writes)."""
    key, alg = IDP.keys["rsa-1"]
    h = jose.b64url_encode(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa-1"}).encode())
    p = jose.b64url_encode(payload.encode())
    return f"{h}.{p}.{jose.b64url_encode(jose.sign_bytes(key, alg, f'{h}.{p}'.encode()))}"


def make_stage(clock: FakeClock | None = None, **issuer: Any) -> JwtAuthenticator:
    cfg = {"issuer": ISS, "audiences": [AUD], "algorithms": ["RS256", "ES256"], "keys": IDP.jwks()["keys"]}
    cfg.update(issuer)
    other = {"issuer": OTHER.issuer, "audiences": [AUD], "keys": OTHER.jwks()["keys"]}
    config = JwtConfig.model_validate({"issuers": [cfg, other]})
    env = StageEnv(route_id="r", base_dir=Path("."), services=Services(clock=clock or FakeClock()))
    return JwtAuthenticator(config, env)


def check(stage: JwtAuthenticator, token: str, clock: FakeClock | None = None) -> Continue | Skip | Deny:
    ctx = make_context(headers={"Authorization": f"Bearer {token}"}, clock=clock)
    return run_stage(stage, ctx)


def rsa_pem() -> bytes:
    key, _ = IDP.keys["rsa-1"]
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def hs256_with(secret: bytes) -> str:
    return jose.sign_raw({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, IDP.claims(), secret, "HS256")


def tamper_payload(token: str) -> str:
    h, _, s = token.split(".")
    return f"{h}.{b64(json.dumps(IDP.claims(sub='admin')))}.{s}"


def attacker_jwk_token(param: str) -> str:
    evil = TestIssuer().add_rsa("rsa-1")
    extra: dict[str, Any] = {
        "jku": {"jku": "https://evil.example/jwks.json"},
        "x5u": {"x5u": "https://evil.example/cert.pem"},
        "jwk": {"jwk": evil.public("rsa-1")},
        "x5c": {"x5c": ["MIIBIjAN"]},
    }[param]
    return evil.token("rsa-1", header=extra)


NONE_SPELLINGS = ["none", "None", "NONE", "nOnE", " none", "none ", "\tnone"]

ATTACKS: list[tuple[str, Any, str]] = [
    *[
        (f"alg-{a!r}-empty-sig", lambda a=a: raw_token({"alg": a}, IDP.claims())[:-4] + ".", "jwt.malformed")
        for a in NONE_SPELLINGS
    ],
    *[
        (f"alg-{a!r}-with-sig", lambda a=a: raw_token({"alg": a, "kid": "rsa-1"}, IDP.claims()), "jwt.alg_not_allowed")
        for a in NONE_SPELLINGS
    ],
    ("hs256-signed-with-rsa-pem", lambda: hs256_with(rsa_pem()), "jwt.alg_not_allowed"),
    ("hs256-signed-with-rsa-jwk", lambda: hs256_with(json.dumps(IDP.public("rsa-1")).encode()), "jwt.alg_not_allowed"),
    ("kid-path-traversal", lambda: IDP.token("rsa-1", header={"kid": "../../dev/null"}), "jwt.unknown_kid"),
    ("kid-sql-injection", lambda: IDP.token("rsa-1", header={"kid": "' OR 1=1 --"}), "jwt.unknown_kid"),
    ("kid-url", lambda: IDP.token("rsa-1", header={"kid": "https://evil.example/key"}), "jwt.unknown_kid"),
    ("kid-of-other-issuer", lambda: IDP.token("rsa-1", header={"kid": "other-1"}), "jwt.unknown_kid"),
    ("kid-not-string", lambda: IDP.token("rsa-1", header={"kid": 7}), "jwt.malformed"),
    ("kid-rsa-with-es256", lambda: IDP.token("ec-1", header={"kid": "rsa-1"}), "jwt.unknown_kid"),
    ("other-issuer-key-for-our-iss", lambda: OTHER.token("other-1", iss=ISS), "jwt.unknown_kid"),
    *[(f"header-{p}", lambda p=p: attacker_jwk_token(p), "jwt.header_key") for p in ("jku", "x5u", "jwk", "x5c")],
    ("crit-unknown", lambda: IDP.token("rsa-1", header={"crit": ["exp-ext"], "exp-ext": 1}), "jwt.unknown_crit"),
    ("crit-b64", lambda: IDP.token("rsa-1", header={"crit": ["b64"], "b64": False}), "jwt.unknown_crit"),
    ("alg-not-pinned", lambda: TestIssuer().add_rsa("rsa-1", "PS256").token(), "jwt.alg_not_allowed"),
    ("alg-missing", lambda: raw_token({"kid": "rsa-1"}, IDP.claims()), "jwt.malformed"),
    ("expired", lambda: IDP.token(exp=NOW - 61), "jwt.expired"),
    ("exp-missing", lambda: IDP.token(exp=None), "jwt.bad_claim"),
    ("exp-string", lambda: IDP.token(exp=str(NOW + 60)), "jwt.bad_claim"),
    ("exp-bool", lambda: IDP.token(exp=True), "jwt.bad_claim"),
    ("nbf-future", lambda: IDP.token(nbf=NOW + 61), "jwt.not_yet_valid"),
    ("iat-future", lambda: IDP.token(iat=NOW + 61, exp=NOW + 900), "jwt.not_yet_valid"),
    ("lifetime-too-long", lambda: IDP.token(iat=NOW, exp=NOW + 86400 + 61), "jwt.lifetime_too_long"),
    ("lifetime-too-long-no-iat", lambda: IDP.token(iat=None, exp=NOW + 86400 + 61), "jwt.lifetime_too_long"),
    ("wrong-aud", lambda: IDP.token(aud="other-api"), "jwt.bad_audience"),
    ("wrong-aud-list", lambda: IDP.token(aud=["a", "b"]), "jwt.bad_audience"),
    ("aud-missing", lambda: IDP.token(aud=None), "jwt.bad_audience"),
    ("aud-number", lambda: IDP.token(aud=1), "jwt.bad_audience"),
    ("wrong-iss", lambda: IDP.token(iss="https://evil.example"), "jwt.bad_issuer"),
    ("iss-missing", lambda: IDP.token(iss=None), "jwt.bad_issuer"),
    ("sub-missing", lambda: IDP.token(sub=None), "jwt.bad_claim"),
    ("stripped-signature", lambda: IDP.token().rsplit(".", 1)[0] + ".", "jwt.malformed"),
    ("no-signature-segment", lambda: IDP.token().rsplit(".", 1)[0], "jwt.malformed"),
    # Python refuses integer literals over 4300 digits with a plain ValueError: still malformed, never a 500
    (
        "huge-integer-claim",
        lambda: raw_token({"alg": "ES256"}, '{"sub":"x","exp":' + "9" * 4301 + "}"),
        "jwt.malformed",
    ),
    ("huge-integer-header", lambda: raw_token('{"alg":"ES256","x":' + "9" * 4301 + "}", IDP.claims()), "jwt.malformed"),
    # Signed, so only an issuer could send them: a float() overflow was a 500, and 1e400 parsed as a never-ending exp
    ("exp-beyond-float", lambda: IDP.token(exp=10**400), "jwt.bad_claim"),
    ("iat-beyond-float", lambda: IDP.token(iat=-(10**400)), "jwt.bad_claim"),
    ("nbf-beyond-float", lambda: IDP.token(nbf=10**400), "jwt.bad_claim"),
    (
        "exp-infinite-literal",
        lambda: signed_payload(json.dumps(IDP.claims()).replace(f'"exp": {NOW + 600}', '"exp": 1e400')),
        "jwt.bad_claim",
    ),
    ("modified-payload", lambda: tamper_payload(IDP.token()), "jwt.bad_signature"),
    (
        "signature-of-other-token",
        lambda: IDP.token().rsplit(".", 1)[0] + "." + IDP.token(sub="x").split(".")[2],
        "jwt.bad_signature",
    ),
    ("ecdsa-der-signature", lambda: IDP.token("ec-1")[:-10] + "AAAAAAAAAA", "jwt.bad_signature"),
    ("bad-base64-chars", lambda: IDP.token().replace(".", ".+/", 1), "jwt.malformed"),
    # half a surrogate pair: json.loads keeps it, and hashing the identity then raised (500 per request)
    (
        "lone-surrogate-sub",
        lambda: signed_payload(json.dumps({**IDP.claims(), "sub": "X"}).replace('"X"', '"\\ud800"')),
        "jwt.malformed",
    ),
    (
        "base64-padding",
        lambda: IDP.token().split(".")[0] + "==." + ".".join(IDP.token().split(".")[1:]),
        "jwt.malformed",
    ),
    ("extra-segments", lambda: IDP.token() + ".e30", "jwt.malformed"),
    ("five-segments-jwe", lambda: "e30.e30.e30.e30.e30", "jwt.malformed"),
    (
        "duplicate-header-key",
        lambda: raw_token('{"alg":"none","alg":"RS256","kid":"rsa-1"}', IDP.claims()),
        "jwt.malformed",
    ),
    ("duplicate-claim", lambda: raw_token({"alg": "RS256"}, '{"sub":"a","sub":"admin"}'), "jwt.malformed"),
    ("header-array", lambda: raw_token("[1,2]", IDP.claims()), "jwt.malformed"),
    ("payload-string", lambda: raw_token({"alg": "RS256"}, '"hello"'), "jwt.malformed"),
    ("payload-not-json", lambda: raw_token({"alg": "RS256"}, "{not json"), "jwt.malformed"),
    ("payload-nan", lambda: raw_token({"alg": "RS256"}, '{"exp": NaN}'), "jwt.malformed"),
    ("huge-token", lambda: IDP.token(pad="x" * 9000), "jwt.malformed"),
    ("non-canonical-base64", lambda: _non_canonical(IDP.token()), "jwt.malformed"),
]


def _non_canonical(token: str) -> str:
    # A 2-byte-remainder segment leaves 2 unused bits in its last character; set one of them.
    h, p, s = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for seg_name, seg in (("h", h), ("p", p), ("s", s)):
        if len(seg) % 4 in (2, 3):
            last = alphabet.index(seg[-1])
            tweaked = seg[:-1] + alphabet[last ^ 1]
            parts = {"h": h, "p": p, "s": s} | {seg_name: tweaked}
            return f"{parts['h']}.{parts['p']}.{parts['s']}"
    pytest.skip("no segment with spare bits")
    raise AssertionError


@pytest.mark.parametrize(("make", "code"), [(m, c) for _, m, c in ATTACKS], ids=[i for i, _, _ in ATTACKS])
def test_jwt_attack_is_rejected_with_generic_401(make: Any, code: str) -> None:
    verdict = check(make_stage(), make())
    assert isinstance(verdict, Deny)
    assert (verdict.status, verdict.reason) == (401, "auth.invalid_token")
    assert verdict.headers == {"www-authenticate": 'Bearer realm="stockade", error="invalid_token"'}
    assert verdict.detail.startswith(code + ":"), verdict.detail


@pytest.mark.parametrize(
    ("kid", "claims"),
    [("rsa-1", {}), ("ec-1", {}), ("rsa-1", {"aud": ["x", AUD]})],
    ids=["rs256", "es256", "aud-list"],
)
def test_jwt_valid_token_is_accepted(kid: str, claims: dict[str, Any]) -> None:
    verdict = check(make_stage(), IDP.token(kid, **claims))
    assert isinstance(verdict, Continue) and verdict.principal is not None
    assert verdict.principal.id == "user-1"
    assert verdict.principal.kind == "jwt"
    assert verdict.principal.scopes == {"books:read", "books:write"}
    assert verdict.principal.credential_id == "jti-1"


@pytest.mark.parametrize(
    ("leeway", "exp_offset", "accepted"),
    [(0, -1, False), (0, 0, True), (30, -30, True), (30, -31, False), (60, -60, True)],
    ids=["no-leeway-past", "no-leeway-now", "leeway-edge", "leeway-past", "max-leeway"],
)
def test_jwt_exp_leeway_boundaries(leeway: int, exp_offset: int, accepted: bool) -> None:
    verdict = check(make_stage(leeway=leeway), IDP.token(exp=NOW + exp_offset))
    assert isinstance(verdict, Continue) is accepted


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ({"leeway": 61}, "less than or equal to 60"),
        ({"algorithms": ["RS256", "HS256"]}, "need a shared secret"),
        ({"algorithms": ["none"]}, "Input should be"),
        ({"keys": None, "jwks_url": "http://idp.example/jwks"}, "must use https"),
        ({"jwks_url": "https://idp.example/jwks"}, "exactly one key source"),
        ({"audiences": []}, "at least 1"),
        ({"keys": None, "secret_env": "X", "algorithms": ["HS256", "RS256"]}, r"only HS\* algorithms"),
    ],
    ids=["leeway-over-60", "hs-without-secret", "alg-none", "jwks-http", "two-sources", "no-audience", "hs-rs-mix"],
)
def test_jwt_config_rejects_unsafe_issuers(issuer: dict[str, Any], message: str) -> None:
    cfg = {"issuer": ISS, "audiences": [AUD], "keys": IDP.jwks()["keys"], **issuer}
    with pytest.raises(ValidationError, match=message):
        JwtConfig.model_validate({"issuers": [cfg]})


def test_jwt_hs256_issuer_with_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = b"s" * 32
    monkeypatch.setenv("TEST_JWT_SECRET", secret.decode())
    stage = make_stage(keys=None, secret_env="TEST_JWT_SECRET", algorithms=["HS256"])
    good = jose.sign(IDP.claims(), secret, "HS256")
    forged_rs = IDP.token("rsa-1")
    assert isinstance(check(stage, good), Continue)
    verdict = check(stage, forged_rs)
    assert isinstance(verdict, Deny) and verdict.detail.startswith("jwt.alg_not_allowed")


@pytest.mark.parametrize(
    ("secret_kid", "token_kid", "accepted"),
    [(None, None, True), (None, "hs-1", False), ("hs-1", "hs-1", True), ("hs-1", "other", False), ("hs-1", None, True)],
)
def test_jwt_hs256_secret_kid(
    monkeypatch: pytest.MonkeyPatch, secret_kid: str | None, token_kid: str | None, accepted: bool
) -> None:
    """IdPs that put a kid in every header (Auth0, Keycloak) had every HS256 token refused: `secret_kid` names it."""
    secret = b"s" * 32
    monkeypatch.setenv("TEST_JWT_SECRET", secret.decode())
    over = {"secret_kid": secret_kid} if secret_kid else {}
    stage = make_stage(keys=None, secret_env="TEST_JWT_SECRET", algorithms=["HS256"], **over)
    verdict = check(stage, jose.sign(IDP.claims(), secret, "HS256", kid=token_kid))
    assert isinstance(verdict, Continue) is accepted
    if not accepted:
        assert isinstance(verdict, Deny) and verdict.detail.startswith("jwt.unknown_kid")


def test_jwt_hs256_secret_too_short_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", "short")
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        make_stage(keys=None, secret_env="TEST_JWT_SECRET", algorithms=["HS256"])


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Skip),
        ({"Authorization": "Basic dXNlcjpwdw=="}, Skip),
        ({"Authorization": "Bearer opaque-token-without-dots"}, Skip),
    ],
    ids=["absent", "basic", "opaque"],
)
def test_jwt_skips_when_no_jwt_is_presented(headers: dict[str, str], expected: type) -> None:
    assert isinstance(run_stage(make_stage(), make_context(headers=headers)), expected)


def test_jwt_duplicate_authorization_is_400() -> None:
    token = IDP.token()
    ctx = make_context(headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    verdict = run_stage(make_stage(), ctx)
    assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (400, "http.duplicate_header")


def test_jwt_cache_hit_returns_the_same_verdict_until_exp() -> None:
    clock = FakeClock()
    stage = make_stage(clock, leeway=0)
    token = IDP.token(exp=NOW + 100)
    first = check(stage, token, clock)
    second = check(stage, token, clock)
    assert isinstance(first, Continue) and second is first  # served from the cache: no re-verification
    clock.advance(101)
    expired = check(stage, token, clock)
    assert isinstance(expired, Deny) and expired.detail.startswith("jwt.expired")


def test_jwt_cache_is_bounded() -> None:
    config = JwtConfig.model_validate(
        {"issuers": [{"issuer": ISS, "audiences": [AUD], "keys": IDP.jwks()["keys"]}], "cache_size": 2}
    )
    stage = JwtAuthenticator(config, StageEnv("r", Path("."), Services(clock=FakeClock())))
    tokens = [IDP.token(jti=f"j{i}") for i in range(3)]
    for t in tokens:
        assert isinstance(check(stage, t), Continue)
    assert len(stage._cache) == 2
    assert f"Bearer {tokens[0]}" not in stage._cache


def test_jwt_identity_and_roles_from_dotted_claim() -> None:
    stage = make_stage(roles_claim="realm_access.roles")
    ctx = make_context(headers={"Authorization": f"Bearer {IDP.token(realm_access={'roles': ['admin', 7]})}"})
    verdict = run_stage(stage, ctx)
    assert isinstance(verdict, Continue) and verdict.principal is not None
    assert verdict.principal.roles == {"admin"}
    assert len(ctx.state[AUTH_IDENTITY]) == 32 and "user-1" not in ctx.state[AUTH_IDENTITY]


def test_jwt_scp_list_claim_maps_to_scopes() -> None:
    verdict = check(make_stage(), IDP.token(scope=None, scp=["a", "b"]))
    assert isinstance(verdict, Continue) and verdict.principal is not None
    assert verdict.principal.scopes == {"a", "b"}


def test_jwt_typ_pinning() -> None:
    stage = make_stage(types=["at+jwt"])
    assert isinstance(check(stage, IDP.token(header={"typ": "at+jwt"})), Continue)
    assert isinstance(check(stage, IDP.token(header={"typ": "application/at+JWT"}, jti="j2")), Continue)
    verdict = check(stage, IDP.token(header={"typ": "JWT"}, jti="j3"))
    assert isinstance(verdict, Deny) and verdict.detail.startswith("jwt.bad_type")


def test_jwt_allowed_header_keys_are_tolerated_but_never_used() -> None:
    stage = make_stage(allow_header_keys=["jwk"])
    evil = attacker_jwk_token("jwk")  # signed by the attacker's key, which it embeds
    verdict = check(stage, evil)
    assert isinstance(verdict, Deny) and verdict.detail.startswith("jwt.bad_signature")
    assert isinstance(check(stage, IDP.token(header={"jwk": IDP.public("rsa-1")})), Continue)


def test_jwt_certificate_bound_token() -> None:
    der = b"certificate-der-bytes"
    from stockade.security.jwk import thumbprint_sha256

    token = IDP.token(cnf={"x5t#S256": thumbprint_sha256(der)})
    stage = make_stage()
    ctx = make_context(headers={"Authorization": f"Bearer {token}"})
    ctx.peer_cert_der = der
    assert isinstance(run_stage(stage, ctx), Continue)
    for other in (None, b"another-certificate"):
        ctx = make_context(headers={"Authorization": f"Bearer {token}"})
        ctx.peer_cert_der = other
        verdict = run_stage(stage, ctx)  # the cached entry must not bypass the binding
        assert isinstance(verdict, Deny) and verdict.detail.startswith("jwt.cnf_mismatch")


def test_cached_token_remembers_the_key_set_that_verified_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the issuer's key set is replaced while a verification awaits (the revocation list, say), the cache
    entry must hold the set that verified the token, so the next request sees the rotation and re-verifies."""
    from stockade.security.jwks import KeySet

    clock = FakeClock()
    stage = make_stage(clock)
    source = stage._issuers[ISS].source
    verified_with = source.keys
    assert verified_with is not None

    async def current_then_rotated(now: float) -> KeySet | None:
        source.keys = KeySet(verified_with.keys, "rotated")  # another object: a refresh replaced it meanwhile
        return verified_with

    monkeypatch.setattr(source, "current", current_then_rotated)
    token = IDP.token("rsa-1")
    assert isinstance(check(stage, token, clock), Continue)
    entry = stage._cache[f"Bearer {token}"]
    assert entry.keys is verified_with
    assert entry.keys is not source.keys  # so the next hit is not served from the cache


FORGER = TestIssuer().add_rsa("rsa-1")  # the real issuer's name and kid, the attacker's own key


@pytest.mark.parametrize(
    ("separator", "scheme"),
    [(" ", "Bearer"), ("\t", "Bearer"), ("  ", "Bearer"), (" \t ", "bearer"), ("\xa0", "BEARER")],
    ids=["space", "tab", "two-spaces", "mixed", "nbsp"],
)
def test_any_whitespace_after_bearer_is_a_bearer_credential(separator: str, scheme: str) -> None:
    """DRF's `header.split()` reads `Bearer<TAB>token` as a bearer token: read here as another scheme, a forged
    one skipped verification and, where `anonymous` followed, reached the upstream."""
    stage = make_stage()
    good = run_stage(stage, make_context(headers={"Authorization": f"{scheme}{separator}{IDP.token('rsa-1')}"}))
    assert isinstance(good, Continue)
    forged = run_stage(stage, make_context(headers={"Authorization": f"{scheme}{separator}{FORGER.token('rsa-1')}"}))
    assert isinstance(forged, Deny) and forged.status == 401


def test_a_forged_token_after_a_tab_does_not_pass_an_optional_auth_route() -> None:
    from stockade.testing import gateway_with_upstream

    issuer = {"issuer": ISS, "audiences": [AUD], "algorithms": ["RS256"], "keys": IDP.jwks()["keys"]}
    config = f"""
routes:
  - id: opt
    match: {{path: /**}}
    upstream: "{{upstream}}"
    stages:
      - use: jwt
        config: {{issuers: [{json.dumps(issuer)}]}}
      - use: anonymous
"""
    clock = FakeClock(NOW)
    with gateway_with_upstream(config, clock=clock) as (gw, up):
        forged = FORGER.token("rsa-1", sub="admin", roles=["admin"])
        status, _, _ = gw.request("GET", "/x", headers={"Authorization": f"Bearer\t{forged}"})
        assert status == 401 and up.received == []
        assert gw.request("GET", "/x")[0] == 200  # no credential: anonymous, as the route allows
        status, _, _ = gw.request("GET", "/x", headers={"Authorization": f"Bearer\t{IDP.token('rsa-1')}"})
        assert status == 200 and up.received[-1].header("x-stockade-principal") != "anonymous"


@pytest.mark.parametrize(
    ("query", "header", "status"),
    [
        ("access_token=x.y.z", None, 400),
        ("a=1&access_token=x.y.z", "valid", 400),  # which one an upstream reads first is its own choice
        ("not_access_token_but=1", None, None),
        ("q=access_token", None, None),
        # every spelling an application reads as `access_token` (security/readings.py)
        ("access%5Ftoken=x.y.z", None, 400),  # Werkzeug, Starlette, Django, Express, Go: percent-decoded
        ("%61ccess_token=x.y.z", None, 400),
        ("a=1;access_token=x.y.z", None, 400),  # older Rack and parse_qs split at `;`
        ("access.token=x.y.z", None, 400),  # PHP's $_GET: dots and spaces as underscores
        ("access+token=x.y.z", None, 400),
        ("access_token[]=x.y.z", None, 400),
        ("access_token%00=x.y.z", None, 400),
        ("ACCESS_TOKEN=x.y.z", None, 400),  # not read so by the usual resolvers; refused rather than guessed
        ("access_tokens=x.y.z&q=%61", None, None),
        ("q=%61ccess_token", None, None),
    ],
)
def test_a_bearer_token_in_the_query_is_refused(query: str, header: str | None, status: int | None) -> None:
    """RFC 6750 §2.3 tokens are not read by the gateway: on a route where `anonymous` follows, one reached the
    upstream unverified."""
    headers = {"Authorization": f"Bearer {IDP.token('rsa-1')}"} if header else {}
    verdict = run_stage(make_stage(), make_context(query=query, headers=headers))
    if status is None:
        assert isinstance(verdict, Skip)
    else:
        assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (status, "auth.unsupported_credential")


def test_a_query_token_beside_a_winning_api_key_is_ambiguous(tmp_path: Path) -> None:
    """On a route [api_key, jwt], the api_key won and jwt never ran: `?access_token=` reached the upstream,
    unverified, beside the key the gateway did verify."""
    from tests.identity.support import keyed_gateway

    issuer = {"issuer": ISS, "audiences": [AUD], "algorithms": ["RS256"], "keys": IDP.jwks()["keys"]}
    stages = f"- use: api_key\n- use: jwt\n  config: {{issuers: [{json.dumps(issuer)}]}}"
    with keyed_gateway(tmp_path, stages) as env:
        key = env.issue().secret
        assert env.get("/books", X_API_Key=key)[0] == 200
        status, _, raw = env.get("/books?access_token=abc.def.ghi", X_API_Key=key)
        assert (status, json.loads(raw)["reason"]) == (400, "auth.ambiguous_credentials")
        status, _, raw = env.get("/books?access%5Ftoken=abc.def.ghi", X_API_Key=key)
        assert (status, json.loads(raw)["reason"]) == (400, "auth.ambiguous_credentials")
        assert [r.target for r in env.up.received] == ["/books"]

"""JWKS fetching against a real HTTP server: rotation, rate-limited refetch, stale-if-error, redirects, limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade.clock import FakeClock
from stockade.pipeline.stage import Services, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.stages.authn.jwt import JwtAuthenticator
from stockade.stages.authn.jwt_config import JwtConfig
from stockade.testing import Reply, TestUpstream, checked, make_context
from tests.security.issuer import AUD, ISS, TestIssuer


@pytest.fixture
def idp() -> Iterator[TestUpstream]:
    with TestUpstream() as up:
        yield up


def serve(up: TestUpstream, body: bytes, *, status: int = 200, headers: list[tuple[str, str]] | None = None) -> None:
    up.reply("/jwks.json", Reply(status, [("Content-Type", "application/json"), *(headers or [])], body))


def fetches(up: TestUpstream) -> int:
    return sum(1 for r in up.received if r.target == "/jwks.json")


def stage_for(up: TestUpstream, clock: FakeClock, **issuer: Any) -> JwtAuthenticator:
    cfg = {"issuer": ISS, "audiences": [AUD], "jwks_url": f"{up.url}/jwks.json", "algorithms": ["RS256", "ES256"]}
    config = JwtConfig.model_validate({"issuers": [{**cfg, **issuer}]})
    return JwtAuthenticator(config, StageEnv("r", Path("."), Services(clock=clock)))


def check(stage: JwtAuthenticator, token: str, clock: FakeClock) -> Continue | Deny:
    """One request; a refresh it started in the background also finishes on its (private) loop."""

    async def run() -> Continue | Skip | Deny:
        verdict = await checked(stage.check(make_context(headers={"Authorization": f"Bearer {token}"}, clock=clock)))
        for issuer in stage._issuers.values():
            pending = getattr(issuer.source, "_inflight", None)
            if pending is not None:
                await asyncio.wait([pending])
        return verdict

    verdict = asyncio.run(run())
    assert isinstance(verdict, Continue | Deny)
    return verdict


def denied_with(verdict: object, code: str) -> bool:
    return isinstance(verdict, Deny) and verdict.detail.startswith(code)


def test_jwks_rotation_new_kid_refetches_once_and_old_kid_dies_after_ttl(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_rsa("k1").add_ec("k2")
    serve(idp, issuer.jwks_bytes("k1"))
    stage = stage_for(idp, clock, cache_ttl=300, refetch_interval=30)
    old = issuer.token("k1", exp=clock.time() + 3600, iat=clock.time())
    assert isinstance(check(stage, old, clock), Continue)
    assert fetches(idp) == 1

    # The IdP publishes k2 and starts signing with it: the first k2 token triggers exactly one refetch.
    serve(idp, issuer.jwks_bytes("k1", "k2"))
    clock.advance(31)
    new = issuer.token("k2", exp=clock.time() + 3600, iat=clock.time())
    assert isinstance(check(stage, new, clock), Continue)
    assert fetches(idp) == 2
    assert isinstance(check(stage, issuer.token("k2", jti="other", iat=clock.time()), clock), Continue)
    assert fetches(idp) == 2

    # An attacker spraying unknown kids cannot make us hammer the IdP: one refetch per interval at most.
    spray = [issuer.token("k2", header={"kid": f"random-{i}"}, iat=clock.time()) for i in range(20)]
    clock.advance(31)
    results = [check(stage, t, clock) for t in spray]
    assert all(denied_with(r, "jwt.unknown_kid") for r in results)
    assert fetches(idp) == 3

    # k1 is withdrawn: its (cached) token keeps working until the key set's TTL; the first request after it is
    # still verified with the expired set while the refresh runs, and the refreshed set no longer has k1.
    serve(idp, issuer.jwks_bytes("k2"))
    assert isinstance(check(stage, old, clock), Continue)
    assert fetches(idp) == 3
    clock.advance(300)
    assert isinstance(check(stage, old, clock), Continue)
    assert fetches(idp) == 4
    assert denied_with(check(stage, old, clock), "jwt.unknown_kid")
    assert isinstance(check(stage, new, clock), Continue)


def test_jwks_cache_control_max_age_is_honoured_within_bounds(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    serve(idp, issuer.jwks_bytes(), headers=[("Cache-Control", "public, max-age=120")])
    stage = stage_for(idp, clock, min_ttl=60)
    token = issuer.token(exp=clock.time() + 3600)
    assert isinstance(check(stage, token, clock), Continue)
    clock.advance(119)
    assert isinstance(check(stage, token, clock), Continue)
    assert fetches(idp) == 1
    clock.advance(2)
    assert isinstance(check(stage, token, clock), Continue)
    assert fetches(idp) == 2
    serve(idp, issuer.jwks_bytes(), headers=[("Cache-Control", "max-age=1")])  # clamped up to min_ttl
    clock.advance(121)
    check(stage, token, clock)
    clock.advance(30)
    check(stage, token, clock)
    assert fetches(idp) == 3


def test_jwks_stale_if_error_keeps_the_last_good_set_then_fails_closed(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    serve(idp, issuer.jwks_bytes())
    stage = stage_for(idp, clock, cache_ttl=300, retry_interval=30, stale_if_error=3600)
    token = issuer.token(exp=clock.time() + 86400, iat=None)
    assert isinstance(check(stage, token, clock), Continue)

    serve(idp, b"down", status=503)  # the IdP fails
    clock.advance(301)
    assert isinstance(check(stage, token, clock), Continue)  # stale set still used
    assert fetches(idp) == 2
    clock.advance(10)
    assert isinstance(check(stage, token, clock), Continue)
    assert fetches(idp) == 2  # no new attempt within retry_interval: requests do not queue behind a dead IdP
    clock.advance(3600)
    verdict = check(stage, token, clock)
    assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (503, "auth.unavailable")

    serve(idp, issuer.jwks_bytes())  # the IdP recovers
    clock.advance(31)
    assert isinstance(check(stage, token, clock), Continue)


def test_requests_do_not_wait_for_a_hanging_idp_while_a_set_is_usable(idp: TestUpstream) -> None:
    """Every key-set expiry used to hold all JWT traffic, cached tokens too, for the fetch timeout."""
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    serve(idp, issuer.jwks_bytes())
    stage = stage_for(idp, clock, cache_ttl=300, fetch_timeout=30)
    token = issuer.token(exp=clock.time() + 86400, iat=None)
    assert isinstance(check(stage, token, clock), Continue)
    idp.stall()  # the IdP hangs
    clock.advance(301)
    source = stage._issuers[ISS].source

    async def request() -> tuple[object, bool]:
        verdict = await checked(stage.check(make_context(headers={"Authorization": f"Bearer {token}"}, clock=clock)))
        return verdict, source._inflight is not None and not source._inflight.done()

    try:
        verdict, refresh_running = asyncio.run(request())
        assert isinstance(verdict, Continue)  # from the expired set...
        assert refresh_running  # ...while the refresh still waits on the IdP: the request did not wait for it
    finally:
        idp.release()


def test_jwks_first_fetch_failure_fails_closed(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    serve(idp, b"{not json")
    verdict = check(stage_for(idp, clock), issuer.token(), clock)
    assert isinstance(verdict, Deny) and verdict.status == 503


def test_jwks_concurrent_requests_share_one_fetch(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    serve(idp, issuer.jwks_bytes())
    stage = stage_for(idp, clock)
    tokens = [issuer.token(jti=f"j{i}") for i in range(10)]

    async def all_at_once() -> list[object]:
        ctxs = [make_context(headers={"Authorization": f"Bearer {t}"}, clock=clock) for t in tokens]
        return list(await asyncio.gather(*(checked(stage.check(c)) for c in ctxs)))

    results = asyncio.run(all_at_once())
    assert all(isinstance(r, Continue) for r in results)
    assert fetches(idp) == 1


@pytest.mark.parametrize(
    ("location", "followed"),
    [("/moved/jwks.json", True), ("http://localhost:{port}/moved/jwks.json", False), ("https://evil.example/", False)],
    ids=["same-origin", "other-host", "other-scheme"],
)
def test_jwks_redirects_only_within_the_origin(idp: TestUpstream, location: str, followed: bool) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    idp.reply("/jwks.json", Reply(302, [("Location", location.format(port=idp.port))]))
    idp.reply("/moved/jwks.json", Reply(200, [("Content-Type", "application/json")], issuer.jwks_bytes()))
    verdict = check(stage_for(idp, clock), issuer.token(), clock)
    assert isinstance(verdict, Continue) is followed
    assert any(r.target == "/moved/jwks.json" for r in idp.received) is followed


def test_jwks_document_size_is_limited(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1")
    doc = issuer.jwks()
    doc["padding"] = "x" * 4096
    serve(idp, json.dumps(doc).encode())
    verdict = check(stage_for(idp, clock, max_jwks_bytes=2048), issuer.token(), clock)
    assert isinstance(verdict, Deny) and verdict.status == 503


def test_jwks_skips_unusable_keys_and_ambiguous_kids(idp: TestUpstream) -> None:
    clock = FakeClock()
    issuer = TestIssuer().add_ec("k1").add_ec("dup")
    twin = TestIssuer().add_ec("dup")
    keys = [issuer.public("k1"), {"kty": "oct", "k": "c2VjcmV0", "kid": "k1-oct"}, issuer.public("dup")]
    keys += [twin.public("dup"), {**issuer.public("k1"), "kid": "enc", "use": "enc"}]
    serve(idp, json.dumps({"keys": keys}).encode())
    stage = stage_for(idp, clock)
    assert isinstance(check(stage, issuer.token("k1"), clock), Continue)
    assert denied_with(check(stage, issuer.token("dup"), clock), "jwt.unknown_kid")
    # without a kid, the one key that could verify it must not be one whose kid is ambiguous
    other_type = TestIssuer().add_rsa("dup")  # the same kid on an RSA key: only the EC one can verify ES256
    only_dup = json.dumps({"keys": [issuer.public("dup"), other_type.public("dup")]}).encode()
    serve(idp, only_dup)
    lone = stage_for(idp, clock)
    assert denied_with(check(lone, issuer.token("dup", header={"kid": None}), clock), "jwt.unknown_kid")
    assert denied_with(check(stage, issuer.token("k1", header={"kid": "enc"}), clock), "jwt.unknown_kid")

"""`oauth2_introspection` against a real RFC 7662 endpoint: client authentication, caching, failures."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from stockade.clock import FakeClock
from stockade.pipeline.stage import Services, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.stages.authn.introspection import IntrospectionAuthenticator, IntrospectionConfig
from stockade.testing import Reply, TestUpstream, make_context, run_stage

NOW = 1_700_000_000


@pytest.fixture
def idp(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestUpstream]:
    monkeypatch.setenv("TEST_INTROSPECTION_SECRET", "s3cr:et/+")
    with TestUpstream() as up:
        yield up


def answer(up: TestUpstream, doc: dict[str, Any], status: int = 200) -> None:
    up.reply("/introspect", Reply(status, [("Content-Type", "application/json")], json.dumps(doc).encode()))


def calls(up: TestUpstream) -> int:
    return sum(1 for r in up.received if r.target == "/introspect")


def make(up: TestUpstream, clock: FakeClock, **over: Any) -> IntrospectionAuthenticator:
    cfg = {"endpoint": f"{up.url}/introspect", "client_id": "gw", "client_secret_env": "TEST_INTROSPECTION_SECRET"}
    config = IntrospectionConfig.model_validate({**cfg, **over})
    return IntrospectionAuthenticator(config, StageEnv("r", Path("."), Services(clock=clock)))


def check(stage: IntrospectionAuthenticator, token: str, clock: FakeClock) -> Continue | Skip | Deny:
    return run_stage(stage, make_context(headers={"Authorization": f"Bearer {token}"}, clock=clock))


ACTIVE = {"active": True, "sub": "alice", "scope": "books:read", "exp": NOW + 120, "client_id": "app", "iss": "idp"}


def test_introspection_basic_auth_and_positive_cache_until_exp(idp: TestUpstream) -> None:
    clock = FakeClock()
    answer(idp, ACTIVE)
    stage = make(idp, clock, cache_ttl=300)
    verdict = check(stage, "opaque-1", clock)
    assert isinstance(verdict, Continue) and verdict.principal is not None
    assert (verdict.principal.id, verdict.principal.kind, verdict.principal.scopes) == (
        "alice",
        "introspection",
        {"books:read"},
    )
    sent = idp.received[-1]
    assert sent.method == "POST"
    assert parse_qs(sent.body.decode()) == {"token": ["opaque-1"], "token_type_hint": ["access_token"]}
    user, _, password = base64.b64decode(sent.header("authorization").split()[1]).decode().partition(":")  # type: ignore[union-attr]
    assert (user, password) == ("gw", "s3cr%3Aet%2F%2B")  # RFC 6749 §2.3.1 form-encoding before Basic
    clock.advance(119)
    assert isinstance(check(stage, "opaque-1", clock), Continue)
    assert calls(idp) == 1
    clock.advance(2)  # past the token's exp: asked again
    answer(idp, {"active": False})
    assert isinstance(check(stage, "opaque-1", clock), Deny)
    assert calls(idp) == 2


@pytest.mark.parametrize(
    ("doc", "issuer"),
    [
        pytest.param(ACTIVE, "idp", id="iss-named"),
        pytest.param({k: v for k, v in ACTIVE.items() if k != "iss"}, "ENDPOINT", id="no-iss-endpoint-vouches"),
        pytest.param({**ACTIVE, "iss": 7}, "ENDPOINT", id="iss-not-a-string"),
    ],
)
def test_the_principal_names_who_vouched_for_it(idp: TestUpstream, doc: dict[str, Any], issuer: str) -> None:
    """Two authorization servers may both have an `alice`: an answer without `iss` was issuer-less, so the
    `principal` rate-limit key and `x-stockade-issuer` could not tell them apart. The endpoint stands in."""
    clock = FakeClock()
    answer(idp, doc)
    verdict = check(make(idp, clock), "t", clock)
    assert isinstance(verdict, Continue) and verdict.principal is not None
    assert verdict.principal.issuer == issuer.replace("ENDPOINT", f"{idp.url}/introspect")


def test_the_endpoint_named_as_issuer_carries_no_credentials(idp: TestUpstream) -> None:
    """The endpoint URL may hold a user, a password or an API key in its query: none of that goes upstream."""
    clock = FakeClock()
    answer(idp, {k: v for k, v in ACTIVE.items() if k != "iss"})
    endpoint = idp.url.replace("http://", "http://gw:s3cret@") + "/introspect?api_key=k3y#frag"
    verdict = check(make(idp, clock, endpoint=endpoint), "t", clock)
    assert isinstance(verdict, Continue) and verdict.principal is not None
    assert verdict.principal.issuer == f"{idp.url}/introspect"


def test_introspection_client_secret_post(idp: TestUpstream) -> None:
    clock = FakeClock()
    answer(idp, ACTIVE)
    assert isinstance(check(make(idp, clock, auth_method="client_secret_post"), "t", clock), Continue)
    form = parse_qs(idp.received[-1].body.decode())
    assert form["client_id"] == ["gw"] and form["client_secret"] == ["s3cr:et/+"]
    assert idp.received[-1].header("authorization") is None


def test_introspection_inactive_is_401_and_cached_briefly(idp: TestUpstream) -> None:
    clock = FakeClock()
    answer(idp, {"active": False})
    stage = make(idp, clock, negative_ttl=10)
    verdict = check(stage, "revoked", clock)
    assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (401, "auth.invalid_token")
    assert verdict.headers == {"www-authenticate": 'Bearer realm="stockade", error="invalid_token"'}
    check(stage, "revoked", clock)
    assert calls(idp) == 1
    clock.advance(11)
    answer(idp, ACTIVE)
    assert isinstance(check(stage, "revoked", clock), Continue)
    assert calls(idp) == 2


@pytest.mark.parametrize(
    ("doc", "over"),
    [
        ({**ACTIVE, "active": "true"}, {}),
        ({**ACTIVE, "exp": NOW - 1}, {}),
        ({**ACTIVE, "exp": "soon"}, {}),
        ({**ACTIVE, "iss": "other"}, {"issuer": "idp"}),
        ({**ACTIVE, "aud": ["x"]}, {"audiences": ["api"]}),
        ({"active": True}, {}),
        # bound by a method the gateway cannot check (DPoP): refused, never taken as a plain bearer token
        ({**ACTIVE, "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}, {}),
        ({**ACTIVE, "cnf": {"x5t#S256": None, "jkt": "x"}}, {}),
        ({**ACTIVE, "cnf": "bound"}, {}),
    ],
    ids=[
        "active-string",
        "expired",
        "exp-string",
        "wrong-iss",
        "wrong-aud",
        "no-subject",
        "cnf-dpop",
        "cnf-null-thumbprint",
        "cnf-not-object",
    ],
)
def test_introspection_rejects_unacceptable_answers(
    idp: TestUpstream, doc: dict[str, Any], over: dict[str, Any]
) -> None:
    clock = FakeClock()
    answer(idp, doc)
    verdict = check(make(idp, clock, **over), "t", clock)
    assert isinstance(verdict, Deny) and verdict.status == 401


@pytest.mark.parametrize(
    "reply",
    [
        Reply(500, [], b"oops"),
        Reply(200, [], b"not json"),
        Reply(200, [], b"[1]"),
        # over 64 KiB, declared or not: refused as it arrives, never read whole
        Reply(200, [], json.dumps({**ACTIVE, "pad": "x" * 70000}).encode()),
        Reply(
            raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (4096, b" " * 4096) for _ in range(20))
            + b"0\r\n\r\n"
        ),
    ],
    ids=["http-500", "not-json", "not-object", "too-large", "too-large-chunked"],
)
def test_introspection_endpoint_failure_fails_closed_and_is_not_cached(idp: TestUpstream, reply: Reply) -> None:
    clock = FakeClock()
    idp.reply("/introspect", reply)
    stage = make(idp, clock)
    verdict = check(stage, "t", clock)
    assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (503, "auth.unavailable")
    answer(idp, ACTIVE)
    assert isinstance(check(stage, "t", clock), Continue)


def test_introspection_skips_without_bearer(idp: TestUpstream) -> None:
    stage = make(idp, FakeClock())
    assert isinstance(run_stage(stage, make_context()), Skip)
    assert isinstance(run_stage(stage, make_context(headers={"Authorization": "Basic eDp5"})), Skip)


def test_introspection_config_needs_the_secret_and_https(idp: TestUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_INTROSPECTION_SECRET")
    with pytest.raises(ValueError, match="TEST_INTROSPECTION_SECRET"):
        make(idp, FakeClock())
    with pytest.raises(ValueError, match="https"):
        IntrospectionConfig.model_validate(
            {"endpoint": "http://idp.example/i", "client_id": "a", "client_secret_env": "X"}
        )


def test_made_up_tokens_do_not_push_active_ones_out_of_the_cache(idp: TestUpstream) -> None:
    """1,000 junk tokens used to flush a cache of 1,000: every real user's next request was a call again."""
    clock = FakeClock()
    stage = make(idp, clock, cache_size=3)
    answer(idp, ACTIVE)
    for token in ("alice-1", "alice-2"):
        assert isinstance(check(stage, token, clock), Continue)
    answer(idp, {"active": False})
    for n in range(10):
        assert isinstance(check(stage, f"junk-{n}", clock), Deny)
    before = calls(idp)
    clock.advance(5)
    for token in ("alice-1", "alice-2"):
        assert isinstance(check(stage, token, clock), Continue)  # still cached: no call
    assert calls(idp) == before
    for n in (7, 8, 9):  # the newest inactive answers are kept (briefly) too
        assert isinstance(check(stage, f"junk-{n}", clock), Deny)
    assert calls(idp) == before


def test_the_cache_keeps_the_tokens_in_use(idp: TestUpstream) -> None:
    clock = FakeClock()
    stage = make(idp, clock, cache_size=2)
    answer(idp, ACTIVE)
    check(stage, "a", clock)
    check(stage, "b", clock)
    check(stage, "a", clock)  # used again: now the newest
    check(stage, "c", clock)  # pushes out the least recently used, b
    before = calls(idp)
    check(stage, "a", clock)
    assert calls(idp) == before
    check(stage, "b", clock)
    assert calls(idp) == before + 1


def test_calls_under_way_are_capped_and_the_queue_is_bounded(idp: TestUpstream) -> None:
    """At most max_concurrent_calls calls at once; up to 4x as many tokens wait their turn, and beyond that one is
    refused at once (fail closed), neither queued nor sent: a flood cannot become load on the server."""
    import asyncio

    clock = FakeClock()
    stage = make(idp, clock, max_concurrent_calls=2)
    answer(idp, ACTIVE)
    idp.stall()

    async def scenario() -> tuple[list[Continue | Skip | Deny], Continue | Skip | Deny, int]:
        ctxs = [make_context(headers={"Authorization": f"Bearer t{n}"}, clock=clock) for n in range(9)]
        queued = [asyncio.ensure_future(stage.check(c)) for c in ctxs[:8]]  # 2 calling, 6 waiting
        while calls(idp) < 2:  # the first two calls have reached the (stalled) endpoint
            await asyncio.sleep(0.01)
        for _ in range(5):
            await asyncio.sleep(0)
        sent_while_stalled = calls(idp)
        ninth = await stage.check(ctxs[8])  # 8 under way or waiting already: refused at once
        idp.release()
        return list(await asyncio.gather(*queued)), ninth, sent_while_stalled

    queued, ninth, sent_while_stalled = asyncio.run(scenario())
    assert sent_while_stalled == 2  # never more than max_concurrent_calls at once
    assert all(isinstance(v, Continue) for v in queued)  # the waiting ones were served in turn
    assert isinstance(ninth, Deny) and (ninth.status, ninth.reason) == (503, "auth.unavailable")
    assert calls(idp) == 8


def test_a_token_waits_for_a_call_slot_no_longer_than_the_pipeline_timeout(idp: TestUpstream) -> None:
    """A queued call made after its request gave up would be load nobody waits for."""
    import asyncio

    clock = FakeClock()
    cfg = {"endpoint": f"{idp.url}/introspect", "client_id": "gw", "client_secret_env": "TEST_INTROSPECTION_SECRET"}
    stage = IntrospectionAuthenticator(
        IntrospectionConfig.model_validate({**cfg, "max_concurrent_calls": 1}),
        StageEnv("r", Path("."), Services(clock=clock)),
    )
    stage._slot_wait = 0.2  # the gateway's pipeline_timeout, shortened for the test
    answer(idp, ACTIVE)
    idp.stall()

    async def scenario() -> tuple[Continue | Skip | Deny, Continue | Skip | Deny]:
        first = asyncio.ensure_future(stage.check(make_context(headers={"Authorization": "Bearer a"}, clock=clock)))
        while calls(idp) < 1:
            await asyncio.sleep(0.01)
        second = await stage.check(make_context(headers={"Authorization": "Bearer b"}, clock=clock))
        idp.release()
        return await first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first, Continue)
    assert isinstance(second, Deny) and (second.status, second.reason) == (503, "auth.unavailable")
    assert calls(idp) == 1  # b's call was never made

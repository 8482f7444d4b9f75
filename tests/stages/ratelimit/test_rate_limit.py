"""rate_limit through a real gateway: 429 problem+json with Retry-After, IETF RateLimit fields on allowed and
refused responses, cost weights, plans, global limits and the pre-auth variant."""

from __future__ import annotations

import orjson
import pytest

from stockade.testing import TestGateway, gateway_with_upstream
from tests.stages.ratelimit.sfv import parse_list

ACCEPTANCE = """
stages:
  - use: anonymous
  - use: rate_limit
    config:
      limits:
        - {rate: "5/minute", key: ip}
routes:
  - id: items
    match: {path: /items}
    upstream: "{upstream}"
"""


def route(stages: str, *, head: str = "", path: str = "/items") -> str:
    return f"""
{head}
routes:
  - id: items
    match: {{path: {path}}}
    upstream: "{{upstream}}"
    stages:
{stages}
"""


def statuses(gw: TestGateway, n: int, method: str = "GET", path: str = "/items", **kw: object) -> list[int]:
    return [gw.request(method, path, **kw)[0] for _ in range(n)]  # type: ignore[arg-type]


def test_acceptance_interface_limits_then_429_with_retry_after_and_ratelimit() -> None:
    with gateway_with_upstream(ACCEPTANCE) as (gw, up):
        allowed = [gw.request("GET", "/items") for _ in range(5)]
        status, headers, body = gw.request("GET", "/items")
    assert [s for s, _, _ in allowed] == [200] * 5 and len(up.received) == 5
    assert status == 429
    assert headers["content-type"] == "application/problem+json"
    doc = orjson.loads(body)
    assert doc["reason"] == "rate_limit.exceeded" and doc["status"] == 429
    assert headers["retry-after"] == "12"  # one interval of 5/minute, in whole seconds
    assert parse_list(headers["ratelimit"]) == {"ip-5-per-60s": {"r": 0, "t": 60}}
    assert parse_list(headers["ratelimit-policy"]) == {"ip-5-per-60s": {"q": 5, "w": 60}}


def test_allowed_responses_carry_policy_and_remaining() -> None:
    with gateway_with_upstream(ACCEPTANCE) as (gw, _up):
        seen = [gw.request("GET", "/items")[1] for _ in range(3)]
        gw.advance(30)
        later = gw.request("GET", "/items")[1]
    assert [parse_list(h["ratelimit"])["ip-5-per-60s"] for h in seen] == [
        {"r": 4, "t": 12},
        {"r": 3, "t": 24},
        {"r": 2, "t": 36},
    ]
    assert parse_list(later["ratelimit"])["ip-5-per-60s"] == {"r": 3, "t": 18}  # 2 left + 2.5 refilled - this one
    assert all("x-ratelimit-limit" not in h for h in seen)


def test_retry_after_is_honest_to_the_second() -> None:
    with gateway_with_upstream(ACCEPTANCE) as (gw, _up):
        statuses(gw, 5)
        gw.advance(11.5)
        status, headers, _ = gw.request("GET", "/items")
        assert (status, headers["retry-after"]) == (429, "1")  # 0.5 s left, rounded up
        gw.advance(0.5)
        assert gw.request("GET", "/items")[0] == 200


def test_several_limits_and_legacy_headers() -> None:
    stages = """
      - use: anonymous
      - use: rate_limit
        config:
          legacy_headers: true
          limits:
            - {name: burst, rate: "10/second", burst: 3, key: ip}
            - {name: hourly, rate: "100/hour", algorithm: sliding_window, key: ip}
            - {name: daily, quota: "4/day", key: ip, timezone: Europe/Berlin}
"""
    with gateway_with_upstream(route(stages)) as (gw, _up):
        first = gw.request("GET", "/items")[1]
        assert statuses(gw, 3) == [200, 200, 429]  # the burst of 3 is used up
        gw.advance(1)
        assert gw.request("GET", "/items")[0] == 200
        status, headers, _ = gw.request("GET", "/items")  # the day's 4 are used up: refused until local midnight
    assert parse_list(first["ratelimit-policy"]) == {
        "burst": {"q": 3, "w": 1},  # 3 at 10/second refill in 0.3 s, rounded up
        "hourly": {"q": 100, "w": 3600},
        "daily": {"q": 4},
    }
    fields = parse_list(first["ratelimit"])
    assert fields["burst"]["r"] == 2 and fields["hourly"]["r"] == 99 and fields["daily"]["r"] == 3
    assert (first["x-ratelimit-limit"], first["x-ratelimit-remaining"]) == ("3", "2")  # the binding limit
    assert status == 429
    midnight = int(parse_list(headers["ratelimit"])["daily"]["t"])
    assert int(headers["retry-after"]) == midnight > 0
    assert headers["x-ratelimit-remaining"] == "0"


def test_headers_false_keeps_allowed_responses_clean_but_429_still_explains() -> None:
    stages = """
      - use: anonymous
      - use: rate_limit
        config: {headers: false, limits: [{rate: "1/hour", key: ip}]}
"""
    with gateway_with_upstream(route(stages)) as (gw, _up):
        ok = gw.request("GET", "/items")[1]
        status, refused, _ = gw.request("GET", "/items")
    assert "ratelimit" not in ok and "ratelimit-policy" not in ok
    assert status == 429 and "ratelimit" in refused and refused["retry-after"] == "3600"


def test_upstream_ratelimit_fields_are_replaced_not_mixed() -> None:
    with gateway_with_upstream(ACCEPTANCE.replace("/items", "/headers")) as (gw, _up):
        _, headers, _ = gw.request("GET", "/headers?RateLimit=%22up%22;r=1000&RateLimit-Policy=%22up%22;q=1")
    assert list(parse_list(headers["ratelimit"])) == ["ip-5-per-60s"]
    assert list(parse_list(headers["ratelimit-policy"])) == ["ip-5-per-60s"]


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (["POST", "GET", "GET", "GET"], [200, 200, 200, 429]),  # 3 + 1 + 1 = 5, then nothing left
        (["POST", "POST"], [200, 429]),
        (["OPTIONS"] * 8, [200] * 8),  # cost 0: not counted
        (["DELETE", "GET"], [200, 429]),  # the route's default cost for DELETE is 5
        (["HEAD", "HEAD", "HEAD", "HEAD", "HEAD", "HEAD"], [200] * 5 + [429]),  # HEAD costs what GET does
    ],
    ids=["post-then-gets", "two-posts", "free-options", "default", "head-as-get"],
)
def test_cost_weights_per_method(sequence: list[str], expected: list[int]) -> None:
    stages = """
      - use: anonymous
      - use: rate_limit
        config:
          cost: {POST: 3, GET: 1, OPTIONS: 0, default: 5}
          limits: [{rate: "5/hour", key: ip}]
"""
    with gateway_with_upstream(route(stages)) as (gw, _up):
        assert [gw.request(m, "/items")[0] for m in sequence] == expected


def test_cost_per_route_on_separate_counters() -> None:
    config = """
routes:
  - id: cheap
    match: {path: /cheap}
    upstream: "{upstream}"
    stages: [{use: anonymous}, {use: rate_limit, config: {limits: [{rate: "4/hour", key: ip}]}}]
  - id: search
    match: {path: /search}
    upstream: "{upstream}"
    stages: [{use: anonymous}, {use: rate_limit, config: {cost: 2, limits: [{rate: "4/hour", key: ip}]}}]
"""
    with gateway_with_upstream(config) as (gw, _up):
        assert statuses(gw, 3, path="/search") == [200, 200, 429]
        assert statuses(gw, 5, path="/cheap") == [200, 200, 200, 200, 429]


def test_global_limit_spans_routes_unless_keyed_by_route() -> None:
    config = """
stages:
  - use: anonymous
  - use: rate_limit
    config:
      limits:
        - {name: everywhere, rate: "3/hour", key: ip}
        - {name: per-route, rate: "2/hour", key: [ip, route]}
routes:
  - {id: a, match: {path: /a}, upstream: "{upstream}"}
  - {id: b, match: {path: /b}, upstream: "{upstream}"}
"""
    with gateway_with_upstream(config) as (gw, _up):
        assert statuses(gw, 2, path="/a") == [200, 200]
        assert statuses(gw, 1, path="/a") == [429]  # per-route spent
        status, headers, _ = gw.request("GET", "/b")
        assert status == 200 and parse_list(headers["ratelimit"])["everywhere"]["r"] == 0
        assert statuses(gw, 1, path="/b") == [429]  # the global 3 are spent across both routes


def test_plans_override_limits_per_principal() -> None:
    stages = """
      - use: test_auth
      - use: rate_limit
        config:
          limits: [{name: default, rate: "2/hour", key: consumer}]
          plans:
            gold: [{name: gold, rate: "5/hour", key: consumer}]
            banned: [{name: none, rate: "1/day", key: consumer, cost: 1}]
"""
    with gateway_with_upstream(route(stages)) as (gw, _up):
        gold = {"x-user": "ann", "x-password": "right", "x-plan": "gold"}
        free = {"x-user": "bob", "x-password": "right"}
        other = {"x-user": "cy", "x-password": "right", "x-plan": "platinum"}  # a plan the config does not know
        assert statuses(gw, 6, headers=gold) == [200] * 5 + [429]
        assert statuses(gw, 3, headers=free) == [200, 200, 429]
        assert statuses(gw, 3, headers=other) == [200, 200, 429]  # unknown plans get the route's limits
        _, headers, _ = gw.request("GET", "/items", headers={**gold, "x-user": "dee"})
    assert list(parse_list(headers["ratelimit-policy"])) == ["gold"]


def test_pre_auth_limit_refuses_before_authentication_runs() -> None:
    stages = """
      - use: pre_auth_rate_limit
        config: {limits: [{name: ip, rate: "3/hour", key: ip}]}
      - use: test_auth
      - use: rate_limit
        config: {limits: [{name: user, rate: "10/hour", key: principal}]}
"""
    with gateway_with_upstream(route(stages)) as (gw, _up):
        wrong = {"x-user": "ann", "x-password": "wrong"}
        assert statuses(gw, 2, headers=wrong) == [401, 401]  # counted before authentication
        status, headers, _ = gw.request("GET", "/items", headers={"x-user": "ann", "x-password": "right"})
        assert status == 200
        assert list(parse_list(headers["ratelimit"])) == ["ip", "user"]  # both limiters' fields, once each
        assert list(parse_list(headers["ratelimit-policy"])) == ["ip", "user"]
        status, headers, body = gw.request("GET", "/items", headers=wrong)
    assert status == 429 and b"rate_limit.exceeded" in body  # not a 401: the credential was never checked


def test_missing_key_value_shares_a_bucket_or_skips() -> None:
    stages = """
      - use: test_auth
      - use: anonymous
      - use: rate_limit
        config:
          limits:
            - {name: tenant, rate: "2/hour", key: "claim:tenant"}
            - {name: team, rate: "3/hour", key: "header:x-team", missing: skip}
"""
    with gateway_with_upstream(route(stages)) as (gw, _up):
        t1 = {"x-user": "ann", "x-password": "right", "x-tenant": "t1"}
        assert statuses(gw, 3, headers=t1) == [200, 200, 429]
        assert statuses(gw, 3) == [200, 200, 429]  # anonymous: no claim, one shared bucket for all of them
        _, headers, _ = gw.request("GET", "/items", headers={"x-user": "bob", "x-password": "right", "x-tenant": "t2"})
    assert list(parse_list(headers["ratelimit"])) == ["tenant"]  # no x-team header: that limit does not apply

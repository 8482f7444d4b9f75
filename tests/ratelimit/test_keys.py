"""Key extraction: each key kind, combinations, hashing of unsafe values, IPv6 grouping, and the client IP
taken only from trusted proxies (spoofed X-Forwarded-For from anyone else is ignored)."""

from __future__ import annotations

import pytest

from stockade.pipeline.principal import Principal
from stockade.ratelimit.keys import MISSING, IpGrouper, encode, extractor
from stockade.ratelimit.limits import LimitConfig
from stockade.ratelimit.limitset import LimitSet
from stockade.testing import gateway_with_upstream, make_context

ANN = Principal(
    id="user:ann",
    kind="api_key",
    consumer_id="acme",
    plan="gold",
    credential_id="key_7",
    claims={"tenant": "t-1", "org": {"id": 5}, "admin": True, "n": 42},
)


def ctx_with(principal: Principal | None = ANN, **kw: object):  # type: ignore[no-untyped-def]
    ctx = make_context(**kw)  # type: ignore[arg-type]
    ctx.principal = principal
    ctx.route_id = "items"
    return ctx


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("ip", "198.51.100.7"),
        ("principal", "user:ann"),
        ("consumer", "acme"),
        ("api_key", "key_7"),
        ("route", "items"),
        ("claim:tenant", "t-1"),
        ("claim:n", "42"),
        ("claim:admin", "true"),
        ("claim:org", encode('{"id":5}')),
        ("claim:absent", None),
    ],
)
def test_extractor_reads_each_kind(part: str, expected: str | None) -> None:
    assert extractor(part)(ctx_with(client_ip="198.51.100.7")) == expected


def test_the_principal_key_tells_issuers_apart() -> None:
    """`alice` at a less-trusted issuer shared the bucket of another issuer's `alice`."""
    get = extractor("principal")
    a = get(ctx_with(Principal(id="alice", kind="jwt", issuer="https://a.example")))
    b = get(ctx_with(Principal(id="alice", kind="jwt", issuer="https://b.example")))
    assert a is not None and b is not None and a != b
    assert get(ctx_with(Principal(id="alice", kind="api_key"))) == "alice"  # no issuer: the id as before


@pytest.mark.parametrize("part", ["principal", "consumer", "api_key", "claim:tenant"])
def test_principal_parts_are_missing_before_authentication(part: str) -> None:
    assert extractor(part)(ctx_with(None)) is None


def test_header_values_are_hashed_and_cover_every_copy() -> None:
    get = extractor("header:x-tenant")
    one = get(ctx_with(headers=[("X-Tenant", "t1")]))
    two = get(ctx_with(headers=[("X-Tenant", "t1"), ("x-tenant", "t2")]))
    assert one is not None and one.startswith("#") and "t1" not in one  # a header may carry a secret
    assert two not in (None, one)  # adding a second copy does not land in the first copy's bucket
    assert get(ctx_with(headers=[])) is None


@pytest.mark.parametrize(
    ("value", "kept"),
    [("acme", True), ("user@example.com", True), ("a{b}", False), ("x|y", False), ("a b", False), ("é", False)],
)
def test_encode_keeps_plain_values_and_hashes_the_rest(value: str, kept: bool) -> None:
    out = encode(value)
    assert (out == value) is kept
    assert "{" not in out and "}" not in out and "|" not in out


def test_encode_of_long_values_is_bounded() -> None:
    assert len(encode("k" * 10_000)) == 33


@pytest.mark.parametrize(
    ("prefix", "ip", "group"),
    [
        (64, "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        (64, "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        (48, "2001:db8:1:2::1", "2001:db8:1::/48"),
        (128, "2001:db8::1", "2001:db8::1"),
        (64, "203.0.113.9", "203.0.113.9"),
    ],
)
def test_ipv6_clients_are_grouped_by_prefix(prefix: int, ip: str, group: str) -> None:
    assert IpGrouper(prefix)(ip) == group


def test_combination_keys_and_shared_hash_tag() -> None:
    lset = LimitSet(
        [
            LimitConfig(name="a", rate="5/minute", key=("consumer", "route")),
            LimitConfig(name="b", quota="100/day", key="consumer"),
            LimitConfig(name="c", concurrency=3, key=("consumer", "header:x-region")),
        ],
        "rate_limit:items:",
        prefix="p:",
    )
    hits, used = lset.hits(ctx_with(headers=[("x-region", "eu")]), 1_700_000_000.0)
    keys = [h[1] for h in hits]
    assert [lim.name for lim in used] == ["a", "b", "c"]
    assert all(k.startswith("p:{acme}:rate_limit:items::") for k in keys)  # consumer: common to all, the tag
    assert keys[0].endswith(":a:g:items") and ":b:q:2023-11-14" in keys[1] and ":c:c:#" in keys[2]


def test_no_common_part_falls_back_to_the_namespace_tag() -> None:
    lset = LimitSet(
        [LimitConfig(name="a", rate="5/minute", key="ip"), LimitConfig(name="b", rate="5/minute", key="consumer")],
        "rate_limit:items:",
    )
    hits, _ = lset.hits(ctx_with(client_ip="192.0.2.1"), 0.0)
    assert [h[1] for h in hits] == [
        "{rate_limit:items:}:rate_limit:items::a:g:192.0.2.1",
        "{rate_limit:items:}:rate_limit:items::b:g:acme",
    ]


def test_missing_values_share_one_marker_bucket() -> None:
    lset = LimitSet([LimitConfig(name="a", rate="5/minute", key="consumer")], "ns")
    hits, _ = lset.hits(ctx_with(None), 0.0)
    assert hits[0][1] == "{" + MISSING + "}:ns:a:g"


XFF = """
{trusted}
stages:
  - use: anonymous
  - use: rate_limit
    config: {{limits: [{{rate: "2/hour", key: ip}}]}}
routes:
  - {{id: items, match: {{path: /items}}, upstream: "{{upstream}}"}}
"""


def test_client_ip_from_trusted_proxy_xff_separates_clients() -> None:
    with gateway_with_upstream(XFF.format(trusted="trusted_proxies: [127.0.0.1/32]")) as (gw, _up):
        a = {"X-Forwarded-For": "203.0.113.1"}
        b = {"X-Forwarded-For": "203.0.113.2"}
        assert [gw.request("GET", "/items", headers=a)[0] for _ in range(3)] == [200, 200, 429]
        assert [gw.request("GET", "/items", headers=b)[0] for _ in range(3)] == [200, 200, 429]
        # a client behind the proxy cannot pick a fresh bucket by prepending addresses: the rightmost
        # untrusted hop is the client
        spoof = {"X-Forwarded-For": "10.9.9.9, 203.0.113.1"}
        assert gw.request("GET", "/items", headers=spoof)[0] == 429


def test_spoofed_xff_from_untrusted_peer_is_ignored() -> None:
    with gateway_with_upstream(XFF.format(trusted="")) as (gw, _up):
        results = [gw.request("GET", "/items", headers={"X-Forwarded-For": f"203.0.113.{i}"})[0] for i in range(1, 4)]
    assert results == [200, 200, 429]  # all counted as the real peer, 127.0.0.1

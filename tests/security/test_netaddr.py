"""CIDR sets and the X-Forwarded-For walk."""

from __future__ import annotations

import pytest

from stockade.security.forwarded import client_ip, forwarded_for
from stockade.security.netaddr import NetSet, canonical_ip, parse_ip

MEMBERSHIP = [
    ("ipv4-in", ["10.0.0.0/8"], "10.1.2.3", True),
    ("ipv4-out", ["10.0.0.0/8"], "11.1.2.3", False),
    ("host-route", ["192.0.2.7/32"], "192.0.2.7", True),
    ("host-route-neighbour", ["192.0.2.7/32"], "192.0.2.8", False),
    ("ipv4-mapped-ipv6", ["10.0.0.0/8"], "::ffff:10.0.0.1", True),
    ("ipv6-in", ["2001:db8::/32"], "2001:db8::1", True),
    ("ipv6-out", ["2001:db8::/32"], "2001:db9::1", False),
    ("ipv6-zone-id", ["fe80::/10"], "fe80::1%eth0", True),
    ("bracketed", ["2001:db8::/32"], "[2001:db8::1]", True),
    ("garbage", ["0.0.0.0/0"], "not-an-ip", False),
    ("empty", ["0.0.0.0/0"], "", False),
    ("any-v4", ["0.0.0.0/0"], "203.0.113.5", True),
    ("v4-net-does-not-match-v6", ["0.0.0.0/0"], "2001:db8::1", False),
    ("several-prefixes", ["10.0.0.0/8", "192.168.1.0/24", "172.16.0.0/12"], "172.20.1.1", True),
    ("non-strict-network", ["10.1.2.3/8"], "10.200.0.1", True),
    ("leading-zeros-refused", ["10.0.0.0/8"], "010.0.0.1", False),
    # a rule written IPv4-mapped is the IPv4 network it maps (clients are compared unmapped)
    ("mapped-rule-v4-client", ["::ffff:127.0.0.1"], "127.0.0.1", True),
    ("mapped-rule-mapped-client", ["::ffff:192.0.2.0/120"], "::ffff:192.0.2.7", True),
    ("mapped-rule-network", ["::ffff:10.0.0.0/104"], "10.1.2.3", True),
    ("mapped-rule-other", ["::ffff:10.0.0.0/104"], "11.1.2.3", False),
]


@pytest.mark.parametrize(("nets", "ip", "inside"), [c[1:] for c in MEMBERSHIP], ids=[c[0] for c in MEMBERSHIP])
def test_netset_membership(nets: list[str], ip: str, inside: bool) -> None:
    s = NetSet(nets)
    assert (ip in s) is inside
    assert (ip in s) is inside  # cached answer is the same


def test_canonical_ip_maps_ipv4_in_ipv6() -> None:
    assert canonical_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert canonical_ip("2001:DB8::1") == "2001:db8::1"
    assert parse_ip("nonsense") is None


TRUSTED = NetSet(["10.0.0.0/8", "127.0.0.1/32"])

WALKS = [
    ("untrusted-peer-ignores-xff", "203.0.113.1", ["1.2.3.4"], "203.0.113.1"),
    ("trusted-peer-one-hop", "10.0.0.1", ["1.2.3.4"], "1.2.3.4"),
    ("spoofed-leftmost", "10.0.0.1", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),
    ("trusted-chain", "10.0.0.1", ["1.2.3.4, 10.0.0.2, 10.0.0.3"], "1.2.3.4"),
    ("all-trusted", "10.0.0.1", ["10.0.0.9"], "10.0.0.9"),
    ("several-header-lines", "10.0.0.1", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),
    ("garbage-hop-stops-walk", "10.0.0.1", ["1.2.3.4, garbage"], "10.0.0.1"),
    ("mapped-hop", "10.0.0.1", ["::ffff:1.2.3.4"], "1.2.3.4"),
    ("empty-values", "10.0.0.1", [], "10.0.0.1"),
    # Azure Application Gateway and IIS/ARR send the client's port: without it every client was the proxy
    ("v4-with-port", "10.0.0.1", ["1.2.3.4:5000"], "1.2.3.4"),
    ("v6-with-port", "10.0.0.1", ["[2001:db8::7]:443"], "2001:db8::7"),
    ("quoted-v6-with-port", "10.0.0.1", ['"[2001:db8::7]:443"'], "2001:db8::7"),
    ("bare-v6-is-not-a-port", "10.0.0.1", ["2001:db8::7"], "2001:db8::7"),
    ("bad-port", "10.0.0.1", ["1.2.3.4:99999"], "10.0.0.1"),
    ("port-on-trusted-hop", "10.0.0.1", ["1.2.3.4:1, 10.0.0.2:2"], "1.2.3.4"),
]


@pytest.mark.parametrize(("peer", "xff", "expected"), [c[1:] for c in WALKS], ids=[c[0] for c in WALKS])
def test_client_ip_walk(peer: str, xff: list[str], expected: str) -> None:
    assert client_ip(peer, xff, TRUSTED) == expected


def test_forwarded_for_appends_peer_only_when_trusted() -> None:
    assert forwarded_for("10.0.0.1", ["1.2.3.4"], TRUSTED) == "1.2.3.4, 10.0.0.1"
    assert forwarded_for("203.0.113.1", ["1.2.3.4"], TRUSTED) == "203.0.113.1"
    assert forwarded_for("10.0.0.1", [], TRUSTED) == "10.0.0.1"

"""Redis Cluster addressing without a server: the slot of a key (CRC16 of its hash tag, per the Cluster spec)
and the `redis+cluster://` URL (seed nodes, options, database 0 only)."""

from __future__ import annotations

import pytest

from stockade.ratelimit.cluster import _redirect, key_slot
from stockade.ratelimit.resp import RedisUrl


def crc16_xmodem(data: bytes) -> int:
    """The spec's CRC16 (XMODEM: polynomial 0x1021, initial 0), bit by bit: a reference independent of ours."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def test_reference_crc_has_the_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # the CRC16/XMODEM check value the spec's code gives


@pytest.mark.parametrize(
    ("key", "hashed"),
    [
        ("123456789", "123456789"),
        ("foo", "foo"),
        ("{bf}:ip:203.0.113.7", "bf"),  # every lockout lands in one slot
        ("{user1000}.following", "user1000"),
        ("{user1000}.followers", "user1000"),
        ("foo{}{bar}", "foo{}{bar}"),  # an empty tag: the whole key is hashed
        ("foo{{bar}}zap", "{bar"),  # the tag runs from the first `{` to the next `}`
        ("foo{bar}{zap}", "bar"),  # only the first tag counts
        ("no-closing{brace", "no-closing{brace"),
        ("stockade:{198.51.100.7}:rate_limit:items::ip-5-per-60s:g", "198.51.100.7"),
        ("p:{\u00fc}:x", "\u00fc"),  # a non-ASCII tag: its UTF-8 bytes
    ],
    ids=[
        "check-value",
        "plain",
        "lockout",
        "tag-a",
        "tag-b",
        "empty-tag",
        "nested-brace",
        "first-tag",
        "unclosed",
        "limit-key",
        "utf8",
    ],
)
def test_key_slot_hashes_the_hash_tag_per_the_cluster_spec(key: str, hashed: str) -> None:
    assert key_slot(key) == crc16_xmodem(hashed.encode()) % 16384


def test_key_slot_of_a_known_key() -> None:
    assert key_slot("foo") == 12182  # what CLUSTER KEYSLOT foo answers (and the spec's example MOVED reply)


def test_cluster_url_names_seed_nodes_and_keeps_every_option() -> None:
    url = RedisUrl.parse(
        "rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2,[2001:db8::1]:7002/0"
        "?prefix=gw:&timeout=0.2&connect_timeout=2&retry=3"
    )
    assert url.cluster and url.tls
    assert url.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("2001:db8::1", 7002))
    assert (url.host, url.port, url.db) == ("10.0.0.1", 7000, 0)
    assert (url.username, url.password, url.prefix) == ("app", "p@ss", "gw:")
    assert (url.timeout, url.connect_timeout, url.retry) == (0.2, 2.0, 3.0)


def test_standalone_url_is_not_a_cluster() -> None:
    url = RedisUrl.parse("redis://127.0.0.1:6380/2")
    assert not url.cluster and url.seeds == (("127.0.0.1", 6380),) and url.db == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://127.0.0.1:7000/1", "Redis Cluster has only database 0"),
        ("redis+cluster://", "name at least one seed node"),
        ("redis+cluster://127.0.0.1:7000,,127.0.0.1:7001", "empty seed node"),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:99999", "bad port"),
        ("redis+cluster://127.0.0.1:7000?cluster=1", r"unknown option\(s\) cluster"),
        ("redis://127.0.0.1:7000,127.0.0.1:7001/0", "for Redis Cluster use redis\\+cluster://"),
    ],
    ids=["db", "no-seed", "empty-seed", "port", "option", "standalone-with-seeds"],
)
def test_bad_cluster_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisUrl.parse(url)


@pytest.mark.parametrize(
    ("message", "redirect"),
    [
        ("MOVED 3999 127.0.0.1:6381", (True, 3999, "127.0.0.1", 6381)),
        ("ASK 3999 10.0.0.2:7000", (False, 3999, "10.0.0.2", 7000)),
        ("MOVED 3999 :6381", (True, 3999, "", 6381)),  # endpoint unknown to the node: the one that answered
        ("MOVED 12 2001:db8::7:6379", (True, 12, "2001:db8::7", 6379)),  # IPv6 comes without brackets
        ("CLUSTERDOWN The cluster is down", None),
        ("TRYAGAIN Multiple keys request during rehashing of slot", None),
        ("MOVED nonsense", None),
    ],
    ids=["moved", "ask", "no-host", "ipv6", "clusterdown", "tryagain", "garbled"],
)
def test_redirections_are_read_from_the_error(message: str, redirect: tuple[bool, int, str, int] | None) -> None:
    assert _redirect(message) == redirect

"""What a limit counts by: the request attributes a key names (`ip`, `consumer`, `header:x-tenant`, ...)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable

import orjson

from stockade.pipeline.context import RequestContext
from stockade.pipeline.principal import Principal

SIMPLE_KINDS = ("ip", "principal", "consumer", "api_key", "route")
PRINCIPAL_KINDS = frozenset({"principal", "consumer", "api_key", "claim"})  # known only after authentication
MISSING = "~"  # stands for an absent value; never produced by encode(), so it cannot collide with a real one

_HEADER = re.compile(r"^header:([!#$%&'*+.^_`|~0-9A-Za-z-]+)$")
_CLAIM = re.compile(r"^claim:([A-Za-z0-9_.:@-]{1,64})$")
# Values made only of these characters, and short, are kept readable in counter keys; anything else (braces
# that would move a Redis Cluster hash tag, separators, glob characters, long or binary values) is hashed.
_SAFE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,64}$")
_V6_CACHE_MAX = 16384

Extractor = Callable[[RequestContext], "str | None"]


def validate_part(part: str) -> str:
    """Check one key part; returns it normalised (headers lower-case). Raises ValueError naming the choices."""
    if part in SIMPLE_KINDS:
        return part
    m = _HEADER.match(part)
    if m is not None:
        return f"header:{m.group(1).lower()}"
    if _CLAIM.match(part):
        return part
    raise ValueError(
        f"unknown key {part!r}; use {', '.join(SIMPLE_KINDS)}, 'header:<name>', 'claim:<name>' or a list of these"
    )


def part_kind(part: str) -> str:
    return part.partition(":")[0]


def encode(value: str) -> str:
    """A key-safe form of `value`: itself if short and plain, else `#` + a SHA-256 prefix."""
    if _SAFE.match(value):
        return value
    return "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _hashed(value: str) -> str:
    return "#" + hashlib.sha256(value.encode("latin-1", "replace")).hexdigest()[:32]


class IpGrouper:
    """Client addresses as counted: IPv4 as is, IPv6 by its /`prefix` network (one subscriber's allocation,
    which a client can rotate through freely)."""

    __slots__ = ("_cache", "_shift")

    def __init__(self, prefix: int) -> None:
        self._shift = 128 - prefix
        self._cache: dict[str, str] = {}

    def __call__(self, ip: str) -> str:
        if ":" not in ip or self._shift == 0:
            return ip
        hit = self._cache.get(ip)
        if hit is None:
            try:
                value = int(ipaddress.IPv6Address(ip)) >> self._shift << self._shift
            except ValueError:
                return encode(ip)
            hit = f"{ipaddress.IPv6Address(value)}/{128 - self._shift}"
            if len(self._cache) >= _V6_CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


def _claim_value(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return encode(value)
    if isinstance(value, bool | int | float):
        return encode(str(value).lower() if isinstance(value, bool) else str(value))
    return encode(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


def extractor(part: str, ipv6_prefix: int = 64) -> Extractor:
    """A function returning the key-safe value of `part` for a request, or None if the request has none."""
    if part == "ip":
        group = IpGrouper(ipv6_prefix)
        return lambda ctx: group(ctx.client_ip) if ctx.client_ip else None
    if part == "route":
        return lambda ctx: ctx.route_id or None
    if part == "principal":
        return lambda ctx: _principal(ctx.principal) if ctx.principal is not None else None
    if part == "consumer":
        return lambda ctx: encode(c) if ctx.principal is not None and (c := ctx.principal.consumer_id) else None
    if part == "api_key":
        return lambda ctx: encode(c) if ctx.principal is not None and (c := ctx.principal.credential_id) else None
    kind, _, name = part.partition(":")
    if kind == "header":
        # Header values are hashed always: a header named as a key may carry a secret, and Redis is no place
        # for one. Every value of a repeated header is included, so adding a copy cannot pick another bucket.
        def header(ctx: RequestContext) -> str | None:
            values = ctx.headers.get_all(name)
            return _hashed("\n".join(values)) if values else None

        return header
    if kind == "claim":
        return lambda ctx: _claim_value(ctx.principal.claims.get(name)) if ctx.principal is not None else None
    raise ValueError(f"unknown key {part!r}")


def _principal(p: Principal) -> str:
    """The `principal` key part: the id, with its issuer when one vouches for it (`alice` of issuer A and
    `alice` of issuer B are two callers, not one bucket)."""
    return encode(p.id) if p.issuer is None else encode(f"{p.issuer}\x00{p.id}")

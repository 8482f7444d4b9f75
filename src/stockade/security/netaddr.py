"""Compiled IP address sets (CIDR lists) with a bounded per-address cache."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

_CACHE_MAX: Final = 65536


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an address, mapping IPv4-mapped IPv6 to IPv4 and dropping a zone id; None if invalid."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def check_networks(items: Iterable[str]) -> None:
    """Raise ValueError naming the first entry that is not an IP address or CIDR network (config validation)."""
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None


def canonical_ip(text: str) -> str:
    """The address in canonical text form (so '::ffff:10.0.0.1' and '10.0.0.1' compare equal)."""
    addr = parse_ip(text)
    return str(addr) if addr is not None else text


_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`::ffff:192.0.2.0/120` as the IPv4 network it is (192.0.2.0/24): client addresses are compared in that
    form (`parse_ip` unmaps them), so a rule written mapped would otherwise never match anything."""
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


class NetSet:
    """Membership of an address in a set of networks: one set lookup per distinct prefix length."""

    __slots__ = ("_cache", "_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        nets = [_unmapped(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n) for n in networks]
        self.networks = tuple(nets)
        self._v4: list[tuple[int, set[int]]] = []
        self._v6: list[tuple[int, set[int]]] = []
        for bits, table, version in ((32, self._v4, 4), (128, self._v6, 6)):
            by_len: dict[int, set[int]] = {}
            for net in nets:
                if net.version == version:
                    by_len.setdefault(net.prefixlen, set()).add(int(net.network_address) >> (bits - net.prefixlen))
            table.extend((bits - plen, values) for plen, values in sorted(by_len.items()))
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        hit = self._cache.get(ip)
        if hit is None:
            hit = self._lookup(ip)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        return hit

    def _lookup(self, ip: str) -> bool:
        addr = parse_ip(ip)
        if addr is None:
            return False
        value = int(addr)
        table = self._v4 if addr.version == 4 else self._v6
        return any((value >> shift) in values for shift, values in table)

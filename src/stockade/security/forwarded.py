"""X-Forwarded-* handling: who the client is, trusting only configured proxies."""

from __future__ import annotations

import ipaddress
import re

from stockade.security.netaddr import NetSet, canonical_ip, parse_ip


def client_ip(peer_ip: str, xff_values: list[str], trusted: NetSet) -> str:
    """The client address: the peer, unless the peer is a trusted proxy; then the rightmost untrusted XFF hop.

    Walking from the right stops at the first address that is not a trusted proxy: everything to its
    left was written by parties we do not trust. An unparsable hop also stops the walk, and the last
    trusted address seen is used, so garbage never becomes the client address.
    """
    if not trusted or peer_ip not in trusted or not xff_values:
        return peer_ip
    current = peer_ip
    for value in reversed(xff_values):
        for hop in reversed(value.split(",")):
            addr = _hop_address(hop)
            if addr is None:
                return current
            current = str(addr)
            if current not in trusted:
                return current
    return current


def forwarded_for(peer_ip: str, xff_values: list[str], trusted: NetSet) -> str:
    """The X-Forwarded-For value to send upstream: the trusted chain plus the peer, or just the peer."""
    peer = canonical_ip(peer_ip)
    if trusted and peer_ip in trusted and xff_values:
        chain = ", ".join(v.strip() for v in xff_values if v.strip())
        return f"{chain}, {peer}" if chain else peer
    return peer


_WITH_PORT = re.compile(r'"?(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})"?')


def _hop_address(hop: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A hop's address; `ip:port` and `[v6]:port` (Azure Application Gateway, IIS/ARR) count as the address. An
    unparsable hop stopped the walk at the proxy, which put every client of that proxy in one rate-limit bucket."""
    addr = parse_ip(hop)
    if addr is None and (m := _WITH_PORT.fullmatch(hop.strip())) and int(m.group(3)) <= 65535:
        addr = parse_ip(m.group(1) or m.group(2))
    return addr

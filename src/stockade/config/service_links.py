"""Service-link variables: what Kubernetes and Docker's legacy --link put in a container's environment unasked.

Kubernetes gives every pod, for each Service in its namespace, `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<NAME>]`,
`<SVC>_PORT` and `<SVC>_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]` (a Service named `stockade` or `stockade-admin`
makes STOCKADE_ names); Docker's --link gives `<ALIAS>_NAME`, `<ALIAS>_ENV_<VAR>` and the same `_PORT` family.
They are not overrides and must not stop the gateway. A name is taken for one only if its value has the shape
those tools write (`STOCKADE_LISTEN_PORT=9090` is a typo of STOCKADE_LISTEN__PORT; `=tcp://10.96.0.12:80` is the
Service `stockade-listen`), and its service part has no `__`, which is an override's separator.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

_SERVICE = r"STOCKADE(?:_[A-Z0-9]+)*?"  # the Service or alias, upper-cased, '-' as '_'
_PORT_PROTO = r"_PORT_\d{1,5}_(?:TCP|UDP|SCTP)"


def _address(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def _number(v: str) -> bool:
    return re.fullmatch(r"[0-9]{1,5}", v) is not None


def _url(v: str) -> bool:
    return re.fullmatch(r"(?:tcp|udp|sctp)://\S+:[0-9]{1,5}", v) is not None


def _proto(v: str) -> bool:
    return v in ("tcp", "udp", "sctp")


def _anything(v: str) -> bool:
    return True


_FORMS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = tuple(
    (re.compile(f"{_SERVICE}{suffix}"), check)
    for suffix, check in (
        ("_SERVICE_HOST", _address),
        ("_SERVICE_PORT(?:_[A-Z0-9]+)*", _number),  # the port, or a named one (`_SERVICE_PORT_HTTP_ADMIN`)
        ("_PORT", _url),
        (f"{_PORT_PROTO}(?:_START)?", _url),  # `_START`: Docker, a port range
        (f"{_PORT_PROTO}_PROTO", _proto),
        (f"{_PORT_PROTO}_PORT(?:_START|_END)?", _number),
        (f"{_PORT_PROTO}_ADDR", _address),
        ("_NAME", lambda v: v.startswith("/")),  # Docker: /container/alias
        ("_ENV_.+", _anything),  # Docker: the linked container's own environment, any value
    )
)


def is_service_link(name: str, value: str) -> bool:
    """Whether `name=value` is a variable Kubernetes or Docker set for a service link (see the module's doc)."""
    return any(pattern.fullmatch(name) and check(value) for pattern, check in _FORMS)

"""A small RFC 8941 List parser for the RateLimit fields: items are strings with integer/string parameters."""

from __future__ import annotations

import re

_ITEM = re.compile(r'\s*"([^"\\]*)"((?:;[a-z][a-z0-9_.*-]*=(?:-?\d{1,15}|"[^"\\]*"))*)\s*(?:,|$)')
_PARAM = re.compile(r';([a-z][a-z0-9_.*-]*)=(-?\d{1,15}|"[^"\\]*")')


def parse_list(value: str) -> dict[str, dict[str, int | str]]:
    """`"name";q=5;w=60, ...` -> {"name": {"q": 5, "w": 60}}. Raises ValueError on anything malformed."""
    out: dict[str, dict[str, int | str]] = {}
    pos = 0
    while pos < len(value):
        m = _ITEM.match(value, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"not a structured-field list at {pos}: {value!r}")
        params: dict[str, int | str] = {}
        for name, raw in _PARAM.findall(m.group(2)):
            params[name] = raw.strip('"') if raw.startswith('"') else int(raw)
        out[m.group(1)] = params
        pos = m.end()
    return out

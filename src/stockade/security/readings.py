"""How applications behind the gateway read what a request names, where that differs from the plain reading.

A check is only as good as its agreement with the upstream: a name or an encoding that the gateway reads one way
and a common framework another passes a check on one thing and delivers another. Each rule here is one such
reading, used wherever the gateway reads names or text from a request (security/paths.py, openapi, brute_force).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_plus

# Charsets every check reads a request in: UTF-8 and its ASCII subset.
_READABLE_CHARSETS: Final = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def php_name(key: str) -> str:
    """The name PHP gives a (percent-decoded) query or form key: cut at a NUL, leading spaces dropped, an array's
    `[...]` cut, spaces and dots as underscores. `limit%00`, ` limit` and `page.size` are `limit`, `limit` and
    `page_size` to `$_GET`; Laravel and Symfony read `_method` the same way."""
    name = key.partition("\x00")[0].lstrip(" ").partition("[")[0]
    return name.replace(" ", "_").replace(".", "_")


def fold(text: str) -> str:
    """A name (a path segment, a query key) as a case-insensitive router or binder compares it. ASCII is
    lower-cased. Beyond ASCII the text is Unicode case-folded, and the dotless and dotted i (U+0131, U+0130)
    become `i`: .NET's OrdinalIgnoreCase and Java's equalsIgnoreCase map characters one by one to upper case, so
    ASP.NET and IIS route `/adm\u0131n` as `/admin`, and the long s (U+017F) as `s`. Folding more than a given
    upstream does only refuses (404) or merges more spellings; folding less would let a spelling pass by a guard.
    """
    if text.isascii():
        return text.lower()
    return text.casefold().replace("\u0131", "i").replace("i\u0307", "i")


# Query parameters are split at `&`, and at `;` by older Rack and Python's parse_qs before 3.10.
QUERY_SEPARATOR: Final = re.compile(r"[&;]")


def param_name(param: str) -> str:
    """The name of one raw `name=value` piece of a query or form, percent-decoded and lower-cased."""
    return unquote_plus(param.partition("=")[0]).lower()


def query_names(query: str) -> set[str]:
    """Every name a raw query's parameters have to some application, lower-cased: each percent-decoded, and as PHP
    reads it. `access%5Ftoken`, `a=1;access_token` and `access.token` all name `access_token` to someone."""
    names: set[str] = set()
    for param in QUERY_SEPARATOR.split(query):
        name = param_name(param)
        names.add(name)
        names.add(php_name(name))
    return names


def foreign_charset(content_type: str | None) -> str | None:
    """The charset a Content-Type names if it is not UTF-8 (or ASCII), else None. Django decodes a request's body
    and query string in it, and DRF's JSON parser too: `charset=utf-7` turns `+ACIALAAi-role+ACIAOgAi-admin`
    inside one string into a second key, which a check reading UTF-8 never saw. A charset named twice counts as
    foreign (which one an upstream takes is its own choice)."""
    if not content_type or ";" not in content_type:
        return None
    found: list[str] = []
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            found.append(value.strip().strip('"').strip().lower())
    if not found or (len(found) == 1 and found[0] in _READABLE_CHARSETS):
        return None
    return ",".join(found)[:64] or "(empty)"

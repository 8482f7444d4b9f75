"""How upstream frameworks read request names and charsets (security/readings.py), as tables."""

from __future__ import annotations

import pytest

from stockade.security.readings import foreign_charset, php_name, query_names


@pytest.mark.parametrize(
    ("key", "php"),
    [
        ("limit", "limit"),
        ("limit\x00", "limit"),
        ("limit\x00junk", "limit"),
        (" limit", "limit"),
        ("  page size", "page_size"),
        ("page.size", "page_size"),
        ("limit[]", "limit"),
        ("limit[0][x]", "limit"),
        ("a.b[c.d]", "a_b"),
        ("_method", "_method"),
        ("", ""),
        ("\x00limit", ""),
    ],
)
def test_php_name(key: str, php: str) -> None:
    assert php_name(key) == php


@pytest.mark.parametrize(
    ("content_type", "foreign"),
    [
        (None, None),
        ("", None),
        ("application/json", None),
        ("application/json; charset=utf-8", None),
        ('application/json; Charset="UTF-8"', None),
        ("application/json;charset=utf8", None),
        ("text/plain; charset=us-ascii", None),
        ("multipart/form-data; boundary=x", None),
        ("application/json; charset=utf-7", "utf-7"),
        ("application/x-www-form-urlencoded; charset=ISO-8859-1", "iso-8859-1"),
        ("application/json; charset=utf-16le", "utf-16le"),
        ("application/json; charset=", "(empty)"),
        ("application/json; charset=utf-8; charset=utf-7", "utf-8,utf-7"),
        ("application/json; charset=utf-8; charset=utf-8", "utf-8,utf-8"),
    ],
)
def test_foreign_charset(content_type: str | None, foreign: str | None) -> None:
    assert foreign_charset(content_type) == foreign


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("a=1&b=2", {"a", "b"}),
        ("access%5Ftoken=x", {"access_token"}),
        ("a=1;Access.Token=x", {"a", "access.token", "access_token"}),
        ("+x%00y=1", {" x\x00y", "x"}),
        ("=1&&", {""}),
    ],
)
def test_query_names(query: str, names: set[str]) -> None:
    assert query_names(query) == names

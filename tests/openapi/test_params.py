"""Parameter deserialisation per OpenAPI style and explode (the spec's own examples), and syntax errors."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.openapi.params import (
    HeaderSpellings,
    Malformed,
    Param,
    header_value,
    parse_cookies,
    path_value,
    query_value,
)
from stockade.openapi.shapes import Shape

INT = Shape("integer")
ARRAY = Shape("array", items=INT)
OBJECT = Shape("object", props={"R": INT, "G": INT, "B": INT})


def _p(location: str, style: str, explode: bool, shape: Shape, name: str = "color") -> Param:
    return Param(name, location, style, explode, shape)


@pytest.mark.parametrize(
    ("style", "explode", "shape", "raw", "value"),
    [
        ("simple", False, INT, "5", 5),
        ("simple", False, ARRAY, "3,4,5", [3, 4, 5]),
        ("simple", False, OBJECT, "R,100,G,200,B,150", {"R": 100, "G": 200, "B": 150}),
        ("simple", True, OBJECT, "R=100,G=200,B=150", {"R": 100, "G": 200, "B": 150}),
        ("label", False, INT, ".5", 5),
        ("label", False, ARRAY, ".3,4,5", [3, 4, 5]),
        ("label", True, ARRAY, ".3.4.5", [3, 4, 5]),
        ("label", True, OBJECT, ".R=100.G=200.B=150", {"R": 100, "G": 200, "B": 150}),
        ("matrix", False, INT, ";color=5", 5),
        ("matrix", False, ARRAY, ";color=3,4,5", [3, 4, 5]),
        ("matrix", True, ARRAY, ";color=3;color=4;color=5", [3, 4, 5]),
        ("matrix", False, OBJECT, ";color=R,100,G,200,B,150", {"R": 100, "G": 200, "B": 150}),
        ("matrix", True, OBJECT, ";R=100;G=200;B=150", {"R": 100, "G": 200, "B": 150}),
        ("simple", False, INT, "five", "five"),  # left as a string: the schema's `type` reports it (422)
        ("simple", False, INT, "+5", "+5"),
        ("simple", False, INT, "1_000", "1_000"),
    ],
)
def test_path_styles(style: str, explode: bool, shape: Shape, raw: str, value: Any) -> None:
    assert path_value(_p("path", style, explode, shape), raw) == value


@pytest.mark.parametrize(
    ("style", "explode", "shape", "raw"),
    [
        ("label", False, INT, "5"),
        ("matrix", False, INT, ";other=5"),
        ("matrix", True, ARRAY, ";color=3;other=4"),
        ("simple", False, OBJECT, "R,100,G"),
        ("simple", True, OBJECT, "R=100,G"),
    ],
)
def test_path_syntax_errors(style: str, explode: bool, shape: Shape, raw: str) -> None:
    with pytest.raises(Malformed) as info:
        path_value(_p("path", style, explode, shape), raw)
    assert (info.value.pointer, info.value.rule) == ("/path/color", "style")


@pytest.mark.parametrize(
    ("style", "explode", "shape", "query", "value"),
    [
        ("form", True, INT, {"color": ["5"]}, 5),
        ("form", True, ARRAY, {"color": ["3", "4", "5"]}, [3, 4, 5]),
        ("form", False, ARRAY, {"color": ["3,4,5"]}, [3, 4, 5]),
        ("form", True, OBJECT, {"R": ["100"], "G": ["200"], "other": ["x"]}, {"R": 100, "G": 200}),
        ("form", False, OBJECT, {"color": ["R,100,G,200"]}, {"R": 100, "G": 200}),
        ("spaceDelimited", False, ARRAY, {"color": ["3 4 5"]}, [3, 4, 5]),
        ("pipeDelimited", False, ARRAY, {"color": ["3|4|5"]}, [3, 4, 5]),
        ("deepObject", True, OBJECT, {"color[R]": ["100"], "color[G]": ["200"]}, {"R": 100, "G": 200}),
        ("form", True, ARRAY, {"color": [""]}, [""]),  # an empty item stays a string: `type` reports it
    ],
)
def test_query_styles(style: str, explode: bool, shape: Shape, query: dict[str, list[str]], value: Any) -> None:
    used: set[str] = set()
    present, got = query_value(_p("query", style, explode, shape), query, used)
    assert present and got == value
    assert "other" not in used  # undeclared keys stay undeclared (strict mode reports them)


@pytest.mark.parametrize(
    ("style", "shape", "query", "pointer", "rule"),
    [
        ("form", INT, {"color": ["1", "2"]}, "/query/color", "duplicate"),  # first or last? refuse to guess
        ("deepObject", OBJECT, {"color[R]": ["1", "2"]}, "/query/color", "duplicate"),
        ("deepObject", OBJECT, {"color[R][x]": ["1"]}, "/query/color", "style"),
        ("form", OBJECT, {"R": ["1", "2"]}, "/query/color/R", "duplicate"),
    ],
)
def test_query_ambiguity_is_malformed(
    style: str, shape: Shape, query: dict[str, list[str]], pointer: str, rule: str
) -> None:
    with pytest.raises(Malformed) as info:
        query_value(_p("query", style, True, shape), query, set())
    assert (info.value.pointer, info.value.rule) == (pointer, rule)


def test_headers_and_cookies() -> None:
    assert header_value(_p("header", "simple", False, ARRAY, "x-ids"), ["1, 2", "3"]) == [1, 2, 3]
    with pytest.raises(Malformed):
        header_value(_p("header", "simple", False, INT, "x-n"), ["1", "2"])
    assert parse_cookies(['a=1; b="two"', "a=3"]) == {"a": ["1", "3"], "b": ["two"]}


def test_json_content_parameter() -> None:
    p = Param("filter", "query", "form", True, Shape("object"), json=True)
    assert query_value(p, {"filter": ['{"a":[1]}']}, set()) == (True, {"a": [1]})
    with pytest.raises(Malformed) as info:
        query_value(p, {"filter": ["{"]}, set())
    assert info.value.rule == "json"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("session =ABC", {"session": ["ABC"]}),  # Starlette and http.cookies read the name without the space
        ("session=abc; session\t=ABC", {"session": ["abc", "ABC"]}),  # so the duplicate is seen
        (" session = ABC ", {"session": ["ABC"]}),
    ],
)
def test_cookie_names_are_read_without_surrounding_whitespace(header: str, expected: dict[str, list[str]]) -> None:
    assert parse_cookies([header]) == expected


def test_quoted_cookie_values_with_a_backslash_are_malformed_for_the_names_asked_for() -> None:
    with pytest.raises(Malformed) as info:
        parse_cookies(['a=1; s="\\074x\\076"'], {"s"})
    assert (info.value.pointer, info.value.rule) == ("/cookie/s", "escape")
    assert parse_cookies(['a=1; s="\\074x\\076"'], {"a"}) == {"a": ["1"]}
    assert parse_cookies(["s=\\074x"], {"s"}) == {"s": ["\\074x"]}  # unquoted: nobody unescapes it


@pytest.mark.parametrize(
    ("declared", "raw", "alias"),
    [
        ("x-limit", [(b"X_Limit", b"1")], "x-limit"),
        ("x-limit", [(b"X-Limit", b"1"), (b"x_LIMIT", b"2")], "x-limit"),
        ("x-limit", [(b"X-Limit", b"1"), (b"X_Other", b"2")], None),
        ("x_api_key", [(b"X-Api-Key", b"1")], "x_api_key"),  # a declared underscore name: dashes spell it too
        ("x_api_key", [(b"X_API_KEY", b"1")], None),
    ],
)
def test_header_spellings_cgi_servers_read_alike(
    declared: str, raw: list[tuple[bytes, bytes]], alias: str | None
) -> None:
    assert HeaderSpellings.of((_p("header", "simple", False, INT, declared),)).alias(raw) == alias


def test_folded_names_leave_out_names_the_spec_tells_apart_by_case() -> None:
    from stockade.openapi.params import folded_names, name_alias

    folded = folded_names(["limit", "Page", "page", "sort"])
    assert folded == {"limit": "limit", "sort": "sort"}
    assert name_alias(["LIMIT"], {"limit", "Page", "page", "sort"}, (), folded) == "limit"
    assert name_alias(["PAGE"], {"limit", "Page", "page", "sort"}, (), folded) is None  # which one? the spec's call
    assert name_alias(["Page", "page"], {"limit", "Page", "page", "sort"}, (), folded) is None  # each declared

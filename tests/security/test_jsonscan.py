"""The JSON structure scanner: limits found on the raw bytes, exactly, before anything is built."""

from __future__ import annotations

import pytest

from stockade.security import jsonscan
from stockade.security.jsonscan import Limits, Violation, parse, scan

TIGHT = Limits(max_depth=3, max_keys=3, max_array=3, max_string=5)


@pytest.mark.parametrize(
    ("body", "rule", "pointer"),
    [
        (b'{"a":{"b":{"c":{}}}}', "too_deep", "/a/b/c"),
        (b"[[[[1]]]]", "too_deep", "/0/0/0"),
        (b'{"a":1,"b":2,"c":3,"d":4}', "too_many_keys", ""),
        (b'{"x":{"a":1,"b":2,"c":3,"d":4}}', "too_many_keys", "/x"),
        (b"[1,2,3,4]", "array_too_long", ""),
        (b'{"l":[true,false,null,"s"]}', "array_too_long", "/l"),
        (b'{"l":[{},{},{},{}]}', "array_too_long", "/l"),
        (b'{"s":"abcdef"}', "string_too_long", "/s"),
        (b'{"abcdef":1}', "string_too_long", ""),
        (b'["ok","abcdef"]', "string_too_long", "/1"),
        (b'{"a":1,"a":2}', "duplicate_key", "/a"),
        (b'{"a":"\\u0061","\\u0061":1}', "duplicate_key", "/a"),  # equal after unescaping
        (b'{"x":[{"k":1,"k":1}]}', "duplicate_key", "/x/0/k"),
        (b'{"a":1]', "malformed", "/a"),
        (b"[1,2", "malformed", ""),
    ],
    ids=lambda v: v.decode() if isinstance(v, bytes) else str(v),
)
def test_scan_reports_the_first_broken_limit(body: bytes, rule: str, pointer: str) -> None:
    with pytest.raises(Violation) as info:
        parse(body, TIGHT)
    assert (info.value.rule, info.value.pointer) == (rule, pointer)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":{"b":{}}}',
        b"[1,2,3]",
        b'{"a":"abcde","b":[1,2,3],"c":null}',
        b'{"esc":"\\u00e9\\u00e9"}',  # 12 bytes of escapes, 2 characters
        b'"str"',
        b"42",
        b'{"k":"a,,,,"}',  # commas inside strings are not members
        b'[{"a":1},{"a":1},{"a":1}]',  # the same key in sibling objects is no duplicate
    ],
)
def test_scan_accepts_documents_within_limits(body: bytes) -> None:
    scan(body, TIGHT)
    assert parse(body, TIGHT) is not None or body == b"null"


@pytest.mark.parametrize("body", [b"[NaN]", b'{"a":Infinity}', b'"\xff"', b"{} {}", b"[1,]", b'{"a" 1}'])
def test_parse_refuses_what_is_not_json(body: bytes) -> None:
    with pytest.raises(Violation) as info:
        parse(body, Limits())
    assert info.value.rule == "malformed"


def test_large_hostile_body_is_refused_by_the_scanner_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[bytes] = []

    def spy(body: bytes, *, orjson_ok: bool) -> object:
        built.append(body)
        return None

    monkeypatch.setattr(jsonscan, "_decode", spy)
    hostile = b"[" + b"{}," * 200_000 + b"{}]"
    with pytest.raises(Violation) as info:
        parse(hostile, Limits(max_array=1000))
    assert info.value.rule == "array_too_long"
    assert built == []  # nothing was materialised


def test_duplicates_allowed_when_configured() -> None:
    assert parse(b'{"a":1,"a":2}', Limits(duplicate_keys=True)) == {"a": 2}


def test_many_small_containers_within_limits_skip_the_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    """More brackets than the allowed depth, but few members: parsed directly, depth measured on the result."""
    calls: list[bytes] = []
    monkeypatch.setattr(jsonscan, "scan", lambda body, limits: calls.append(body))
    body = b"[" + b",".join(b'{"a":[1]}' for _ in range(40)) + b"]"
    assert len(parse(body, Limits(max_depth=3, max_keys=100, max_array=100))) == 40
    assert calls == []


def test_depth_found_after_a_direct_parse_still_names_the_place() -> None:
    body = b'{"a":[{"b":[{"c":1}]}]}'  # depth 5, few members
    with pytest.raises(Violation) as info:
        parse(body, Limits(max_depth=4, max_keys=100, max_array=100))
    assert (info.value.rule, info.value.pointer) == ("too_deep", "/a/0/b/0")


@pytest.mark.parametrize("duplicates", [False, True])
def test_nesting_deeper_than_the_decoders_recurse_is_too_deep_not_malformed(duplicates: bool) -> None:
    body = b"[" * 3000 + b"]" * 3000
    with pytest.raises(Violation) as info:
        parse(body, Limits(max_depth=100, duplicate_keys=duplicates))
    assert info.value.rule == "too_deep"


def test_nesting_beyond_what_is_parsed_is_refused_even_without_limits() -> None:
    with pytest.raises(Violation) as info:
        parse(b"[" * 3000 + b"]" * 3000, Limits())
    assert info.value.rule == "too_deep"

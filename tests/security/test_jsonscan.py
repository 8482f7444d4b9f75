"""The JSON structure scanner: limits found on the raw bytes, exactly, before anything is built."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    built: list[str] = []

    def spy(text: str, decoder: object) -> object:
        built.append(text)
        return None

    monkeypatch.setattr(jsonscan, "_load", spy)
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


def reference(body: bytes, limits: Limits) -> object:
    """What `parse` must agree with: the exact scanner over the bytes first, then the decoder."""
    scan(body, limits)
    return json.loads(body.decode("utf-8"), parse_constant=_refuse)


def _refuse(name: str) -> object:
    raise ValueError(name)


@pytest.mark.parametrize(
    ("body", "rule", "pointer"),
    [
        (b'{"at":"12:00","url":"http://x"}', None, ""),  # colons in values, no key repeated
        (b'{"at":"12:00","at":"13:00"}', "duplicate_key", "/at"),
        (b'{"a":"x:y","b":{"c":1,"\\u0063":2}}', "duplicate_key", "/b/c"),  # repeated once unescaped
        (b'[{"k":"1:2"},{"k":"3:4"}]', None, ""),  # the same key in sibling objects
        (b'{"k":1,"k":1}', "duplicate_key", "/k"),  # no colon in any value: the count alone tells
        (b'{"s":"a:b:c:d:e"}', None, ""),
    ],
    ids=lambda v: v.decode() if isinstance(v, bytes) else str(v),
)
@pytest.mark.parametrize(
    "limits",
    [Limits(max_depth=8, max_keys=100, max_array=100, max_string=100), Limits(max_depth=8, max_string=10)],
    ids=["counts-clear-the-sizes", "sizes-measured"],
)
def test_a_repeated_key_is_found_whatever_colons_the_values_hold(
    body: bytes, rule: str | None, pointer: str, limits: Limits
) -> None:
    if rule is None:
        assert parse(body, limits) == json.loads(body)
        return
    with pytest.raises(Violation) as info:
        parse(body, limits)
    assert (info.value.rule, info.value.pointer) == (rule, pointer)


@pytest.mark.parametrize(
    "limits_for",
    [lambda n: Limits(), lambda n: Limits(duplicate_keys=True), lambda n: Limits(max_string=n + 10)],
    # The last allows every string but not the body's length, so byte counts cannot clear it: a small body is
    # measured after parsing, a large one scanned first.
    ids=["defaults", "duplicates-allowed", "sizes-checked"],
)
@pytest.mark.parametrize("padding", [0, jsonscan.MATERIALISE_MAX], ids=["small", "large"])
def test_big_integers_stay_exact_on_every_path(limits_for: Callable[[int], Limits], padding: int) -> None:
    """A float in place of an integer would change what the openapi stage validates (and what it forwards)."""
    big = 123456789012345678901234567890
    document = parse(b'{"id":%d,"pad":"%s"}' % (big, b"x" * padding), limits_for(padding))
    assert isinstance(document, dict)
    assert document["id"] == big and type(document["id"]) is int


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.text(alphabet='ab:,{}[]"\\é', max_size=8),
)
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(alphabet="ab:\\", max_size=3), inner, max_size=5)
    ),
    max_leaves=25,
)


def _with_repeats(draw: st.DrawFn) -> bytes:
    """JSON text of a drawn document, sometimes with one object member written twice (a repeated key)."""
    text = json.dumps(draw(_documents), ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()) and '{"' in text:
        at = text.index('{"') + 1
        end = draw(st.integers(at, len(text)))
        member = re.match(r'"(?:[^"\\]|\\.)*": *(?:"(?:[^"\\]|\\.)*"|[-\w.]+)', text[at : end + 20])
        if member:
            text = text[:at] + member.group(0) + "," + text[at:]
    return text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.composite(_with_repeats)(),
    limits=st.builds(
        Limits,
        max_depth=st.none() | st.integers(1, 4),
        max_keys=st.none() | st.integers(1, 4),
        max_array=st.none() | st.integers(1, 4),
        max_string=st.none() | st.integers(1, 6),
        duplicate_keys=st.booleans(),
    ),
)
def test_parse_agrees_with_scanning_first(body: bytes, limits: Limits) -> None:
    """Whatever path `parse` takes (bytes counted, document parsed then measured, scanned first), it accepts and
    refuses exactly what scanning the bytes first does, with the same rule and pointer."""
    try:
        want: object = reference(body, limits)
    except Violation as exc:
        with pytest.raises(Violation) as info:
            parse(body, limits)
        assert (info.value.rule, info.value.pointer) == (exc.rule, exc.pointer)
        return
    assert parse(body, limits) == want

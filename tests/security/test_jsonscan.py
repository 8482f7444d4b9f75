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
    built: list[bytes] = []

    def spy(body: bytes, decoder: object) -> object:
        built.append(body)
        return None

    monkeypatch.setattr(jsonscan, "_decoded", spy)
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


def decoded(body: bytes) -> object:
    """The document, or Violation("malformed") for what is not JSON: bad UTF-8, bad syntax, NaN, or half a
    surrogate pair (the stdlib decoder keeps it as a lone code point; encoding it shows it)."""
    try:
        text = body.decode("utf-8")
        document = json.loads(text, parse_constant=_refuse)
        every_member = json.loads(text, object_pairs_hook=list)  # a repeated key's earlier value too
        json.dumps(every_member, ensure_ascii=False).encode("utf-8")
    except ValueError:  # UnicodeDecodeError, UnicodeEncodeError and JSONDecodeError are ValueErrors
        raise Violation("malformed", "") from None
    return document


def scanned(body: bytes, limits: Limits) -> tuple[str, str] | None:
    try:
        scan(body, limits)
    except Violation as exc:
        return exc.rule, exc.pointer
    return None


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
        assert parse(body, limits) == decoded(body)
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
    st.text(alphabet='ab:,{}[]"\\é\ud800\udc00', max_size=8),
)
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(alphabet="ab:\\\ud800", max_size=3), inner, max_size=5)
    ),
    max_leaves=25,
)


def _with_repeats(draw: st.DrawFn) -> bytes:
    """JSON text of a drawn document, sometimes with an object's first key written twice: the earlier member
    gets a value of its own (which the decoded document will not hold)."""
    text = json.dumps(draw(_documents), ensure_ascii=draw(st.booleans()))
    first = re.search(r'\{("(?:[^"\\]|\\.)*"): ', text)
    if first is not None and draw(st.booleans()):
        shadowed = json.dumps(draw(_documents))
        text = text[: first.start() + 1] + f"{first.group(1)}: {shadowed}, " + text[first.start() + 1 :]
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate drawn unescaped is invalid UTF-8


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
    """Whatever path `parse` takes (bytes counted, document parsed then measured, scanned first), it accepts
    exactly the JSON that scanning the bytes first accepts, and refuses the rest with the scanner's rule and
    pointer. What is not JSON is refused as `malformed`, or as what the scanner finds first if it ran first."""
    first = scanned(body, limits)
    try:
        document = decoded(body)
    except Violation:
        with pytest.raises(Violation) as info:
            parse(body, limits)
        assert (info.value.rule, info.value.pointer) in {("malformed", ""), first}
        return
    if first is not None:
        with pytest.raises(Violation) as info:
            parse(body, limits)
        assert (info.value.rule, info.value.pointer) == first
        return
    assert parse(body, limits) == document


DUPLICATES = {"duplicate_keys": True}


@pytest.mark.parametrize(
    ("body", "limits", "rule"),
    [
        # Repeated keys allowed: the decoded document keeps only the last value, so an earlier one that breaks
        # a limit is still refused (the upstream may read the first).
        (b'{"a":[0,0,0,0,0,0],"a":1}', Limits(max_array=5, **DUPLICATES), "array_too_long"),
        (b'{"a":{"k":0,"l":0,"m":0,"n":0},"a":0}', Limits(max_keys=3, **DUPLICATES), "too_many_keys"),
        (b'{"a":"xxxxxxxxxxxx","a":1}', Limits(max_string=10, **DUPLICATES), "string_too_long"),
        (b'{"a":1,"\\u0061":2,"b":3}', Limits(max_keys=2, **DUPLICATES), "too_many_keys"),
        (b'{"a":[[[[]]]],"a":1}', Limits(max_depth=2, **DUPLICATES), "too_deep"),
        # Half a surrogate pair: the stdlib decoder would keep a lone code point, other parsers refuse or
        # replace it; refused on every path.
        (b'["\\ud800"]', Limits(), "malformed"),
        (b'["\\udc00"]', Limits(), "malformed"),
        (b'{"\\ud800":1}', Limits(), "malformed"),
        (b'["\\ud800"]', Limits(max_string=3), "malformed"),
        (b'"\\uD800\\u0041"', Limits(max_string=3), "malformed"),
        (b'{"\\udc00\\ud800":1}', Limits(max_string=10), "malformed"),
        (b'["\\ud83d\\ude00"]', Limits(), None),  # a whole pair is one character
        (b'["\\\\ud800"]', Limits(), None),  # an escaped backslash, then plain letters
    ],
    ids=lambda v: v.decode() if isinstance(v, bytes) else None,
)
def test_counterexamples_found_in_review(body: bytes, limits: Limits, rule: str | None) -> None:
    first = scanned(body, limits)
    if rule is None:
        assert first is None
        assert parse(body, limits) == decoded(body)
        return
    with pytest.raises(Violation) as info:
        parse(body, limits)
    assert info.value.rule == rule
    if first is not None and first[0] == rule:
        assert info.value.pointer == first[1]  # named by the scanner


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_nesting_up_to_the_largest_max_depth_is_parsed_whatever_the_stack(opener: bytes) -> None:
    """max_depth allows up to 1000 levels; the decoder must parse them even when called deep in a stack."""
    closer = b"]" if opener == b"[" else b"}"
    body = opener * 1000 + b"1" + closer * 1000

    def nested(levels: int) -> object:
        return nested(levels - 1) if levels else parse(body, Limits(max_depth=1000))

    assert nested(200) is not None
    with pytest.raises(Violation) as info:
        parse(body, Limits(max_depth=999))
    assert info.value.rule == "too_deep"
    deeper = opener * (jsonscan.MAX_NESTING + 20) + b"1" + closer * (jsonscan.MAX_NESTING + 20)
    with pytest.raises(Violation) as info:
        parse(deeper, Limits())  # no max_depth: still no deeper than the decoder's own bound
    assert info.value.rule == "too_deep"

"""Header lookups: case-insensitive, first value wins for `get`, a repeated credential is an error."""

from __future__ import annotations

import pytest

from stockade.pipeline.headers import DuplicateHeaderError, Headers

RAW = [
    (b"Host", b"a"),
    (b"X-API-Key", b"k1"),
    (b"accept", b"*/*"),
    (b"x-api-key", b"k2"),
    (b"Cookie", b"a=1"),
    (b"COOKIE", b"b=2"),
    (b"X-Caf\xe9", b"caf\xe9"),
]

CASES = [
    ("single", "host", "a", ["a"], "a"),
    ("case-insensitive", "accept", "*/*", ["*/*"], "*/*"),
    ("absent", "authorization", None, [], None),
    ("repeated-first-wins", "x-api-key", "k1", ["k1", "k2"], DuplicateHeaderError),
    ("repeated-any-case", "cookie", "a=1", ["a=1", "b=2"], DuplicateHeaderError),
    ("latin-1", "x-caf\xe9", "caf\xe9", ["caf\xe9"], "caf\xe9"),
]


@pytest.mark.parametrize(("name", "first", "every", "single"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lookups(name: str, first: str | None, every: list[str], single: object) -> None:
    headers = Headers(list(RAW))
    assert headers.get(name) == first
    assert headers.get_all(name) == every
    assert (name in headers) is bool(every)
    if single is DuplicateHeaderError:
        with pytest.raises(DuplicateHeaderError):
            headers.get_single(name)
    else:
        assert headers.get_single(name) == single


def test_no_repeats_takes_the_fast_path_with_the_same_answers() -> None:
    headers = Headers([(b"Host", b"a"), (b"Authorization", b"Bearer t")])
    assert headers.get_single("authorization") == "Bearer t"
    assert headers.get("HOST".lower()) == "a"
    assert headers.get_all("authorization") == ["Bearer t"]

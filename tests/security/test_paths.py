"""Request-target normalisation: what routing sees must be exactly what the upstream receives."""

from __future__ import annotations

import pytest

from stockade.security.paths import BadPathError, normalize_target

NORMALISED = [
    ("plain", b"/api/books", "/api/books", "/api/books", ""),
    ("query-kept-raw", b"/api/books?q=a%20b&x=%2F", "/api/books", "/api/books", "q=a%20b&x=%2F"),
    ("root", b"/", "/", "/", ""),
    ("trailing-slash", b"/api/", "/api/", "/api/", ""),
    ("merged-slashes", b"//api///books", "/api/books", "/api/books", ""),
    ("dot-segment", b"/api/./books", "/api/books", "/api/books", ""),
    ("dotdot-segment", b"/api/v1/../books", "/api/books", "/api/books", ""),
    ("dotdot-at-end", b"/api/books/..", "/api/", "/api/", ""),
    ("dot-at-end", b"/api/books/.", "/api/books/", "/api/books/", ""),
    ("encoded-dots", b"/api/v1/%2e%2e/books", "/api/books", "/api/books", ""),
    ("mixed-encoded-dots", b"/api/v1/.%2E/admin", "/api/admin", "/api/admin", ""),
    ("encoded-unreserved", b"/api/%62ooks", "/api/books", "/api/books", ""),
    ("encoded-space", b"/api/a%20b", "/api/a b", "/api/a%20b", ""),
    ("utf8", b"/api/caf%C3%A9", "/api/caf\u00e9", "/api/caf%C3%A9", ""),
    ("semicolon-param", b"/api/books;v=1", "/api/books;v=1", "/api/books;v=1", ""),
    ("dot-in-name", b"/api/file.json", "/api/file.json", "/api/file.json", ""),
    ("dotfile-name", b"/api/.well-known", "/api/.well-known", "/api/.well-known", ""),
    # Raw UTF-8 (a lenient ASGI server hands it over) is read as UTF-8, as its percent-encoded form is, not latin-1
    ("raw-utf8", "/api/caf\u00e9".encode(), "/api/caf\u00e9", "/api/caf%C3%A9", ""),
]


@pytest.mark.parametrize(
    ("target", "path", "canonical", "query"), [c[1:] for c in NORMALISED], ids=[c[0] for c in NORMALISED]
)
def test_normalize_target(target: bytes, path: str, canonical: str, query: str) -> None:
    assert normalize_target(target) == (path, canonical, query)


REJECTED = [
    ("encoded-slash", b"/api/..%2fadmin", "http.bad_path"),
    ("encoded-slash-upper", b"/api/a%2Fb", "http.bad_path"),
    ("encoded-backslash", b"/api/..%5cadmin", "http.bad_path"),
    ("raw-backslash", b"/api\\..\\admin", "http.bad_path"),
    ("encoded-nul", b"/api/a%00b", "http.bad_path"),
    ("encoded-ctl", b"/api/a%0d%0aX-Injected:1", "http.bad_path"),
    ("encoded-del", b"/api/a%7f", "http.bad_path"),
    ("above-root", b"/..", "http.bad_path"),
    ("above-root-deep", b"/api/../../etc/passwd", "http.bad_path"),
    ("above-root-encoded", b"/%2e%2e/etc/passwd", "http.bad_path"),
    ("tomcat-dotdot-semicolon", b"/api/public/..;/admin", "http.bad_path"),
    ("tomcat-dot-semicolon", b"/api/.;/admin", "http.bad_path"),
    ("bad-escape", b"/api/%zz", "http.bad_path"),
    ("truncated-escape", b"/api/%4", "http.bad_path"),
    ("overlong-utf8-slash", b"/api/%c0%af", "http.bad_path"),
    ("invalid-utf8", b"/api/%ff", "http.bad_path"),
    ("absolute-form", b"http://evil.example/api", "http.bad_target"),
    ("asterisk", b"*", "http.bad_target"),
    ("fragment", b"/api#x", "http.bad_target"),
    # Raw bytes llhttp refuses but a lenient ASGI server may pass: the fast path took them as they were
    ("raw-nul", b"/api/a\x00b", "http.bad_path"),
    ("raw-tab", b"/api/a\tb", "http.bad_path"),
    ("raw-space", b"/api/a b", "http.bad_path"),
    ("raw-del", b"/api/a\x7fb", "http.bad_path"),
    ("raw-invalid-utf8", b"/api/caf\xe9", "http.bad_path"),
]


@pytest.mark.parametrize(("target", "code"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_normalize_target_rejects(target: bytes, code: str) -> None:
    with pytest.raises(BadPathError) as info:
        normalize_target(target)
    assert info.value.reason == code


# (query as sent, query as forwarded): `_method` is how Express's method-override, Symfony and Laravel run a POST as
# another method, so it is removed the way those frameworks would read its name; every other byte stays.
METHOD_PARAM = [
    ("alone", "_method=DELETE", ""),
    ("first", "_method=DELETE&a=1", "a=1"),
    ("middle", "a=1&_method=DELETE&b=2", "a=1&b=2"),
    ("last", "a=1&_method=DELETE", "a=1"),
    ("repeated", "_method=PUT&a=1&_method=DELETE", "a=1"),
    ("no-value", "a=1&_method", "a=1"),
    ("upper-case", "_METHOD=DELETE&a=1", "a=1"),
    ("percent-encoded-underscore", "%5Fmethod=DELETE&a=1", "a=1"),
    ("percent-encoded-letter", "_%6Dethod=DELETE&a=1", "a=1"),
    ("php-dot", ".method=DELETE&a=1", "a=1"),
    ("php-leading-space-not-underscore", "+method=DELETE&a=1", "+method=DELETE&a=1"),  # PHP reads `method`
    ("php-leading-space", "%20_method=DELETE", ""),
    ("php-array", "_method[]=DELETE&a=1", "a=1"),
    ("php-nul", "_method%00=DELETE&a=1", "a=1"),  # PHP cuts a name at a NUL
    ("php-nul-suffix", "_method%00x=DELETE&a=1", "a=1"),
    ("semicolon-separated", "a=1;_method=DELETE;b=2", "a=1;b=2"),
    ("separators-kept", "a=1;b=2&c=3", "a=1;b=2&c=3"),
    (
        "other-names-stay",
        "method=DELETE&x_method=1&_methods=2&_method_=3",
        "method=DELETE&x_method=1&_methods=2&_method_=3",
    ),
    ("value-not-name", "q=_method%3DDELETE&a=%5Fmethod", "q=_method%3DDELETE&a=%5Fmethod"),
    ("empty-params-stay", "a=1&&b=2", "a=1&&b=2"),
]


@pytest.mark.parametrize(("query", "kept"), [c[1:] for c in METHOD_PARAM], ids=[c[0] for c in METHOD_PARAM])
def test_a_method_override_parameter_is_removed_from_the_query(query: str, kept: str) -> None:
    assert normalize_target(b"/api/items/1?" + query.encode()) == ("/api/items/1", "/api/items/1", kept)

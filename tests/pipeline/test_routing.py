"""The router: templates, precedence, methods, hosts, and conflicts found at load."""

from __future__ import annotations

import pytest

from stockade.pipeline.routing import NoRoute, Router, RouteSpec, RouteTemplateError

ROUTES = [
    RouteSpec("book", "/books/{id}", frozenset({"GET", "DELETE"})),
    RouteSpec("new-book", "/books/new", frozenset({"GET"})),
    RouteSpec("books", "/books", frozenset({"GET", "POST"})),
    RouteSpec("reviews", "/books/{id}/reviews/{rid}"),
    RouteSpec("api", "/api/**"),
    RouteSpec("files", "/files/*/raw"),
    RouteSpec("root", "/", frozenset({"GET"})),
    RouteSpec("admin-host", "/**", hosts=("admin.example.com",)),
    RouteSpec("tenant", "/tenant/**", hosts=("*.tenants.example.com",)),
    RouteSpec("new-post", "/books/new/x", frozenset({"POST"})),
]

CASES = [
    ("static-beats-param", "a", "/books/new", "GET", ("new-book", {})),
    ("param", "a", "/books/42", "GET", ("book", {"id": "42"})),
    ("param-other-method", "a", "/books/42", "DELETE", ("book", {"id": "42"})),
    ("head-follows-get", "a", "/books/42", "HEAD", ("book", {"id": "42"})),
    ("method-not-allowed", "a", "/books/42", "PUT", NoRoute(405, ("DELETE", "GET", "HEAD"))),
    ("backtrack-to-param", "a", "/books/new/reviews/7", "GET", ("reviews", {"id": "new", "rid": "7"})),
    ("two-params", "a", "/books/1/reviews/2", "PATCH", ("reviews", {"id": "1", "rid": "2"})),
    ("collection", "a", "/books", "POST", ("books", {})),
    ("trailing-slash-is-the-leafs", "a", "/books/", "POST", ("books", {})),
    ("trailing-slash-after-param", "a", "/books/42/", "GET", ("book", {"id": "42"})),
    ("trailing-slash-leaf-owns-method", "a", "/books/", "PUT", NoRoute(405, ("GET", "HEAD", "POST"))),
    ("static-owns-its-path", "a", "/books/new", "DELETE", NoRoute(405, ("GET", "HEAD"))),
    ("unknown-method-owned", "a", "/books/42", "PROPFIND", NoRoute(405, ("DELETE", "GET", "HEAD"))),
    ("unknown-method-any-route", "a", "/api/x", "PROPFIND", ("api", {})),
    ("empty-param-refused", "a", "/books//reviews/1", "GET", NoRoute(404)),
    ("tail-matches-base", "a", "/api", "GET", ("api", {})),
    ("tail-matches-slash", "a", "/api/", "GET", ("api", {})),
    ("tail-matches-deep", "a", "/api/a/b/c", "POST", ("api", {})),
    ("tail-not-prefix", "a", "/apix", "GET", NoRoute(404)),
    ("star-one-segment", "a", "/files/x/raw", "GET", ("files", {})),
    ("star-not-two", "a", "/files/x/y/raw", "GET", NoRoute(404)),
    ("root", "a", "/", "GET", ("root", {})),
    ("unknown", "a", "/nope", "GET", NoRoute(404)),
    ("case-sensitive", "a", "/BOOKS/1", "GET", NoRoute(404)),
    ("exact-host-first", "admin.example.com", "/books/1", "GET", ("admin-host", {})),
    ("wildcard-host", "acme.tenants.example.com", "/tenant/x", "GET", ("tenant", {})),
    ("wildcard-host-falls-back", "acme.tenants.example.com", "/books/1", "GET", ("book", {"id": "1"})),
    ("wildcard-needs-subdomain", "tenants.example.com", "/tenant/x", "GET", NoRoute(404)),
    ("post-only-static", "a", "/books/new/x", "GET", NoRoute(405, ("POST",))),
]


@pytest.mark.parametrize(("host", "path", "method", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_router_match(host: str, path: str, method: str, expected: object) -> None:
    assert Router(ROUTES).match(host, path, method) == expected


GUARDED = [
    RouteSpec("admin-read", "/admin/**", frozenset({"GET"})),
    RouteSpec("admin-write", "/admin/**", frozenset({"POST", "PUT", "DELETE"})),
    RouteSpec("secret", "/secret", frozenset({"GET"})),
    RouteSpec("me", "/users/me", frozenset({"GET"})),
    RouteSpec("user", "/users/{id}"),
    RouteSpec("docs", "/docs"),
    RouteSpec("docs-tree", "/docs/**", frozenset({"GET"})),
    RouteSpec("public", "/**"),
]
GUARDED_CASES = [
    # A broader route never gets a method the route that owns the path leaves out.
    ("patch-under-guard", "/admin/users/1", "PATCH", NoRoute(405, ("DELETE", "GET", "HEAD", "POST", "PUT"))),
    ("webdav-under-guard", "/admin", "PROPFIND", NoRoute(405, ("DELETE", "GET", "HEAD", "POST", "PUT"))),
    ("guard-allows", "/admin/users/1", "DELETE", ("admin-write", {})),
    ("static-over-param", "/users/me", "DELETE", NoRoute(405, ("GET", "HEAD"))),
    ("param-elsewhere", "/users/7", "DELETE", ("user", {"id": "7"})),
    ("leaf-trailing-slash", "/secret/", "GET", ("secret", {})),
    ("leaf-trailing-slash-method", "/secret/", "POST", NoRoute(405, ("GET", "HEAD"))),
    ("leaf-over-own-tail-exact", "/docs", "POST", ("docs", {})),
    ("own-tail-takes-slash", "/docs/", "POST", NoRoute(405, ("GET", "HEAD"))),
    ("deeper-path-is-public", "/secret/x", "POST", ("public", {})),
    ("elsewhere-public", "/other", "PATCH", ("public", {})),
]


@pytest.mark.parametrize(
    ("path", "method", "expected"), [c[1:] for c in GUARDED_CASES], ids=[c[0] for c in GUARDED_CASES]
)
def test_the_route_that_owns_a_path_owns_all_its_methods(path: str, method: str, expected: object) -> None:
    assert Router(GUARDED).match("a", path, method) == expected


BAD = [
    ("no-leading-slash", [RouteSpec("a", "books")], "must start with '/'"),
    ("tail-not-last", [RouteSpec("a", "/a/**/b")], "only as the last segment"),
    ("repeated-param", [RouteSpec("a", "/a/{id}/{id}")], "repeats"),
    ("partial-param", [RouteSpec("a", "/a/x{id}")], "must be literal"),
    ("percent", [RouteSpec("a", "/a/%2f")], "must be literal"),
    ("dot-segment", [RouteSpec("a", "/a/../b")], "dot segment"),
    (
        "same-path-same-method",
        [RouteSpec("a", "/x", frozenset({"GET"})), RouteSpec("b", "/x", frozenset({"GET"}))],
        "both match GET /x",
    ),
    ("same-path-any-method", [RouteSpec("a", "/x"), RouteSpec("b", "/x")], "both match /x"),
    (
        "param-names-differ-same-shape",
        [RouteSpec("a", "/x/{id}", frozenset({"GET"})), RouteSpec("b", "/x/{key}", frozenset({"GET"}))],
        "both match GET",
    ),
    ("bad-host-wildcard", [RouteSpec("a", "/x", hosts=("a.*.com",))], "only a leading"),
]


@pytest.mark.parametrize(("routes", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_router_rejects_bad_tables(routes: list[RouteSpec], message: str) -> None:
    with pytest.raises(RouteTemplateError, match=message):
        Router(routes)


def test_explicit_head_route_overrides_implicit_head() -> None:
    router = Router([RouteSpec("get", "/x", frozenset({"GET"})), RouteSpec("head", "/x", frozenset({"HEAD"}))])
    assert router.match("a", "/x", "HEAD") == ("head", {})
    assert router.match("a", "/x", "GET") == ("get", {})


def test_matching_cost_does_not_depend_on_route_count() -> None:
    many = [RouteSpec(f"r{i}", f"/svc{i}/items/{{id}}", frozenset({"GET"})) for i in range(2000)]
    router = Router(many)
    assert router.match("a", "/svc1999/items/7", "GET") == ("r1999", {"id": "7"})
    root = router._any
    assert root is not None
    assert len(root.root.static) == 2000  # one dict lookup per segment, whatever the count


CASED = [
    RouteSpec("admin", "/admin/**", frozenset({"GET"})),
    RouteSpec("user", "/users/{id}"),
    RouteSpec("legacy", "/API/v1/**"),
    RouteSpec("public", "/**"),
]
CASE_CASES = [
    # (name, path, method, exact routing with the case check, case-insensitive routing)
    ("upper-guard-path", "/ADMIN/x", "GET", NoRoute(404), ("admin", {})),
    ("mixed-guard-path", "/Admin/x", "PATCH", NoRoute(404), NoRoute(405, ("GET", "HEAD"))),
    ("param-keeps-case", "/USERS/AbC", "GET", NoRoute(404), ("user", {"id": "AbC"})),
    ("exact-param-case", "/users/AbC", "GET", ("user", {"id": "AbC"}), ("user", {"id": "AbC"})),
    ("upper-template", "/API/v1/x", "GET", ("legacy", {}), ("legacy", {})),
    ("upper-template-folded", "/api/v1/x", "GET", NoRoute(404), ("legacy", {})),
    ("same-route-either-way", "/Docs/Intro", "GET", ("public", {}), ("public", {})),
    # .NET's OrdinalIgnoreCase and Java's equalsIgnoreCase map each character to upper case: U+0131 and U+0130
    # are I, the long s (U+017F) is S
    ("dotless-i", "/adm\u0131n/x", "GET", NoRoute(404), ("admin", {})),
    ("dotted-capital-i", "/ADM\u0130N/x", "GET", NoRoute(404), ("admin", {})),
    ("long-s", "/u\u017fers/7", "GET", NoRoute(404), ("user", {"id": "7"})),
    ("kelvin-sign", "/API/v1/\u212a", "GET", ("legacy", {}), ("legacy", {})),
    ("non-ascii-elsewhere", "/caf\u00e9/x", "GET", ("public", {}), ("public", {})),
]


@pytest.mark.parametrize(
    ("path", "method", "exact", "folded"), [c[1:] for c in CASE_CASES], ids=[c[0] for c in CASE_CASES]
)
def test_path_case(path: str, method: str, exact: object, folded: object) -> None:
    """Express, ASP.NET and IIS route `/ADMIN/x` as `/admin/x`: a path whose case-insensitive match is another
    route's is refused, unless routing ignores case altogether."""
    assert Router(CASED).match("a", path, method) == exact
    assert Router(CASED, fold_case=True).match("a", path, method) == folded


def test_templates_that_differ_only_in_case() -> None:
    """The config means case to matter for those two; the check still holds for every other route (it used to
    be off for the whole config, so /GUARD/x reached the public route)."""
    both = [
        RouteSpec("upper", "/Admin"),
        RouteSpec("lower", "/admin"),
        RouteSpec("guard", "/guard/**"),
        RouteSpec("public", "/**"),
    ]
    router = Router(both)
    assert router.match("a", "/Admin", "GET") == ("upper", {})
    assert router.match("a", "/admin", "GET") == ("lower", {})
    assert router.match("a", "/ADMIN", "GET") == NoRoute(404)  # which of the two? neither: not /**
    assert router.match("a", "/GUARD/x", "GET") == NoRoute(404)
    assert router.match("a", "/elsewhere", "GET") == ("public", {})
    with pytest.raises(RouteTemplateError, match="ignoring case"):
        Router(both, fold_case=True)


def test_the_case_check_runs_only_where_case_can_change_the_route() -> None:
    router = Router([RouteSpec("admin", "/admin/**"), RouteSpec("legacy", "/API/**"), RouteSpec("x", "/api/x")])
    assert not router._case_matters("/users/9B2F3C1E-8D4A")  # an upper-case id is no template's literal
    assert not router._case_matters("/admin/x")
    assert router._case_matters("/Admin/x")
    assert router._case_matters("/API/x")  # spelled exactly as one literal, but `api` is another
    assert router.match("a", "/API/x", "GET") == NoRoute(404)  # /API/** exactly, /api/x ignoring case
    assert router.match("a", "/API/y", "GET") == ("legacy", {})

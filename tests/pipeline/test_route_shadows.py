"""Load-time warnings: each route whose 405 keeps a method from the route a request would reach without it."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stockade.pipeline import route_shadows
from stockade.pipeline.route_shadows import shadowed
from stockade.pipeline.routing import NoRoute, Router, RouteSpec

GET = frozenset({"GET"})
API = ("api.example.com",)
EVERY_BUT_GET = "DELETE, OPTIONS, PATCH, POST, PUT, TRACE"

# (id, routes, warnings, probes). A probe (host, method, path, owner, other) is a request that a warning describes:
# the owner route answers it 405, and without the owner it reaches the other route.
SHADOWS = [
    ("no-broader", [RouteSpec("a", "/a", GET), RouteSpec("b", "/a")], [], []),
    ("same-methods", [RouteSpec("a", "/a", GET), RouteSpec("all", "/**", GET)], [], []),
    (
        "param-under-tail",
        [RouteSpec("r", "/x/{id}", frozenset({"GET", "PUT"})), RouteSpec("x", "/x/**", frozenset({"GET", "DELETE"}))],
        ["route 'r' owns /x/{} for GET, PUT: DELETE there get 405, not route 'x'"],
        [("a", "DELETE", "/x/1", "r", "x")],
    ),
    (
        "tail-under-tail",
        [RouteSpec("w", "/w/**", frozenset({"POST"})), RouteSpec("all", "/**", frozenset({"GET", "POST"}))],
        ["route 'w' owns /w/** for POST: GET there get 405, not route 'all'"],
        [("a", "GET", "/w/1", "w", "all")],
    ),
    (
        "leaf-under-own-tail",
        [
            RouteSpec("admin", "/admin", GET),
            RouteSpec("guard", "/admin/**", frozenset({"GET", "POST"})),
            RouteSpec("all", "/**"),
        ],
        [
            "route 'admin' owns /admin for GET: POST there get 405, not route 'guard'",
            "route 'guard' owns /admin/** for GET, POST: DELETE, OPTIONS, PATCH, PUT, TRACE there get 405, not "
            "route 'all'",
        ],
        [("a", "POST", "/admin", "admin", "guard"), ("a", "DELETE", "/admin/x", "guard", "all")],
    ),
    # A broader {param} sibling: the static segment is tried first and owns the path.
    (
        "param-sibling",
        [RouteSpec("me", "/users/me", GET), RouteSpec("user", "/users/{id}", frozenset({"GET", "DELETE"}))],
        ["route 'me' owns /users/me for GET: DELETE there get 405, not route 'user'"],
        [("a", "DELETE", "/users/me", "me", "user")],
    ),
    (
        "param-sibling-deeper",
        [
            RouteSpec("acme-repos", "/orgs/acme/repos", GET),
            RouteSpec("repos", "/orgs/{org}/repos", frozenset({"GET", "POST"})),
        ],
        ["route 'acme-repos' owns /orgs/acme/repos for GET: POST there get 405, not route 'repos'"],
        [("a", "POST", "/orgs/acme/repos", "acme-repos", "repos")],
    ),
    (
        "param-sibling-tail",
        [RouteSpec("me", "/users/me", GET), RouteSpec("user-tree", "/users/{id}/**")],
        [f"route 'me' owns /users/me for GET: {EVERY_BUT_GET} there get 405, not route 'user-tree'"],
        [("a", "POST", "/users/me", "me", "user-tree")],
    ),
    (
        "crossed-params-name-the-overlap",
        [RouteSpec("b-any", "/a/b/{y}", GET), RouteSpec("any-c", "/a/{x}/c", frozenset({"GET", "PUT"}))],
        ["route 'b-any' owns /a/b/c for GET: PUT there get 405, not route 'any-c'"],
        [("a", "PUT", "/a/b/c", "b-any", "any-c")],
    ),
    (
        "each-route-of-the-other-template",
        [
            RouteSpec("me", "/users/me", GET),
            RouteSpec("user-read", "/users/{id}", GET),
            RouteSpec("user-put", "/users/{id}", frozenset({"PUT"})),
            RouteSpec("user-delete", "/users/{id}", frozenset({"DELETE"})),
        ],
        [  # one line per owner: what it takes from each
            "route 'me' owns paths for GET only: DELETE on /users/me get 405, not route 'user-delete'; "
            "PUT on /users/me get 405, not route 'user-put'"
        ],
        [("a", "DELETE", "/users/me", "me", "user-delete"), ("a", "PUT", "/users/me", "me", "user-put")],
    ),
    (
        "nearer-route-decides",  # without 'me', POST /users/me is 405 from 'user': 'me' takes nothing from 'all'
        [RouteSpec("me", "/users/me", GET), RouteSpec("user", "/users/{id}", GET), RouteSpec("all", "/**")],
        [f"route 'user' owns /users/{{}} for GET: {EVERY_BUT_GET} there get 405, not route 'all'"],
        [("a", "POST", "/users/7", "user", "all")],
    ),
    (
        "overlap-owned-by-a-third",  # /a/b/c is the only path both match, and it is 'c''s
        [
            RouteSpec("c", "/a/b/c"),
            RouteSpec("b-any", "/a/b/{y}", GET),
            RouteSpec("any-c", "/a/{x}/c", frozenset({"GET", "PUT"})),
        ],
        [],
        [],
    ),
    (
        "param-sibling-any-method",
        [RouteSpec("me", "/users/me"), RouteSpec("user", "/users/{id}", frozenset({"GET", "DELETE"}))],
        [],
        [],
    ),
    (
        "head-follows-get",
        [RouteSpec("me", "/users/me", GET), RouteSpec("user", "/users/{id}", frozenset({"GET", "HEAD"}))],
        [],
        [],
    ),
    ("param-sibling-other-depth", [RouteSpec("me-x", "/users/me/x", GET), RouteSpec("user", "/users/{id}")], [], []),
    # A host's routes are tried first; a 405 from them is the answer, not a miss that falls through to the
    # wildcard-host and any-host routes.
    (
        "host-route-over-any-host-tail",
        [RouteSpec("admin", "/admin", GET, API), RouteSpec("site", "/**")],
        [f"route 'admin' owns /admin on api.example.com for GET: {EVERY_BUT_GET} there get 405, not route 'site'"],
        [("api.example.com", "POST", "/admin", "admin", "site")],
    ),
    (
        "host-route-over-any-host-route",
        [RouteSpec("admin", "/admin", GET, API), RouteSpec("admin-any", "/admin", frozenset({"GET", "POST"}))],
        ["route 'admin' owns /admin on api.example.com for GET: POST there get 405, not route 'admin-any'"],
        [("api.example.com", "POST", "/admin", "admin", "admin-any")],
    ),
    (
        "wildcard-host-over-any-host",
        [
            RouteSpec("tenant-admin", "/admin", GET, ("*.example.com",)),
            RouteSpec("admin-any", "/admin", frozenset({"GET", "POST"})),
        ],
        ["route 'tenant-admin' owns /admin on *.example.com for GET: POST there get 405, not route 'admin-any'"],
        [("acme.example.com", "POST", "/admin", "tenant-admin", "admin-any")],
    ),
    (
        "exact-host-over-wildcard-host",
        [
            RouteSpec("api-admin", "/admin", GET, API),
            RouteSpec("tenant-admin", "/admin", frozenset({"GET", "DELETE"}), ("*.example.com",)),
        ],
        ["route 'api-admin' owns /admin on api.example.com for GET: DELETE there get 405, not route 'tenant-admin'"],
        [("api.example.com", "DELETE", "/admin", "api-admin", "tenant-admin")],
    ),
    (
        "longer-wildcard-over-shorter",
        [
            RouteSpec("api-admin", "/admin", GET, ("*.api.example.com",)),
            RouteSpec("tenant-admin", "/admin", frozenset({"GET", "POST"}), ("*.example.com",)),
        ],
        ["route 'api-admin' owns /admin on *.api.example.com for GET: POST there get 405, not route 'tenant-admin'"],
        [("eu.api.example.com", "POST", "/admin", "api-admin", "tenant-admin")],
    ),
    (
        "hosts-named-together",
        [
            RouteSpec("admin", "/admin", GET, ("a.example.com", "b.example.com")),
            RouteSpec("admin-any", "/admin", frozenset({"GET", "POST"})),
        ],
        [
            "route 'admin' owns /admin on a.example.com, b.example.com for GET: POST there get 405, not route "
            "'admin-any'"
        ],
        [
            ("a.example.com", "POST", "/admin", "admin", "admin-any"),
            ("b.example.com", "POST", "/admin", "admin", "admin-any"),
        ],
    ),
    (
        "within-one-host",
        [RouteSpec("admin", "/admin", GET, API), RouteSpec("api-site", "/**", hosts=API)],
        [f"route 'admin' owns /admin on api.example.com for GET: {EVERY_BUT_GET} there get 405, not route 'api-site'"],
        [("api.example.com", "POST", "/admin", "admin", "api-site")],
    ),
    (
        "host-nearer-route-decides",
        [RouteSpec("admin", "/admin", GET, API), RouteSpec("api-site", "/**", GET, API), RouteSpec("site", "/**")],
        [f"route 'api-site' owns /** on api.example.com for GET: {EVERY_BUT_GET} there get 405, not route 'site'"],
        [("api.example.com", "POST", "/x", "api-site", "site")],
    ),
    ("host-route-other-path", [RouteSpec("admin", "/admin", GET, API), RouteSpec("public", "/public/**")], [], []),
    ("host-route-any-method", [RouteSpec("admin", "/admin", hosts=API), RouteSpec("site", "/**")], [], []),
    (
        "any-host-route-lacks-it-too",
        [RouteSpec("admin", "/admin", GET, API), RouteSpec("admin-any", "/admin", GET)],
        [],
        [],
    ),
    (
        "apex-is-not-under-its-wildcard",
        [RouteSpec("apex", "/admin", GET, ("example.com",)), RouteSpec("tenant", "/admin", hosts=("*.example.com",))],
        [],
        [],
    ),
    (
        "any-host-route-under-a-host-route",  # the host's requests never reach it; the others never see the host's
        [RouteSpec("admin-any", "/admin", GET), RouteSpec("api-site", "/**", hosts=API)],
        [],
        [],
    ),
]
_ONE = re.compile(r"route '([^']+)' owns \S+(?: on (\S+(?:, \S+)*))? for .+: (.+) there get 405, not route '([^']+)'$")
_MANY = re.compile(r"route '([^']+)'(?: on (\S+(?:, \S+)*))? owns paths for .+ only: (.+?)(; and more \(.*\))?$")
_ENTRY = re.compile(r"(.+) on \S+ get 405, not route '([^']+)'$")


def _named(warning: str) -> list[tuple[str, str | None, str, str]]:
    """(owner, hosts, methods lost, other route) for each route a warning names."""
    if one := _ONE.match(warning):
        owner, hosts, lost, other = one.groups()
        return [(owner, hosts, lost, other)]
    many = _MANY.match(warning)
    assert many is not None, warning
    owner, hosts, listed, _ = many.groups()
    entries = [_ENTRY.match(e) for e in listed.split("; ")]
    assert all(entries), warning
    return [(owner, hosts, *e.groups()) for e in entries if e]


@pytest.mark.parametrize(("routes", "warnings", "probes"), [c[1:] for c in SHADOWS], ids=[c[0] for c in SHADOWS])
def test_shadowed_names_each_405_that_hides_the_next_route(
    routes: list[RouteSpec], warnings: list[str], probes: list[tuple[str, str, str, str, str]]
) -> None:
    assert shadowed(Router(routes)) == warnings
    named = [(owner, other) for w in warnings for owner, _, _, other in _named(w)]
    assert sorted(set(named)) == sorted({(owner, other) for *_, owner, other in probes})  # each one is shown
    for host, method, path, owner, other in probes:
        found = Router(routes).match(host, path, method)
        assert isinstance(found, NoRoute)
        assert found.status == 405
        without = Router([r for r in routes if r.id != owner]).match(host, path, method)
        assert not isinstance(without, NoRoute)
        assert without[0] == other


def test_shadowed_names_the_overlap_as_folded_when_routing_ignores_case() -> None:
    routes = [RouteSpec("me", "/Users/Me", GET), RouteSpec("user", "/users/{id}", frozenset({"GET", "DELETE"}))]
    assert shadowed(Router(routes, fold_case=True)) == [
        "route 'me' owns /users/me for GET: DELETE there get 405, not route 'user'"
    ]
    assert shadowed(Router(routes)) == []  # /Users/Me and /users/me are different paths


_HOSTS = [None, ("h.x.com",), ("*.x.com",)]
# Every path over the tables' literals and one other segment, one segment deeper than any template: beyond that,
# only `/**` routes match, as they do one segment shorter.
_PATHS = ["/" + "/".join(p) for n in range(5) for p in itertools.product(["a", "b", "z"], repeat=n)]


@st.composite
def _tables(draw: st.DrawFn) -> list[RouteSpec]:
    routes = []
    for i in range(draw(st.integers(2, 5))):
        segs = [
            f"{{p{j}}}" if s == "{}" else s
            for j, s in enumerate(draw(st.lists(st.sampled_from(["a", "b", "{}"]), max_size=3)))
        ]
        path = "/" + "/".join([*segs, "**"] if not segs or draw(st.booleans()) else segs)
        methods = draw(st.none() | st.frozensets(st.sampled_from(["GET", "POST", "DELETE"]), min_size=1))
        routes.append(RouteSpec(f"r{i}", path, methods, draw(st.sampled_from(_HOSTS))))
    assume(len({(re.sub(r"\{\w+\}", "{}", r.path), r.hosts) for r in routes}) == len(routes))  # one route each
    return routes


@settings(max_examples=150, deadline=None)
@given(_tables())
def test_shadowed_names_exactly_what_the_router_does(routes: list[RouteSpec]) -> None:
    """Against the router itself: route X is named as taking method M from route Y on X's hosts exactly when some
    request with M is 405 and, were X not configured, would reach Y."""
    router = Router(routes)
    named: set[tuple[str, str, str, str | None]] = set()
    for owner, hosts, lost, other in (n for warning in shadowed(router) for n in _named(warning)):
        for method, host in itertools.product(lost.split(", "), hosts.split(", ") if hosts else [None]):
            named.add((owner, method, other, host))
    taken: set[tuple[str, str, str, str | None]] = set()
    for x in routes:
        without = Router([r for r in routes if r is not x])
        for host, path, method in itertools.product(["h.x.com", "z.x.com", "other"], _PATHS, ["GET", "POST", "PATCH"]):
            found = router.match(host, path, method)
            if isinstance(found, NoRoute) and found.status == 405:
                instead = without.match(host, path, method)
                if not isinstance(instead, NoRoute):
                    taken.add((x.id, method, instead[0], x.hosts[0] if x.hosts else None))
    assert {n for n in named if n[1] in ("GET", "POST", "PATCH")} == taken


def _tenants(hosts: int, routes: int) -> list[RouteSpec]:
    """Tenant hosts serving a GET-only site, before many any-host API routes: each site takes every route's POST."""
    sites = [RouteSpec(f"site{h}", "/**", GET, (f"t{h}.example.com",)) for h in range(hosts)]
    return [*sites, *(RouteSpec(f"api{i}", f"/api/res{i}/{{id}}", frozenset({"POST"})) for i in range(routes))]


def test_shadowed_at_load_bounded_in_lines_and_routes_named() -> None:
    """At load (every worker, every reload) the warnings stay a screenful however many pairs there are."""
    router = Router(_tenants(40, 200))
    brief = shadowed(router, complete=False)
    assert len(brief) == route_shadows.LINES + 1
    assert brief[-1] == ("... and 20 more routes whose 405s hide other routes: `stockade config check` lists them all")
    assert all(len(_named(w)) == route_shadows.LISTED and w.endswith("lists them all)") for w in brief[:-1])
    assert brief[0].startswith("route 'site0' on t0.example.com owns paths for GET only: POST on /api/res")
    full = shadowed(router)
    assert len(full) == 40  # one line per owner and its hosts
    assert sum(len(_named(w)) for w in full) == 40 * 200  # and every route it takes from, once
    assert {n for w in brief[:-1] for n in _named(w)} <= {n for w in full for n in _named(w)}


def test_shadowed_at_load_stops_looking_once_enough_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search itself is bounded: each owner's candidates are checked until LISTED + 1 are found, not all."""
    checked = []
    check = route_shadows._next_in_line
    monkeypatch.setattr(route_shadows, "_next_in_line", lambda *a: checked.append(a) or check(*a))
    shadowed(Router(_tenants(2, 5000)), complete=False)
    assert len(checked) == 2 * (route_shadows.LISTED + 1)
    checked.clear()
    shadowed(Router(_tenants(2, 50)))
    assert len(checked) == 2 * 50

"""Route matching compiled once: host groups, then a segment trie (cost grows with path depth, not route count)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from stockade.security.readings import fold

_PARAM: Final = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
ALL_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


_TAIL_ONLY: Final[tuple[str, ...]] = ("_tail",)
_CACHE_MAX: Final = 8192


class RouteTemplateError(ValueError):
    """A path template or host pattern is invalid, or two routes overlap exactly."""


@dataclass(frozen=True)
class RouteSpec:
    """What the router needs of a route: its id, path template, methods (None = any) and hosts (None = any)."""

    id: str
    path: str
    methods: frozenset[str] | None = None
    hosts: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No route: 404, or 405 with the methods that the matched path does allow."""

    status: int
    allow: tuple[str, ...] = ()


class _Endpoint:
    __slots__ = ("any", "by_method", "implicit")

    def __init__(self) -> None:
        self.by_method: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.any: tuple[str, tuple[str, ...]] | None = None
        self.implicit: set[str] = set()

    def allow(self) -> tuple[str, ...]:
        return tuple(sorted(ALL_METHODS if self.any else self.by_method))


class _Node:
    __slots__ = ("leaf", "param", "static", "tail")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.leaf: _Endpoint | None = None
        self.tail: _Endpoint | None = None


def parse_template(template: str) -> list[tuple[str, str]]:
    """Split a template into (kind, value) segments: ('lit', text), ('param', name), ('star', ''), ('tail', '')."""
    if not template.startswith("/"):
        raise RouteTemplateError(f"path {template!r} must start with '/'")
    raw = template.split("/")[1:]
    out: list[tuple[str, str]] = []
    names: set[str] = set()
    for i, seg in enumerate(raw):
        if seg == "**":
            if i != len(raw) - 1:
                raise RouteTemplateError(f"path {template!r}: '**' is allowed only as the last segment")
            out.append(("tail", ""))
        elif seg == "*":
            out.append(("star", ""))
        elif m := _PARAM.match(seg):
            if m.group(1) in names:
                raise RouteTemplateError(f"path {template!r}: parameter {{{m.group(1)}}} repeats")
            names.add(m.group(1))
            out.append(("param", m.group(1)))
        elif any(c in seg for c in "{}*?#%"):
            raise RouteTemplateError(f"path {template!r}: segment {seg!r} must be literal text, {{name}}, * or **")
        elif seg in (".", "..") or (seg == "" and i != len(raw) - 1):
            raise RouteTemplateError(f"path {template!r}: empty or dot segment")
        else:
            out.append(("lit", seg))
    return out


class _Trie:
    __slots__ = ("fold", "root")

    def __init__(self, fold: bool = False) -> None:
        self.root = _Node()
        self.fold = fold  # literal segments are stored and looked up folded (`fold`; parameter values keep their case)

    def add(self, spec: RouteSpec) -> None:
        node = self.root
        names: list[str] = []
        endpoint_is_tail = False
        for kind, value in parse_template(spec.path):
            if kind == "lit":
                node = node.static.setdefault(fold(value) if self.fold else value, _Node())
            elif kind in ("param", "star"):
                if node.param is None:
                    node.param = _Node()
                node = node.param
                names.append(value or f"_{len(names)}")
            else:
                endpoint_is_tail = True
                names.append("_tail")
        if endpoint_is_tail:
            if node.tail is None:
                node.tail = _Endpoint()
            endpoint = node.tail
        else:
            if node.leaf is None:
                node.leaf = _Endpoint()
            endpoint = node.leaf
        target = (spec.id, tuple(names))
        if spec.methods is None:
            if endpoint.any is not None:
                raise RouteTemplateError(f"routes {endpoint.any[0]!r} and {spec.id!r} both match {spec.path}")
            endpoint.any = target
            return
        for method in sorted(spec.methods):
            other = endpoint.by_method.get(method)
            if other is not None and method not in endpoint.implicit:
                raise RouteTemplateError(f"routes {other[0]!r} and {spec.id!r} both match {method} {spec.path}")
            endpoint.by_method[method] = target
            endpoint.implicit.discard(method)
        # HEAD is GET without a body: a route that allows GET also answers HEAD unless another route claims it.
        if "GET" in spec.methods and "HEAD" not in endpoint.by_method:
            endpoint.by_method["HEAD"] = target
            endpoint.implicit.add("HEAD")

    def match(self, segs: list[str], method: str) -> tuple[str, dict[str, str]] | NoRoute | None:
        """A `(route_id, params)` match, a 405 NoRoute (path matched, method did not), or None."""
        allow: list[tuple[str, ...]] = []
        values: list[str] = []
        found = _walk(self.root, segs, [fold(seg) for seg in segs] if self.fold else segs, 0, values, method, allow)
        if found == _OWNED:  # by value: route ids are never empty (and compiled code does not keep tuple identity)
            return NoRoute(405, allow[0])
        if found is not None:
            route_id, names = found
            if not names or names == _TAIL_ONLY:
                return route_id, {}
            return route_id, {n: v for n, v in zip(names, values, strict=True) if not n.startswith("_")}
        if allow:
            return NoRoute(405, allow[0])
        return None


# The first endpoint (in precedence order) whose template matches the path owns it: a method it does not allow is
# 405, never handed to a broader route. Otherwise `PATCH /admin/x` went to a `/**` route that allows PATCH while
# `/admin/**` (GET only) meant to guard every method of it - the guard held only if its method list was complete.
_OWNED: Final = ("", ())  # the walk's answer when the owner refused the method (its Allow is in `allow`)


def _take(endpoint: _Endpoint, method: str, allow: list[tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    hit = endpoint.by_method.get(method) or endpoint.any
    if hit is None:
        allow.append(endpoint.allow())
        return _OWNED
    return hit


def _walk(
    node: _Node,
    segs: list[str],
    keys: list[str],  # segs as the trie's literals are stored (lower-cased in a folding trie)
    i: int,
    values: list[str],
    method: str,
    allow: list[tuple[str, ...]],
) -> tuple[str, tuple[str, ...]] | None:
    if i == len(segs):
        if node.leaf is not None:
            return _take(node.leaf, method, allow)
        if node.tail is not None:
            values.append("")
            return _take(node.tail, method, allow)
        return None
    seg = segs[i]
    child = node.static.get(keys[i])
    if child is not None and (hit := _walk(child, segs, keys, i + 1, values, method, allow)):
        return hit
    if not seg and i == len(segs) - 1 and node.leaf is not None and node.tail is None:
        # `/secret/` is `/secret`'s (Express, Spring MVC < 6 and ASP.NET serve it so), unless a route names it or
        # `/secret/**` covers it: a broader `/**` route must not get it.
        return _take(node.leaf, method, allow)
    if node.param is not None and seg:
        values.append(seg)
        if hit := _walk(node.param, segs, keys, i + 1, values, method, allow):
            return hit
        values.pop()
    if node.tail is not None:
        values.append("/".join(segs[i:]))
        return _take(node.tail, method, allow)
    return None


class Router:
    """Host groups tried most specific first (exact, then wildcard suffix, then any host); each is a trie.

    Path case: templates match case-sensitively, but a path that a case-insensitive match would give to another
    route is refused (404): Express, ASP.NET and IIS route `/ADMIN/x` as `/admin/x`, so the `/**` route it matches
    exactly must not take it from the `/admin/**` guard. `fold_case=True` routes case-insensitively instead.
    """

    __slots__ = (
        "_any",
        "_cache",
        "_case_only",
        "_case_routes",
        "_exact",
        "_folded",
        "_folded_literals",
        "_literals",
        "_wild",
        "by_host",
    )

    def __init__(
        self, routes: Sequence[RouteSpec], *, fold_case: bool = False, _check_case: bool = True, _tolerant: bool = False
    ) -> None:
        self._cache: dict[tuple[str, str, str], tuple[str, dict[str, str]] | NoRoute] = {}
        self._exact: dict[str, _Trie] = {}
        self._wild: list[tuple[str, _Trie]] = []
        self._any: _Trie | None = None
        wild: dict[str, _Trie] = {}
        case_only: set[str] = set()  # templates (lower-cased) that routes spell differently: case matters there
        for spec in routes:
            for host in spec.hosts or (None,):
                if host is None:
                    if self._any is None:
                        self._any = _Trie(fold_case)
                    trie = self._any
                elif host.startswith("*."):
                    trie = wild.setdefault(host[1:].lower(), _Trie(fold_case))
                elif "*" in host:
                    raise RouteTemplateError(f"host {host!r}: only a leading '*.' wildcard is supported")
                else:
                    trie = self._exact.setdefault(host.lower().rstrip("."), _Trie(fold_case))
                try:
                    trie.add(spec)
                except RouteTemplateError as exc:
                    if _tolerant:  # the case check's router: these templates differ only in case
                        case_only.add(fold(spec.path))
                        continue
                    if fold_case and "both match" in str(exc):
                        raise RouteTemplateError(
                            f"{exc} (ignoring case, as limits.case_insensitive_routing asks)"
                        ) from None
                    raise
        # Longest suffix first, so '*.api.example.com' wins over '*.example.com'.
        self._wild = sorted(wild.items(), key=lambda kv: -len(kv[0]))
        self.by_host = bool(self._exact or self._wild)  # some route is for some hosts: the Host picks routes
        self._folded: Router | None = None
        # A case-insensitive match can differ only where a path segment is a template's literal in another case:
        # other paths (upper-case ids, say) skip the second match.
        literals = {v for spec in routes for kind, v in parse_template(spec.path) if kind == "lit"}
        spellings: dict[str, int] = {}
        for v in literals:
            spellings[fold(v)] = spellings.get(fold(v), 0) + 1
        self._folded_literals = frozenset(spellings)
        # A segment spelled exactly as a literal is safe unless another literal differs from it only in case.
        self._literals = frozenset(v for v in literals if spellings[fold(v)] == 1)
        self._case_only = frozenset(case_only)
        self._case_routes: frozenset[str] = frozenset()
        if _check_case and not fold_case:
            self._folded = folded = Router(routes, fold_case=True, _check_case=False, _tolerant=True)
            # Routes whose templates differ from another's only in case: the config means case to matter there,
            # so a request they match exactly is theirs (a path they match only ignoring case is still refused).
            self._case_routes = frozenset(r.id for r in routes if fold(r.path) in folded._case_only)

    def host_groups(self) -> list[tuple[str | None, list[_Node]]]:
        """Each host group (an exact host, `*.suffix`, or None for any host) with the roots of the tries that a
        request for it walks, in `_match_exact`'s order: the first that matches the path answers, 405 included."""
        anyhost = [self._any.root] if self._any else []
        groups: list[tuple[str | None, list[_Node]]] = [(None, anyhost)] if anyhost else []
        for suffix, _ in self._wild:  # a host under '*.api.example.com' is under '*.example.com' too
            groups.append((f"*{suffix}", [t.root for s, t in self._wild if suffix.endswith(s)] + anyhost))
        for host, trie in self._exact.items():
            groups.append((host, [trie.root] + [t.root for s, t in self._wild if host.endswith(s)] + anyhost))
        return groups

    def match(self, host: str, path: str, method: str) -> tuple[str, dict[str, str]] | NoRoute:
        """The route for a request, cached by (host, path, method): callers must not mutate the params dict."""
        key = (host, path, method)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._match(host, path, method)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _match(self, host: str, path: str, method: str) -> tuple[str, dict[str, str]] | NoRoute:
        found = self._match_exact(host, path, method)
        folded = self._folded
        if folded is not None and self._case_matters(path) and _route_id(found) not in self._case_routes:
            other = folded._match_exact(host, path, method)
            if _route_id(other) != _route_id(found):
                return _NOT_FOUND
        return found

    def _case_matters(self, path: str) -> bool:
        literals = self._literals
        folded = self._folded_literals
        return any(seg not in literals and fold(seg) in folded for seg in path.split("/"))

    def _match_exact(self, host: str, path: str, method: str) -> tuple[str, dict[str, str]] | NoRoute:
        segs = path.split("/")[1:]
        trie = self._exact.get(host)
        if trie is not None and (found := trie.match(segs, method)) is not None:
            return found
        for suffix, trie in self._wild:
            if host.endswith(suffix) and (found := trie.match(segs, method)) is not None:
                return found
        if self._any is not None and (found := self._any.match(segs, method)) is not None:
            return found
        return _NOT_FOUND


_NOT_FOUND: Final = NoRoute(404)


def _route_id(found: tuple[str, dict[str, str]] | NoRoute) -> str | None:
    return None if isinstance(found, NoRoute) else found[0]

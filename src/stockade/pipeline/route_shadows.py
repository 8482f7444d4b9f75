"""Load-time warnings: where a route's 405 keeps a method from the route a request would reach without it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from stockade.pipeline.routing import ALL_METHODS, Router, _Endpoint, _Node

# A template as segments: literal text (as the trie stores it), "{}" (a parameter or `*`), or "**" last. No literal
# can hold braces, so "{}" is also the segment a witness path puts where only parameters and `/**` may match.
_Template = tuple[str, ...]
# a path shown, the methods lost there, the route that would have had them
_Entry = tuple[str, str, str]
# owners, the owners' methods, what they take from the routes next in line, whether the listing stopped early
_Taken = tuple[str, str, tuple[_Entry, ...], bool]

LISTED = 3  # other routes one warning names at load, before "and more"
LINES = 20  # warnings at load (every worker, every reload), before the pointer to `stockade config check`


def shadowed(router: Router, *, complete: bool = True) -> list[str]:
    """Each route that owns a path for some methods only, where the route next in line for that path would have
    served others: those get 405 (the route that owns a path owns all its methods). Worth a warning at load:
    Kong and Envoy would have tried the next route. Sorted, one line per owners, their hosts and what they take.

    Not `complete` (at load): at most LINES lines naming at most LISTED other routes each, and the search for an
    owner's victims stops there, so a host-specific `/**` before thousands of any-host routes costs no more than
    a few. `stockade config check` shows them all."""
    groups = router.host_groups()
    deepest = max((len(t) for _, roots in groups for _, t, _ in _endpoints(roots[0], (), (roots[0],))), default=0)
    hosts: dict[_Taken, set[str]] = {}
    for host, roots in groups:
        for taken in _taken(roots, deepest + 1, None if complete else LISTED):
            hosts.setdefault(taken, set()).update(() if host is None else (host,))
    out = sorted(_line(taken, on) for taken, on in hosts.items())
    if complete or len(out) <= LINES:
        return out
    return [
        *out[:LINES],
        f"... and {len(out) - LINES} more routes whose 405s hide other routes: `stockade config check` lists them all",
    ]


def _line(taken: _Taken, on: set[str]) -> str:
    owners, mine, entries, more = taken
    where = f" on {', '.join(sorted(on))}" if on else ""
    if len(entries) == 1 and not more:
        (shown, lost, other), *_ = entries
        return f"route {owners} owns {shown}{where} for {mine}: {lost} there get 405, not route {other!r}"
    listed = "; ".join(f"{lost} on {shown} get 405, not route {other!r}" for shown, lost, other in entries)
    tail = "; and more (`stockade config check` lists them all)" if more else ""
    return f"route {owners}{where} owns paths for {mine} only: {listed}{tail}"


def _taken(roots: list[_Node], depth: int, listed: int | None) -> Iterator[_Taken]:
    """What the group's own routes (its first trie's) take from the endpoints next in line after them; for each
    owner, the first `listed` of them if not None."""
    for owner, template, nodes in _endpoints(roots[0], (), (roots[0],)):
        if owner.any is not None:
            continue
        mine = {m for m in owner.by_method if m not in owner.implicit}  # HEAD only if a route claims it
        owners = ", ".join(map(repr, sorted({route_id for route_id, _ in owner.by_method.values()})))
        entries: dict[_Entry, None] = {}
        for other, other_template in _after(owner, template, nodes, roots[1:]):
            serves = ({m: other.any for m in ALL_METHODS} if other.any else {}) | other.by_method
            lost: dict[str, set[str]] = {}
            for method, (route_id, _) in serves.items():
                if method not in mine and method != "HEAD":  # HEAD follows GET: listing GET hands both on
                    lost.setdefault(route_id, set()).add(method)
            if not lost:
                continue
            shared = _overlap(template, other_template)
            if _next_in_line(roots, owner, other, shared, depth):
                shown = "/" + "/".join(shared)
                entries.update(dict.fromkeys((shown, ", ".join(sorted(m)), r) for r, m in lost.items()))
                if listed is not None and len(entries) > listed:
                    break
        if entries:
            found = sorted(entries)
            more = listed is not None and len(found) > listed
            yield owners, ", ".join(sorted(mine)), tuple(found[:listed] if more else found), more


def _endpoints(
    node: _Node, template: _Template, nodes: tuple[_Node, ...]
) -> Iterator[tuple[_Endpoint, _Template, tuple[_Node, ...]]]:
    """Every endpoint under `node`, with its template and the nodes from the root to it."""
    if node.leaf is not None:
        yield node.leaf, template, nodes
    if node.tail is not None:
        yield node.tail, (*template, "**"), nodes
    for key, child in node.static.items():
        yield from _endpoints(child, (*template, key), (*nodes, child))
    if node.param is not None:
        yield from _endpoints(node.param, (*template, "{}"), (*nodes, node.param))


def _after(
    owner: _Endpoint, template: _Template, nodes: tuple[_Node, ...], later: list[_Node]
) -> Iterator[tuple[_Endpoint, _Template]]:
    """The endpoints that the router tries after `owner` and that match some path it matches: in its own trie, a
    `/**` on its way down, or under a parameter where it has a literal; and any in a later trie."""
    prefix = template[:-1] if template[-1:] == ("**",) else template
    for depth, node in enumerate(nodes):
        if node.tail is not None and node.tail is not owner:
            yield node.tail, (*prefix[:depth], "**")
        # where `owner` has a literal, the parameter beside it comes next (never beside `/x/`'s empty one)
        if depth < len(prefix) and prefix[depth] not in ("{}", "") and node.param is not None:
            yield from _meeting(node.param, template[depth + 1 :], (*prefix[:depth], "{}"))
    for root in later:
        yield from _meeting(root, template, ())


def _meeting(node: _Node, rest: _Template, at: _Template) -> Iterator[tuple[_Endpoint, _Template]]:
    """The endpoints under `node` (reached by `at`) that match some path `rest` matches from there."""
    if node.tail is not None:
        yield node.tail, (*at, "**")
    if not rest or rest[0] == "**":
        if node.leaf is not None:
            yield node.leaf, at
        if not rest:
            return
    seg = rest[0]
    after = rest if seg == "**" else rest[1:]
    children: Iterable[tuple[str, _Node]]
    if seg in ("{}", "**"):  # lazily: a caller listing the first few need not walk thousands of siblings
        children = ((key, child) for key, child in node.static.items() if key or seg == "**")  # `{}` is never empty
    else:
        children = [(seg, node.static[seg])] if seg in node.static else []
    for key, child in children:
        yield from _meeting(child, after, (*at, key))
    if node.param is not None and seg:
        yield from _meeting(node.param, after, (*at, "{}"))


def _overlap(a: _Template, b: _Template) -> _Template:
    """The template of the paths both match (they are known to share one)."""
    out: list[str] = []
    i = 0
    while i < len(a) and i < len(b) and "**" not in (a[i], b[i]):
        out.append(b[i] if a[i] == "{}" else a[i])
        i += 1
    return (*out, *(b[i:] if a[i:] == ("**",) else a[i:]))  # a `/**` matches the other's rest (or none of it)


def _next_in_line(roots: list[_Node], owner: _Endpoint, other: _Endpoint, shared: _Template, depth: int) -> bool:
    """Whether some path both match meets `owner` first and `other` second. Paths with `{}` wherever `shared` is not
    literal meet the fewest endpoints, so they decide; for a `/**`, rests of every length up to the deepest
    template's (a longer one meets only the `/**` endpoints that one does)."""
    base = [seg for seg in shared if seg != "**"]
    rests = range(depth - len(base) + 1) if shared[-1:] == ("**",) else range(1)
    for n in rests:
        met: list[_Endpoint] = []
        for root in roots:
            _meet(root, [*base, *["{}"] * n], 0, met)
        if len(met) >= 2 and met[0] is owner and met[1] is other:
            return True
    return False


def _meet(node: _Node, segs: list[str], i: int, met: list[_Endpoint]) -> None:
    """The router's walk (`routing._walk`), not stopping at an endpoint: the first two a path meets, in order."""
    if len(met) >= 2:
        return
    if i == len(segs):
        met += [e for e in (node.leaf, node.tail) if e is not None]
        return
    seg = segs[i]
    if (child := node.static.get(seg)) is not None:
        _meet(child, segs, i + 1, met)
    if not seg and i == len(segs) - 1 and node.leaf is not None and node.tail is None:
        met.append(node.leaf)
    if node.param is not None and seg:
        _meet(node.param, segs, i + 1, met)
    if node.tail is not None:
        met.append(node.tail)

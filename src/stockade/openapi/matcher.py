"""Spec path templates compiled into a segment trie: matching costs path depth, not the number of operations."""

from __future__ import annotations

from typing import Generic, TypeVar

import re2

T = TypeVar("T")
_MAX_TEMPLATE_PARAMS = 16


class TemplateError(ValueError):
    """A path template the matcher cannot represent (the caller adds the spec location)."""


class _Node(Generic[T]):
    __slots__ = ("leaf", "mixed", "param", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node[T]] = {}
        self.mixed: list[tuple[str, re2._Regexp, tuple[str, ...], _Node[T]]] = []
        self.param: _Node[T] | None = None
        self.leaf: dict[str, tuple[T, tuple[str, ...]]] | None = None


def _segment(seg: str) -> tuple[str, str | None, tuple[str, ...]]:
    """('lit', text) | ('param', name) | ('mixed', regex) for one template segment."""
    if "{" not in seg and "}" not in seg:
        return "lit", seg, ()
    if seg.startswith("{") and seg.endswith("}") and seg.count("{") == 1 and seg.count("}") == 1:
        return "param", None, (seg[1:-1],)
    names: list[str] = []
    regex: list[str] = []
    rest = seg
    while rest:
        start = rest.find("{")
        if start < 0:
            regex.append(re2.escape(rest))
            break
        end = rest.find("}", start)
        if end < 0 or "}" in rest[:start]:
            raise TemplateError(f"unbalanced braces in segment {seg!r}")
        regex.append(re2.escape(rest[:start]))
        names.append(rest[start + 1 : end])
        regex.append("([^/]+?)")
        rest = rest[end + 1 :]
    if len(names) > _MAX_TEMPLATE_PARAMS or any(not n for n in names):
        raise TemplateError(f"bad parameters in segment {seg!r}")
    return "mixed", "".join(regex), tuple(names)


class PathTrie(Generic[T]):
    """Maps (path, method) to a value added under a template like `/pets/{id}` or `/files/{name}.{ext}`.

    Literal segments win over templated ones (OpenAPI's "concrete paths first"), then partly templated
    segments, then whole-segment parameters; a dead end backtracks, as the gateway router does.
    """

    __slots__ = ("root",)

    def __init__(self) -> None:
        self.root: _Node[T] = _Node()

    def add(self, template: str, method: str, value: T) -> None:
        if not template.startswith("/"):
            raise TemplateError("a path must start with '/'")
        node = self.root
        names: list[str] = []
        for seg in template.split("/")[1:]:
            kind, text, seg_names = _segment(seg)
            if kind == "lit":
                assert text is not None  # noqa: S101 - narrowing for the type checker only
                node = node.static.setdefault(text, _Node())
            elif kind == "param":
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                assert text is not None  # noqa: S101 - narrowing for the type checker only
                found = next((m for m in node.mixed if m[0] == text), None)
                if found is None:
                    found = (text, re2.compile(text), seg_names, _Node())
                    node.mixed.append(found)
                elif found[2] != seg_names:
                    raise TemplateError(f"{template} repeats another path with different parameter names")
                node = found[3]
            names.extend(seg_names)
        if len(set(names)) != len(names):
            raise TemplateError(f"{template}: a parameter name repeats")
        if node.leaf is None:
            node.leaf = {}
        if method in node.leaf:
            raise TemplateError(f"{method.upper()} {template} is the same operation as another templated path")
        node.leaf[method] = (value, tuple(names))

    def match(self, path: str, method: str) -> tuple[T, dict[str, str]] | None:
        values: list[str] = []
        hit = _walk(self.root, path.split("/")[1:], 0, values, method)
        if hit is None:
            return None
        value, names = hit
        return value, dict(zip(names, values, strict=True)) if names else {}


def _walk(
    node: _Node[T], segs: list[str], i: int, values: list[str], method: str | None
) -> tuple[T, tuple[str, ...]] | None:
    if i == len(segs):
        leaf = node.leaf
        if leaf is None:
            return None
        if method is None:
            return next(iter(leaf.values()), None)
        return leaf.get(method) or (leaf.get("get") if method == "head" else None)
    seg = segs[i]
    child = node.static.get(seg)
    if child is not None and (hit := _walk(child, segs, i + 1, values, method)):
        return hit
    if not seg:
        return None
    for _, regex, _, sub in node.mixed:
        m = regex.fullmatch(seg)
        if m is not None:
            mark = len(values)
            values.extend(m.groups())
            if hit := _walk(sub, segs, i + 1, values, method):
                return hit
            del values[mark:]
    if node.param is not None:
        values.append(seg)
        if hit := _walk(node.param, segs, i + 1, values, method):
            return hit
        values.pop()
    return None

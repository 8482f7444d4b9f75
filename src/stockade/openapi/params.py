"""Parameter deserialisation (OpenAPI `style`/`explode`) for path, query, header and cookie parameters."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from stockade.openapi.shapes import ANY, Shape, coerce, coerce_assignments, coerce_items, coerce_pairs
from stockade.security.readings import fold, php_name

DEFAULT_STYLE = {"path": "simple", "query": "form", "header": "simple", "cookie": "form"}
STYLES = {
    "path": frozenset({"simple", "label", "matrix"}),
    "query": frozenset({"form", "spaceDelimited", "pipeDelimited", "deepObject"}),
    "header": frozenset({"simple"}),
    "cookie": frozenset({"form"}),
}
_DELIMS = {"spaceDelimited": " ", "pipeDelimited": "|"}


class Malformed(Exception):
    """A parameter whose syntax is wrong for its style, or a single-valued parameter sent twice (400)."""

    def __init__(self, pointer: str, rule: str) -> None:
        super().__init__(pointer)
        self.pointer = pointer
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: str
    style: str
    explode: bool
    shape: Shape
    json: bool = False  # declared with `content: {application/json: ...}`: the value is a JSON document

    @property
    def pointer(self) -> str:
        return f"/{self.location}/{self.name.replace('~', '~0').replace('/', '~1')}"


def _split_value(p: Param, value: str, sep: str) -> Any:
    """A simple/form-style value: scalar, `a,b,c` array, or object (`k,v,...` or, exploded, `k=v,...`)."""
    if p.json:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise Malformed(p.pointer, "json") from None
    shape = p.shape
    if shape.kind == "array":
        return coerce_items(value.split(sep) if value else [], shape)
    if shape.kind == "object":
        parts = value.split(sep) if value else []
        obj = coerce_assignments(parts, shape) if p.explode else coerce_pairs(parts, shape)
        if obj is None:
            raise Malformed(p.pointer, "style")
        return obj
    return coerce(value, shape)


def path_value(p: Param, raw: str) -> Any:
    """A path segment (already percent-decoded) by `simple`, `label` or `matrix` style."""
    if p.style == "simple":
        return _split_value(p, raw, ",")
    if p.style == "label":
        if not raw.startswith("."):
            raise Malformed(p.pointer, "style")
        return _split_value(p, raw[1:], "." if p.explode else ",")
    prefix = f";{p.name}="
    if p.shape.kind == "object" and p.explode:  # ;role=admin;firstName=Alex
        if not raw.startswith(";"):
            raise Malformed(p.pointer, "style")
        obj = coerce_assignments(raw[1:].split(";"), p.shape)
        if obj is None:
            raise Malformed(p.pointer, "style")
        return obj
    if p.shape.kind == "array" and p.explode:  # ;id=3;id=4
        items = raw.split(";")[1:] if raw.startswith(";") else None
        if items is None or not all(i.startswith(prefix[1:]) for i in items):
            raise Malformed(p.pointer, "style")
        return coerce_items([i[len(prefix) - 1 :] for i in items], p.shape)
    if not raw.startswith(prefix):
        raise Malformed(p.pointer, "style")
    return _split_value(p, raw[len(prefix) :], ",")


def query_value(p: Param, query: dict[str, list[str]], used: set[str]) -> tuple[bool, Any]:
    """(present, value) of a query parameter; records the query keys it consumed in `used`."""
    shape = p.shape
    if p.style == "deepObject":
        prefix = p.name + "["
        obj: dict[str, Any] = {}
        for key, values in query.items():
            if key.startswith(prefix) and key.endswith("]"):
                prop = key[len(prefix) : -1]
                if len(values) != 1 or "[" in prop:
                    raise Malformed(p.pointer, "style" if "[" in prop else "duplicate")
                obj[prop] = coerce(values[0], shape.props.get(prop, ANY))
                used.add(key)
        return bool(obj), obj
    if shape.kind == "object" and p.explode and not p.json:  # form, exploded: the properties are the keys
        obj = {}
        for prop, prop_shape in shape.props.items():
            found = query.get(prop)
            if found is not None:
                if len(found) != 1:
                    raise Malformed(f"{p.pointer}/{prop}", "duplicate")
                obj[prop] = coerce(found[0], prop_shape)
                used.add(prop)
        return bool(obj), obj
    got = query.get(p.name)
    if got is None:
        return False, None
    values = got
    used.add(p.name)
    if shape.kind == "array" and p.explode and not p.json:
        return True, coerce_items(values, shape)
    if len(values) != 1:
        raise Malformed(p.pointer, "duplicate")
    if shape.kind == "array" and p.style in _DELIMS:
        return True, coerce_items(values[0].split(_DELIMS[p.style]) if values[0] else [], shape)
    return True, _split_value(p, values[0], ",")


def query_names(params: tuple[Param, ...]) -> frozenset[str]:
    """The query keys the parameters own (a deepObject's own `name[prop]` keys aside), whose bracket spellings
    (`limit[]`, `limit[0]`) Express (qs), PHP and Rails read as the same parameter."""
    out: set[str] = set()
    for p in params:
        if p.style == "deepObject":
            continue
        if p.shape.kind == "object" and p.explode and not p.json:  # exploded form: the properties are the keys
            out.update(p.shape.props)
        else:
            out.add(p.name)
    return frozenset(out)


def name_alias(
    keys: Iterable[str], names: Container[str], used: Container[str] = (), folded: Mapping[str, str] | None = None
) -> str | None:
    """The first of `names` that a key spells another way an upstream reads as it, or None: with brackets
    (`role[]=admin` for `role`), or as PHP names keys (`limit%00`, ` limit`, `page.size` for `page_size`;
    readings.php_name), or, given `folded` (fold(name) -> name), in another case (`LIMIT`: ASP.NET Core binds
    query keys ignoring case)."""
    for key in keys:
        if key not in used:
            base = php_name(key)
            if base in names:
                if base != key:
                    return base
            elif folded is not None:
                declared = folded.get(fold(base))
                if declared is not None:
                    return declared
    return None


def folded_names(names: Iterable[str]) -> dict[str, str]:
    """fold(name) -> name for `name_alias`; names that fold alike are left out (the spec itself tells them apart
    by case, so case is not an alias there)."""
    out: dict[str, str] = {}
    clashes: set[str] = set()
    for name in names:
        key = fold(name)
        if key in out and out[key] != name:
            clashes.add(key)
        out[key] = name
    return {k: v for k, v in out.items() if k not in clashes}


@dataclass(frozen=True, slots=True)
class HeaderSpellings:
    """Declared header parameters by the name CGI and WSGI servers read them as (`X_Limit` and `X-Limit` are
    both HTTP_X_LIMIT), so another spelling of one cannot slip past its checks."""

    names: dict[bytes, str]  # lower-case, `-` as `_` -> the declared (lower-case) name
    any_underscore: bool  # a declared name has `_`: then dashed request names can be spellings of it too

    @classmethod
    def of(cls, params: tuple[Param, ...]) -> HeaderSpellings:
        names = {p.name.replace("-", "_").encode("latin-1"): p.name for p in params}
        return cls(names, any("_" in p.name for p in params))

    def alias(self, raw: list[tuple[bytes, bytes]]) -> str | None:
        """The declared name that a request header spells differently, or None."""
        for name, _ in raw:
            if b"_" in name or self.any_underscore:
                lower = name.lower()
                declared = self.names.get(lower.replace(b"-", b"_"))
                if declared is not None and lower != declared.encode("latin-1"):
                    return declared
        return None


def header_value(p: Param, values: list[str]) -> Any:
    if p.shape.kind != "array" and len(values) != 1:
        raise Malformed(p.pointer, "duplicate")
    value = ",".join(values)
    if p.shape.kind == "array" and not p.json:
        return coerce_items([v.strip() for v in value.split(",")] if value.strip() else [], p.shape)
    return _split_value(p, value.strip(), ",")


def parse_cookies(headers: list[str], names: Container[str] | None = None) -> dict[str, list[str]]:
    """`Cookie: a=1; b=2` (RFC 6265 syntax; every occurrence of a name is kept so duplicates can be refused),
    only the cookies in `names` if given. Raises Malformed for a quoted value of those with a backslash."""
    out: dict[str, list[str]] = {}
    for header in headers:
        for item in header.split(";"):
            name, sep, value = item.strip().partition("=")
            name = name.rstrip(" \t")  # `session =x` is the cookie `session` to Starlette and http.cookies
            if sep and name and (names is None or name in names):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                    if "\\" in value:  # http.cookies and Werkzeug unquote `\074` to `<` after the check saw `\074`
                        raise Malformed(f"/cookie/{name.replace('~', '~0').replace('/', '~1')}", "escape")
                out.setdefault(name, []).append(value)
    return out

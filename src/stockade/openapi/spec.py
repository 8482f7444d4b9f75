"""A compiled spec: its operations in a path trie behind the `servers` base paths, cached per file version."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stockade.openapi.loader import Documents, Located, SpecError, join
from stockade.openapi.matcher import PathTrie, TemplateError
from stockade.openapi.operations import Operation, build_operation
from stockade.openapi.schema import SchemaSet

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SHARED_KEY = "openapi.specs"


@dataclass(frozen=True)
class Options:
    """What changes the compiled result (and so is part of the cache key)."""

    strict: bool = False
    responses: bool = False
    base_path: str | None = None


class Spec:
    """Operations by (path, method), with their validators. Built once; read-only afterwards."""

    def __init__(self, path: Path, options: Options) -> None:
        self.path = path.resolve()
        self.options = options
        self.docs = Documents()
        root = self.docs.root(self.path)
        doc = root.node
        if not isinstance(doc, dict):
            raise root.error("a spec must be a mapping")
        version = str(doc.get("openapi", ""))
        if "swagger" in doc:
            raise root.error("Swagger 2.0 is not supported; convert the spec to OpenAPI 3", "swagger")
        if not (version.startswith(("3.0.", "3.1.")) or version in ("3.0", "3.1")):
            raise root.error(f"unsupported OpenAPI version {version!r} (3.0.x and 3.1.x are supported)", "openapi")
        self.version = version
        self.schemas = SchemaSet(self.docs, legacy=version.startswith("3.0"))
        self.bases = _bases(root, options.base_path)
        self.trie: PathTrie[Operation] = PathTrie()
        self.operations: list[Operation] = []
        paths = doc.get("paths") or {}
        if not isinstance(paths, dict):
            raise root.error("paths must be a mapping", "paths")
        for template in paths:
            item = self.docs.deref(root.child("paths", template))
            if not isinstance(item.node, dict):
                raise item.error("a path item must be a mapping")
            for method in METHODS:
                if method not in item.node:
                    continue
                op = build_operation(
                    self.docs, self.schemas, item, method, template, strict=options.strict, responses=options.responses
                )
                try:
                    self.trie.add(template, method, op)
                except TemplateError as exc:
                    raise root.error(str(exc), "paths", template) from None
                self.operations.append(op)
        self._check_components(root)
        self.files = {f: f.stat().st_mtime_ns for f in self.docs.files}

    def _check_components(self, root: Located) -> None:
        """Compile every component schema too, so a broken one is an error even before an operation uses it."""
        components = root.node.get("components") or {}
        schemas = components.get("schemas") if isinstance(components, dict) else None
        if not isinstance(schemas, dict) or not schemas:
            return
        at = root.child("components", "schemas")
        refs = [self.schemas.convert(at.child(name), "response_open", close=False) for name in schemas]
        self.schemas.validator({"anyOf": refs}, "response_open", at)

    def matrix_parameter(self) -> str | None:
        """Where the spec first takes a matrix-style path parameter (`operationId (pointer)`), or None: such
        paths carry ';', which the gateway refuses unless `limits.path_parameters` allows it."""
        for op in self.operations:
            for p in op.params.get("path", ()):
                if p.style == "matrix":
                    return f"{op.operation_id} ({p.pointer})"
        return None

    def match(self, path: str, method: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation for a request path (as routed: decoded, normalised) and method, with path values."""
        method = method.lower()
        for base in self.bases:
            if base:
                if not path.startswith(base) or (len(path) > len(base) and path[len(base)] != "/"):
                    continue
                rest = path[len(base) :] or "/"
            else:
                rest = path
            found = self.trie.match(rest, method)
            if found is not None:
                return found
        return None

    def fresh(self) -> bool:
        try:
            return all(f.stat().st_mtime_ns == m for f, m in self.files.items())
        except OSError:
            return False


def _bases(root: Located, override: str | None) -> tuple[str, ...]:
    """Base paths from `servers` (variables expanded from their enum or default), longest first."""
    if override is not None:
        return (override.rstrip("/"),)
    servers = root.node.get("servers") or [{"url": "/"}]
    if not isinstance(servers, list):
        raise root.error("servers must be a list", "servers")
    out: set[str] = set()
    for i, server in enumerate(servers):
        if not isinstance(server, dict) or not isinstance(server.get("url"), str):
            raise root.error("a server needs a url", "servers", i)
        at = Located(server, root.file, join(root.pointer, "servers", i))
        out.update(_expand(server["url"], server.get("variables") or {}, at))
    return tuple(sorted(out, key=lambda b: (-len(b), b)))


def _expand(url: str, variables: dict[str, Any], at: Located) -> list[str]:
    names = [part.split("}", 1)[0] for part in url.split("{")[1:]]
    choices: list[list[str]] = []
    for name in names:
        var = variables.get(name)
        if not isinstance(var, dict) or "default" not in var:
            raise at.error(f"server variable {name!r} needs a default", "variables")
        enum = var.get("enum")
        choices.append([str(v) for v in enum] if isinstance(enum, list) and enum else [str(var["default"])])
    out = []
    for combo in itertools.product(*choices):
        text = url
        for name, value in zip(names, combo, strict=True):
            text = text.replace("{" + name + "}", value)
        out.append(urlsplit(text).path.rstrip("/"))
    return out


def load_spec(path: Path, options: Options, shared: dict[str, Any]) -> Spec:
    """The compiled spec for `path`, shared by every route that names the same file version and options."""
    cache: dict[tuple[Path, Options], Spec] = shared.setdefault(SHARED_KEY, {})
    key = (path.resolve(), options)
    spec = cache.get(key)
    if spec is None or not spec.fresh():
        try:
            spec = Spec(path, options)
        except RecursionError:
            raise SpecError(path, "", "schemas nest too deeply") from None
        cache[key] = spec
    return spec

"""Reading spec documents (YAML or JSON) and resolving `$ref`s within and across local files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import orjson
import yaml

MAX_SPEC_BYTES = 32 * 1024 * 1024
MAX_REF_HOPS = 64


class SpecError(ValueError):
    """A spec that cannot be enforced. The message names the file and the JSON pointer of the problem."""

    def __init__(self, file: Path | str, pointer: str, message: str) -> None:
        super().__init__(f"openapi spec {file}#{pointer}: {message}")
        self.file = str(file)
        self.pointer = pointer
        self.message = message


def escape(token: str | int) -> str:
    """One JSON-pointer reference token (RFC 6901)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def join(pointer: str, *tokens: str | int) -> str:
    return pointer + "".join("/" + escape(t) for t in tokens)


@dataclass(frozen=True, slots=True)
class Located:
    """A node of a spec document together with where it came from (for messages and `$ref` resolution)."""

    node: Any
    file: Path
    pointer: str

    def child(self, *tokens: str | int) -> Located:
        node = self.node
        for t in tokens:
            node = node[t]
        return Located(node, self.file, join(self.pointer, *tokens))

    def error(self, message: str, *tokens: str | int) -> SpecError:
        return SpecError(self.file, join(self.pointer, *tokens), message)


class Documents:
    """Loads each referenced file once; resolves `file#/pointer` references relative to the referring file.

    Only local files: a remote (`http:`) reference is a config error, so loading never touches the network.
    """

    def __init__(self) -> None:
        self._docs: dict[Path, Any] = {}
        self.files: list[Path] = []

    def load(self, path: Path) -> Any:
        path = path.resolve()
        doc = self._docs.get(path)
        if doc is None and path not in self._docs:
            doc = _read(path)
            self._docs[path] = doc
            self.files.append(path)
        return doc

    def root(self, path: Path) -> Located:
        return Located(self.load(path), path.resolve(), "")

    def resolve(self, ref: object, where: Located) -> Located:
        """The target of one `$ref` string found at `where` (a node whose `$ref` member it is)."""
        if not isinstance(ref, str):
            raise where.error("$ref must be a string", "$ref")
        target, _, fragment = ref.partition("#")
        if "://" in target or target.startswith(("//", "urn:")):
            raise where.error(f"remote reference {ref!r} is not supported (only local files)", "$ref")
        file = (where.file.parent / unquote(target)).resolve() if target else where.file
        try:
            doc = self.load(file)
        except SpecError as exc:
            raise where.error(f"cannot load {ref!r}: {exc.message}", "$ref") from None
        pointer = unquote(fragment)
        if pointer and not pointer.startswith("/"):
            raise where.error(f"reference {ref!r}: only JSON-pointer fragments are supported", "$ref")
        node = doc
        for raw in pointer.split("/")[1:] if pointer else ():
            token = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise where.error(f"reference {ref!r} does not resolve (no {token!r} in {file.name})", "$ref")
        return Located(node, file, pointer)

    def deref(self, at: Located) -> Located:
        """Follow `$ref` chains of a non-schema object (parameter, response, ...) to the object itself."""
        seen: set[tuple[Path, str]] = set()
        while isinstance(at.node, dict) and "$ref" in at.node:
            key = (at.file, at.pointer)
            if key in seen or len(seen) > MAX_REF_HOPS:
                raise at.error("circular $ref")
            seen.add(key)
            at = self.resolve(at.node["$ref"], at)
        return at


_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_Base):  # type: ignore[misc]
    """Safe YAML without the timestamp type: `2024-01-01` in an enum or example stays a string, as in JSON."""

    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _read(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(path, "", f"spec file is larger than {MAX_SPEC_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(path, "", f"cannot read: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SpecError(path, "", f"invalid JSON: {exc}") from None
    try:
        loader = _SpecLoader(data.decode("utf-8"))
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise SpecError(path, "", "spec is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(path, "", f"YAML syntax error{where}: {getattr(exc, 'problem', None) or exc}") from None

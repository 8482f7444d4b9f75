"""Read a config document: a file (or, once, a pipe) of bounded size, strict YAML, and each path's line.

Everything here that can go wrong is a ConfigError naming the file (and the line where there is one), never a
traceback: the file is the operator's, and `config check` must say what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from stockade.errors import ConfigError

MAX_FILE_BYTES = 16 * 1024 * 1024  # a config is kilobytes; /dev/zero or a log file named by mistake is not
MAX_NODES = 100_000  # a config, with every alias expanded, is far smaller; a "billion laughs" file is not
_TOO_LARGE = f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB (not a config file?)"
_Loc = tuple[str | int, ...]


def read_text(path: Path) -> str:
    """The text of a config to load once: a regular file, or a pipe or character device (`config check
    /dev/stdin`, `<(...)`), of at most MAX_FILE_BYTES, in UTF-8."""
    data, _ = read_bounded(path, pipes=True)
    return decode(data, path)


def read_bounded(path: str | os.PathLike[str], *, pipes: bool) -> tuple[bytes, os.stat_result]:
    """At most MAX_FILE_BYTES of the file at `path`, and its status as opened. A regular file; with `pipes`, a FIFO
    or character device too (read once, up to the cap: /dev/zero is refused as too large). Opened without waiting
    (a FIFO's open would wait for a writer) and its type checked on what was opened, not on the path."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
            if not pipes:
                raise ConfigError(
                    [
                        f"{path}: not a regular file: a config that is re-read on SIGHUP must be a file (a pipe or "
                        "device can be read once, at start)"
                    ]
                )
            os.set_blocking(fd, True)  # wait for what the writer has yet to write; EOF when it closes
        elif not stat.S_ISREG(st.st_mode):
            raise ConfigError([f"{path}: not a regular file (a config is a file of YAML text)"])
        data = _read_at_most(fd, MAX_FILE_BYTES + 1)  # a regular file may have grown since fstat
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: {_TOO_LARGE}"])
    return data, st


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):  # a pipe gives what it holds, not `left`
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def decode(data: bytes, path: str | os.PathLike[str]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config is not UTF-8 text"]) from None


def parse(text: str, source: str) -> Any:
    """The document (None if it has none). Refuses repeated keys, `!!binary`, aliases that expand beyond MAX_NODES
    or refer to themselves, integers too long to read, and nesting too deep, each as a ConfigError with its line."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([f"{source}: {_TOO_LARGE}"])
    try:
        return _load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise ConfigError([f"{where}: {kind}: {exc.problem or exc}"]) from None
    except yaml.reader.ReaderError as exc:  # a NUL or other character YAML does not allow; it has a position only
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError([f"{source}:{line}:{column}: YAML syntax error: unacceptable character {char}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML syntax error: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: YAML nested too deeply"]) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated mapping key (YAML keeps the last silently: a second `stages:` in a
    route would drop the first list's security stages without a word), `!!binary` (bytes, which pydantic takes
    as text) and an integer Python will not read (more than 4300 digits: a ValueError, not a YAMLError)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; explicit keys may override what it brings
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                continue  # unhashable: the constructor below reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"repeated key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, "integer too long (more than 4300 digits)", node.start_mark
            ) from None

    def construct_yaml_binary(self, node: yaml.ScalarNode) -> bytes:
        raise yaml.constructor.ConstructorError(
            None, None, "the !!binary tag is not supported (write the value as text)", node.start_mark
        )


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:binary", _StrictLoader.construct_yaml_binary)


def _load(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        size = _expanded_size(root, {})
        if size > MAX_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the YAML expands to {size} nodes with its aliases (at most {MAX_NODES})", None
            )
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document with every alias expanded, computed once per node (a shared node is counted as
    often as it is referenced, without walking it again). An alias inside the node it names is refused: no setting
    is recursive, and the line map and the models would recurse without end."""
    found = memo.get(id(node))
    if found == 0:
        raise yaml.constructor.ConstructorError(
            None, None, "recursive alias (it refers to a node that contains it)", node.start_mark
        )
    if found is not None:
        return found
    memo[id(node)] = 0  # under way
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, memo) for item in node.value)
    memo[id(node)] = size
    return size


def line_map(text: str) -> dict[_Loc, int]:
    """Map each YAML path to its 1-based line, for messages. Best effort: never raises."""
    out: dict[_Loc, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def walk(node: yaml.Node, loc: _Loc, path: frozenset[int]) -> None:
        out[loc] = node.start_mark.line + 1
        if id(node) in path:
            return  # a recursive alias (parse refuses it; this map is also made of text that was not parsed)
        path |= {id(node)}
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    out[(*loc, k.value)] = k.start_mark.line + 1
                    walk(v, (*loc, k.value), path)
        elif isinstance(node, yaml.SequenceNode):
            for idx, item in enumerate(node.value):
                walk(item, (*loc, idx), path)

    if root is not None:
        try:
            walk(root, (), frozenset())
        except RecursionError:
            pass  # lines for the shallower paths are already there
    return out

"""The compiled data plane: the request path's modules built with mypyc, used only while they match the sources.

`make install` compiles the modules in COMPILED (tools/build_native.py) into `_native/` beside this file, with a
manifest of the SHA-256 of every source file of the package as it was built. At `import stockade`, `activate()`
checks the manifest against the sources as they are now and, if every one matches (and the interpreter is the
one they were built for), puts a finder in front of the import system that loads the compiled modules from
`_native/`. Anything else (no build, a source edited since, another Python, `STOCKADE_NATIVE=off`) leaves the
pure-Python modules in charge: the same source, so the same behaviour, only slower. A stale build can so never
run in place of the code beside it.

This module itself is never compiled; it imports nothing of the project's.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

NATIVE_ENV = "STOCKADE_NATIVE"  # "off": run the pure-Python modules even when a fresh build exists
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PACKAGE_DIR / "_native"
MANIFEST = "manifest.json"
GROUP = "stockade_native"  # mypyc's shared library for the group: `stockade_native__mypyc`

# Every module on the proxied request's path that profiling shows (bench/micro_proxy.py under cProfile): they
# call each other, so they are compiled together, and calls between them are C calls.
COMPILED: tuple[str, ...] = (
    "stockade.observability.decision_log",
    "stockade.observability.metrics",
    "stockade.pipeline.context",
    "stockade.pipeline.forward",
    "stockade.pipeline.headers",
    "stockade.pipeline.intake",
    "stockade.pipeline.local",
    "stockade.pipeline.principal",
    "stockade.pipeline.record",
    "stockade.pipeline.response",
    "stockade.pipeline.route",
    "stockade.pipeline.routing",
    "stockade.pipeline.runner",
    "stockade.pipeline.verdict",
    "stockade.proxy.client",
    "stockade.proxy.common",
    "stockade.proxy.exchange",
    "stockade.proxy.forwarding",
    "stockade.proxy.http",
    "stockade.proxy.local_replies",
    "stockade.proxy.request_head",
    "stockade.proxy.response_side",
    "stockade.proxy.server",
    "stockade.proxy.spool",
    "stockade.proxy.upstream",
    "stockade.security.netaddr",
    "stockade.security.paths",
    "stockade.stages.authn.anonymous",
    "stockade.stages.authn.api_key",
    "stockade.stages.authn.jwt",
)

status = "pure Python: not activated"  # what activate() found, for the start-up line and the bench record


def source_path(module: str) -> Path:
    """The .py file of one of this package's modules."""
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def fingerprint() -> dict[str, str]:
    """SHA-256 of every source file of the package, by path, as the build records it and activate() compares it.

    Every file, not only the compiled ones: mypyc builds in what it knows of the modules they import (a config
    model's field types, a class's attributes), so a build is stale once any of them changes. About 7 ms."""
    files = sorted(
        p for p in PACKAGE_DIR.rglob("*.py") if not p.relative_to(PACKAGE_DIR).parts[0].startswith(("_native", "."))
    )
    return {p.relative_to(PACKAGE_DIR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def interpreter() -> str:
    """What a build is bound to: the implementation's cache tag and the extension-module suffix."""
    return f"{sys.implementation.cache_tag} {importlib.machinery.EXTENSION_SUFFIXES[0]}"


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules (and mypyc's shared library) in the build directory, and nothing else."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def _extension(name: str) -> Path | None:
    base = BUILD_DIR.joinpath(*name.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _check() -> dict[str, Path] | str:
    """The compiled files by module name if the build matches the sources and this interpreter, else why not."""
    try:
        manifest = json.loads((BUILD_DIR / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built (make install builds it)"
    except (OSError, ValueError) as exc:
        return f"unreadable build manifest ({exc})"
    if not isinstance(manifest, dict) or manifest.get("interpreter") != interpreter():
        return "built for another Python (make install rebuilds it)"
    built = manifest.get("sources")
    now = fingerprint()
    if built != now:
        built = built if isinstance(built, dict) else {}
        changed = sorted(set(built) ^ set(now) | {f for f in now if built.get(f) != now[f]})
        return f"sources changed since the build (stockade/{changed[0]}; make install rebuilds it)"
    files: dict[str, Path] = {}
    for name in (*COMPILED, f"{GROUP}__mypyc"):
        file = _extension(name)
        if file is None:
            return f"incomplete build: no {name}"
        files[name] = file
    return files


def stale() -> str | None:
    """Why the build cannot be used (not built, sources changed, ...), or None when it matches the sources."""
    found = _check()
    return found if isinstance(found, str) else None


def activate() -> str:
    """Load the compiled modules from now on if the build matches the sources; returns (and records) what holds.

    Must run before any module in COMPILED is imported (stockade/__init__.py calls it): a module already loaded
    stays what it is."""
    global status
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return status
    loaded = [m for m in COMPILED if m in sys.modules]
    off = os.environ.get(NATIVE_ENV, "").strip().lower() in {"off", "0", "false", "no"}
    found = f"{NATIVE_ENV}=off" if off else _check()
    if isinstance(found, str):
        status = f"pure Python: {found}"
    elif loaded:
        status = f"pure Python: {loaded[0]} was imported before the compiled modules were activated"
    else:
        sys.meta_path.insert(0, _Finder(found))
        status = "compiled (mypyc)"
    return status


def is_compiled(module: ModuleType) -> bool:
    """Whether a module was loaded from the compiled build."""
    return Path(getattr(module, "__file__", "") or "").suffix not in {".py", ".pyc"}

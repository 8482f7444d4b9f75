"""The compiled data plane (stockade.native): what CI tests is what ships, a build is used only while it matches
the sources beside it, and the compiled and the pure-Python gateway answer the same bytes alike."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stockade import native
from stockade.testing import TestUpstream

STOCKADE = str(Path(sys.executable).parent / "stockade")
COMPILED = native.status == "compiled (mypyc)"


def test_ci_runs_the_compiled_data_plane() -> None:
    """`make install` builds it; a CI run on the pure-Python modules would test what users do not run."""
    if os.environ.get("CI") != "true" and not COMPILED:
        pytest.skip(f"the compiled data plane is not in use here ({native.status}); CI requires it")
    assert native.status == "compiled (mypyc)"
    for name in native.COMPILED:
        assert native.is_compiled(importlib.import_module(name)), name
    assert not native.is_compiled(native)  # the module that decides is never compiled


def _fake_build(root: Path, manifest: object | None, missing: str | None = None) -> None:
    root.mkdir()
    if manifest is not None:
        (root / native.MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in (*native.COMPILED, f"{native.GROUP}__mypyc"):
        if name != missing:
            file = root.joinpath(*name.split("."))
            file.parent.mkdir(parents=True, exist_ok=True)
            file.with_name(file.name + suffix).write_bytes(b"")


def _edited(sources: dict[str, str]) -> dict[str, str]:
    first = native.COMPILED[0]
    return {**sources, first: "0" * 64}


CURRENT = {"interpreter": native.interpreter(), "sources": native.fingerprint()}


@pytest.mark.parametrize(
    ("manifest", "missing", "why"),
    [
        pytest.param(None, None, "not built", id="no-build"),
        pytest.param("{not json", None, "unreadable build manifest", id="garbled-manifest"),
        pytest.param([1, 2], None, "built for another Python", id="manifest-not-an-object"),
        pytest.param(
            {**CURRENT, "interpreter": "cpython-399 .so"}, None, "built for another Python", id="other-python"
        ),
        pytest.param({**CURRENT, "sources": _edited(CURRENT["sources"])}, None, "sources changed", id="source-edited"),
        pytest.param(
            {**CURRENT, "sources": {**CURRENT["sources"], "config/models.py": "0" * 64}},
            None,
            "sources changed since the build (stockade/config/models.py",
            id="imported-module-edited",  # mypyc built in its types: a compiled module is stale with it
        ),
        pytest.param({**CURRENT, "sources": {}}, None, "sources changed", id="module-added-since"),
        pytest.param(CURRENT, native.COMPILED[-1], "incomplete build", id="module-missing"),
        pytest.param(CURRENT, f"{native.GROUP}__mypyc", "incomplete build", id="shared-library-missing"),
        pytest.param(CURRENT, None, None, id="matching-build"),
    ],
)
def test_a_build_is_used_only_while_it_matches_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: object, missing: str | None, why: str | None
) -> None:
    build = tmp_path / "_native"
    if manifest is not None:
        _fake_build(build, manifest, missing)
    monkeypatch.setattr(native, "BUILD_DIR", build)
    reason = native.stale()
    if why is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(why)


def _run(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return out.stdout.strip()


PROBE = "import stockade.proxy.client as c; from stockade import native; print(native.status, c.__file__)"


def test_stockade_native_off_runs_the_pure_python_modules() -> None:
    status = _run(PROBE, STOCKADE_NATIVE="off")
    assert status.startswith("pure Python: STOCKADE_NATIVE=off ") and status.endswith("client.py")
    if COMPILED:
        assert _run(PROBE, STOCKADE_NATIVE="").startswith("compiled (mypyc) ")


_BUILTIN_TYPES = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool", "object"}


def _names_a_type(value: ast.expr) -> bool:
    """`A | B`, `dict[str, Any]`: unions and subscripts of CamelCase or builtin type names (not `FLAG_A | FLAG_B`)."""
    if not isinstance(value, (ast.BinOp, ast.Subscript)):
        return False
    for node in ast.walk(value):
        if isinstance(node, ast.Name):
            if not (node.id in _BUILTIN_TYPES or (node.id[:1].isupper() and not node.id.isupper())):
                return False
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.BitOr):
                return False
        elif isinstance(node, ast.Constant):
            if node.value is not None and node.value is not Ellipsis:
                return False
        elif not isinstance(node, (ast.Subscript, ast.Tuple, ast.Attribute, ast.Load, ast.BitOr)):
            return False
    return True


def _module_globals_not_final(source: str) -> list[str]:
    """Module-level names of `source` bound by an assignment that is neither `Final` nor a type alias."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value, annotation = node.targets, node.value, None
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value, annotation = [node.target], node.value, node.annotation
        else:
            continue
        if annotation is not None and ast.unparse(annotation).split("[")[0] in {"Final", "typing.Final"}:
            continue
        if annotation is None and _names_a_type(value):
            continue  # `X = A | B` or `X = dict[str, Any]`: a type alias, which compiled code never reads
        found += [ast.unparse(t) for t in targets]
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("X: Final = 1\nY: Final[dict[str, int]] = {}\nZ: typing.Final = 2\n", []),
        ("Verdict = Continue | Deny\nSnapshot = dict[str, Any]\n", []),
        ("X = 1\n", ["X"]),
        ("X: int = 1\n", ["X"]),
        ("log = logging.getLogger('x')\n", ["log"]),
        ("X = 64 * 1024\n", ["X"]),
        ("X = A | 2\n", ["X"]),
        ("PAUSE_ALL = PAUSE_A | PAUSE_B\n", ["PAUSE_ALL"]),
        ("X = frozenset[bytes]()\n", ["X"]),
        ("def f() -> None:\n    x = 1\n", []),
    ],
)
def test_the_final_check_finds_plain_module_globals(source: str, expected: list[str]) -> None:
    assert _module_globals_not_final(source) == expected


@pytest.mark.parametrize("module", native.COMPILED)
def test_compiled_modules_keep_their_constants_final(module: str) -> None:
    # Compiled code looks a plain module global up in the module's dict at every read; a Final one is a C static.
    assert _module_globals_not_final(native.source_path(module).read_text()) == []


# -- the two gateways answer alike ------------------------------------------------------------------------------

CONFIG = """
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{enabled: false}}
log: {{decisions: off}}
limits: {{max_header_bytes: 2048}}
routes:
  - id: api
    match: {{path: "/api/**", methods: [GET, POST, HEAD]}}
    upstream: {upstream}
    stages:
      - use: anonymous
      - use: request_size
        config: {{max_bytes: 64}}
      - use: security_headers
"""

# Raw requests, each sent on its own connection; the last request of each closes it (or the gateway does).
REQUESTS = [
    b"GET /api/items/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"HEAD /api/items/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /api/bytes/10 HTTP/1.1\r\nHost: a\r\n\r\nGET /api/chunked/3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\nConnection: close\r\n\r\n" + b"a" * 65,
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n",
    b"GET /api/../admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /elsewhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"DELETE /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /api/status/503 HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nConnection: close\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    b"GET /api/x HTTP/1.0\r\nHost: a\r\n\r\n",
]

# What differs between any two runs: the date, generated request ids, the port the upstream saw the gateway use.
_VARYING = re.compile(rb"(?i)(date: [^\r\n]*)|(\b[0-9a-f]{8}\d+\b)|(127\.0\.0\.1:\d+)")


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)  # every request in the table ends the connection: Connection: close, 1.0 or an error
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return _VARYING.sub(b"<varies>", b"".join(chunks))


@pytest.fixture
def gateways(tmp_path: Path, upstream: TestUpstream) -> Iterator[Callable[[bytes], tuple[bytes, bytes]]]:
    if not COMPILED:
        pytest.skip(f"the compiled data plane is not in use here ({native.status})")
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    for mode in ("off", ""):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        path = tmp_path / f"gw-{mode or 'compiled'}.yaml"
        path.write_text(CONFIG.format(port=port, upstream=upstream.url))
        env = {**os.environ, "STOCKADE_NATIVE": mode}
        proc = subprocess.Popen([STOCKADE, "serve", "--config", str(path)], env=env, stderr=subprocess.PIPE)
        procs.append((proc, port))
    try:
        for proc, port in procs:
            end = time.monotonic() + 20
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < end, "gateway did not start"
                    time.sleep(0.05)
        yield lambda raw: (_exchange(procs[0][1], raw), _exchange(procs[1][1], raw))
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def test_compiled_and_pure_python_gateways_answer_alike(gateways: Callable[[bytes], tuple[bytes, bytes]]) -> None:
    for raw in REQUESTS:
        pure, compiled = gateways(raw)
        assert pure.startswith(b"HTTP/1.1 "), (raw, pure)
        assert compiled == pure, raw

"""The compiled data plane (stockade.native): what CI tests is what ships, a build is used only while it matches
the sources beside it, and the compiled and the pure-Python gateway answer the same bytes alike."""

from __future__ import annotations

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
_VARYING = re.compile(rb"(?i)(date: [^\r\n]*)|(\b[0-9a-f]{8}-\d+\b)|(127\.0\.0\.1:\d+)")


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

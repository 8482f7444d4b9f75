"""HTTPS upstreams: certificates verified (custom CA or system store), host names checked, SNI, keep-alive."""

from __future__ import annotations

import contextlib
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stockade.testing import BackgroundLoop, TestGateway, TestUpstream
from tests.tlsutil import Issued, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def upstream_tls(cert: Issued, *, max_version: ssl.TLSVersion | None = None) -> tuple[ssl.SSLContext, list[str | None]]:
    """A server context for a TestUpstream, and the list of SNI names it receives."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    if max_version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    names: list[str | None] = []
    ctx.sni_callback = lambda _obj, name, _ctx: names.append(name)  # type: ignore[func-returns-value]
    return ctx, names


def route(ca_file: Path | None = None, server_name: str | None = None) -> str:
    opts = "".join(
        [f", ca_file: '{ca_file}'" if ca_file else "", f", server_name: {server_name}" if server_name else ""]
    )
    return f"""
routes:
  - id: api
    match: {{path: /**}}
    upstream: {{url: "{{upstream}}"{opts}}}
    stages: [{{use: anonymous}}]
"""


@contextlib.contextmanager
def https_upstream(ctx: ssl.SSLContext | None, template: str, **kw: Any) -> Iterator[tuple[TestGateway, TestUpstream]]:
    """A gateway and a TestUpstream (HTTPS with `ctx`) on one loop; `{upstream}` in the template is its URL."""
    bg = BackgroundLoop()
    try:
        with (
            TestUpstream(bg, ssl_context=ctx) as up,
            TestGateway(template.replace("{upstream}", up.url), loop=bg, **kw) as gw,
        ):
            yield gw, up
    finally:
        bg.stop()


def _log(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("case", "use_ca", "server_name", "status", "detail"),
    [
        pytest.param("good", "ca", None, 200, None, id="ca_file-verifies"),
        pytest.param("good", None, None, 502, "unable to get local issuer", id="system-store-does-not-know-test-ca"),
        pytest.param("good", "other_ca", None, 502, "unable to get local issuer", id="wrong-ca_file"),
        pytest.param("other_host", "ca", None, 502, "IP address mismatch", id="cert-for-another-host"),
        pytest.param("other_host", "ca", "api.internal", 200, None, id="server_name-makes-it-verify"),
        pytest.param("other_host", "ca", "wrong.internal", 502, "Hostname mismatch", id="server_name-still-checked"),
        pytest.param("expired", "ca", None, 502, "certificate has expired", id="expired-certificate"),
        # The TLS 1.1-only upstream (uvloop) drops the connection without an alert: a reset, not an SSLError.
        pytest.param("tls11", "ca", None, 502, "connect failed", id="upstream-below-tls12"),
    ],
)
def test_https_upstream_verification(
    pki: Pki, tmp_path: Path, case: str, use_ca: str | None, server_name: str | None, status: int, detail: str | None
) -> None:
    certs = {
        "good": pki.rsa,
        "tls11": pki.rsa,
        "other_host": pki.ca.issue("api-internal", hosts=("api.internal",)),
        "expired": pki.ca.issue("expired", days=-1),
    }
    ctx, sni = upstream_tls(certs[case], max_version=ssl.TLSVersion.TLSv1_1 if case == "tls11" else None)
    ca_file = {"ca": pki.ca.pem, "other_ca": pki.other_ca.pem, None: None}[use_ca]
    log = tmp_path / "decisions.log"
    with https_upstream(ctx, route(ca_file, server_name), log_path=log) as (gw, up):
        got, _, body = gw.request("GET", "/x")
        gw.flush_log()
    assert got == status
    if status == 200:
        assert orjson.loads(body)["target"] == "/x"
        assert sni == [server_name]  # SNI is the override, and none for a bare IP address
    else:
        assert orjson.loads(body)["reason"] == "upstream.unavailable"
        (entry,) = _log(log)
        assert entry["reason"] == "upstream.unavailable"
        assert detail is not None and detail in str(entry["detail"])
        assert up.received == []  # nothing was sent to an upstream that failed verification


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_upstream_connection_is_kept_alive(pki: Pki, scheme: str) -> None:
    # (http too: llhttp forgets keep-alive once a response completes, which once made every request reconnect)
    ctx = upstream_tls(pki.rsa)[0] if scheme == "https" else None
    with https_upstream(ctx, route(pki.ca.pem if ctx else None)) as (gw, up):
        statuses = [gw.request("GET", f"/r{i}")[0] for i in range(3)]  # three client connections
        pool = next(iter(gw.server.pools.pools.values()))
        idle = gw.bg.call(lambda: len(pool.idle))
    assert statuses == [200, 200, 200]
    assert up.connections == 1  # one TLS handshake with the upstream, reused
    assert [r.target for r in up.received] == ["/r0", "/r1", "/r2"]
    assert idle == 1


def test_https_upstream_relative_ca_file_is_relative_to_the_config(pki: Pki) -> None:
    ctx, _ = upstream_tls(pki.rsa)
    with https_upstream(ctx, route(Path(pki.ca.pem.name)), base_dir=pki.dir) as (gw, _):
        assert gw.request("GET", "/")[0] == 200


def test_https_upstream_reload_picks_up_new_ca_file_contents(pki: Pki, tmp_path: Path) -> None:
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_bytes(pki.other_ca.pem.read_bytes())  # the wrong CA first
    ctx, _ = upstream_tls(pki.rsa)
    with https_upstream(ctx, route(ca_file)) as (gw, up):
        assert gw.request("GET", "/")[0] == 502
        ca_file.write_bytes(pki.ca.pem.read_bytes())  # the operator fixes the file and reloads
        assert gw.request("GET", "/")[0] == 502  # nothing is re-read behind the operator's back
        gw.reload(route(ca_file).replace("{upstream}", up.url))
        assert gw.request("GET", "/")[0] == 200

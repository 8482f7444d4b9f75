"""TLS settings are loaded with the config: every unusable file or key is a config error naming its field."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from stockade.clock import SYSTEM_CLOCK
from stockade.config.loader import load_config_text
from stockade.config.models import TlsListen
from stockade.errors import ConfigError
from stockade.pipeline.route import Runtime
from stockade.pipeline.stage import Services
from stockade.proxy.tls import listener_context
from stockade.runtime import build_runtime
from stockade.testing import FakeClock, TestGateway
from tests.tlsutil import Pki, client_context, make_pki, try_get


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def build(text: str, base_dir: Path | None = None) -> Runtime:
    return build_runtime(load_config_text(text, base_dir=base_dir, env={}), Services(clock=FakeClock()))


ROUTE = """
routes:
  - id: local
    match: {path: /**}
    handler: {use: static}
    stages: [{use: anonymous}]
"""


def listen(cert: object, key: object, extra: str = "") -> str:
    return f"listen:\n  tls: {{cert: '{cert}', key: '{key}'{extra}}}\n{ROUTE}"


def upstream(url: str, extra: str) -> str:
    return f"""
routes:
  - id: api
    match: {{path: /**}}
    upstream: {{url: "{url}"{extra}}}
    stages: [{{use: anonymous}}]
"""


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-cert", r"field 'listen\.tls\.cert': no such file: .*nope\.crt"),
        ("missing-key", r"field 'listen\.tls\.key': no such file: .*nope\.key"),
        pytest.param(
            "unreadable-key",
            r"field 'listen\.tls\.key': cannot read .*unreadable\.key: Permission denied",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file with mode 000"),
        ),
        ("cert-not-pem", r"field 'listen\.tls\.cert': .* is not a PEM certificate"),
        ("key-mismatch", r"field 'listen\.tls\.key': cannot use .*server-rsa-2\.key with certificate .*: KEY_VALUES"),
        ("key-of-other-type", r"field 'listen\.tls\.key': cannot use .*server-ec\.key with certificate .*server-rsa"),
        ("encrypted-key", r"field 'listen\.tls\.key': the private key is encrypted"),
        ("rsa-1024", r"field 'listen\.tls\.cert': RSA key of 1024 bits; at least 2048 are required"),
        ("ec-p521", r"field 'listen\.tls\.cert': ECDSA key on secp521r1; use P-256 or P-384"),
        ("ed25519", r"field 'listen\.tls\.cert': Ed25519PublicKey keys are not supported"),
        ("client-ca-missing", r"field 'listen\.tls\.client_ca': no such file"),
        ("client-ca-not-a-ca", r"field 'listen\.tls\.client_ca': no usable CA certificates"),
        ("client-ca-without-auth", r"field 'listen\.tls\.client_auth': client_ca is set; say optional or required"),
        ("upstream-ca-missing", r"route 'api' \(routes\[0\]\) > field 'upstream\.ca_file': no such file"),
        ("upstream-ca-not-a-ca", r"route 'api' \(routes\[0\]\) > field 'upstream\.ca_file': no usable CA"),
        ("ca-file-on-http", r"route 'api' \(routes\[0\]\) > field 'upstream\.ca_file': only used with an https://"),
        ("server-name-on-http", r"route 'api' \(routes\[0\]\) > field 'upstream\.server_name': only used with"),
    ],
)
def test_tls_config_error_names_the_field(pki: Pki, case: str, expected: str) -> None:
    d, rsa = pki.dir, pki.rsa
    garbage = d / "garbage.pem"
    garbage.write_text("not a certificate\n")
    texts = {
        "missing-cert": lambda: listen(d / "nope.crt", rsa.key),
        "missing-key": lambda: listen(rsa.cert, d / "nope.key"),
        "unreadable-key": lambda: listen(rsa.cert, _unreadable(d / "unreadable.key")),
        "cert-not-pem": lambda: listen(garbage, rsa.key),
        "key-mismatch": lambda: listen(rsa.cert, _issue(pki, "server-rsa-2")[1]),
        "key-of-other-type": lambda: listen(rsa.cert, pki.ec.key),
        "encrypted-key": lambda: listen(*_issue(pki, "encrypted", password=b"secret")),
        "rsa-1024": lambda: listen(*_issue(pki, "rsa-1024", key_type="rsa-1024")),
        "ec-p521": lambda: listen(*_issue(pki, "ec-p521", key_type="ec-p521")),
        "ed25519": lambda: listen(*_issue(pki, "ed25519", key_type="ed25519")),
        "client-ca-missing": lambda: listen(rsa.cert, rsa.key, f", client_ca: '{d}/nope.pem', client_auth: required"),
        "client-ca-not-a-ca": lambda: listen(rsa.cert, rsa.key, f", client_ca: '{garbage}', client_auth: optional"),
        "client-ca-without-auth": lambda: listen(rsa.cert, rsa.key, f", client_ca: '{pki.ca.pem}'"),
        "upstream-ca-missing": lambda: upstream("https://api.example", f", ca_file: '{d}/nope.pem'"),
        "upstream-ca-not-a-ca": lambda: upstream("https://api.example", f", ca_file: '{garbage}'"),
        "ca-file-on-http": lambda: upstream("http://api.example", f", ca_file: '{pki.ca.pem}'"),
        "server-name-on-http": lambda: upstream("http://api.example", ", server_name: api.internal"),
    }
    with pytest.raises(ConfigError) as info:
        build(texts[case]())
    assert len(info.value.problems) == 1
    assert re.search(expected, info.value.problems[0]), info.value.problems


def _unreadable(path: Path) -> Path:
    path.write_text("secret")
    path.chmod(0)
    return path


def _issue(pki: Pki, name: str, **kw: object) -> tuple[Path, Path]:
    issued = pki.ca.issue(name, **kw)  # type: ignore[arg-type]
    return issued.cert, issued.key


def test_tls_config_relative_paths_are_relative_to_the_config_file(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    text = listen(pki.rsa.cert.name, pki.rsa.key.name, f", client_ca: {pki.ca.pem.name}, client_auth: optional")
    with TestGateway(text, base_dir=pki.dir) as gw:
        assert try_get(gw.port, client_context(pki.ca.pem, cert=pki.client)) == 200


def test_listener_context_pins_the_mozilla_intermediate_suites(pki: Pki) -> None:
    ctx = listener_context(TlsListen(cert=str(pki.rsa.cert), key=str(pki.rsa.key)), pki.dir)
    assert {c["name"] for c in ctx.get_ciphers()} == {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_TICKET


OPENSSL_CNF = """
openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = TLS_AES_128_CCM_SHA256:TLS_AES_128_GCM_SHA256
Groups = X448:P-521
"""

PROBE = """
import ssl, sys
from pathlib import Path
from stockade.config.models import TlsListen
from stockade.proxy.tls import listener_context
from tests.tlsutil import client_context, handshake_in_memory
cert, key, ca = sys.argv[1:4]
default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
default.load_cert_chain(cert, key)
ours = listener_context(TlsListen(cert=cert, key=key), Path("/"))
for ctx in (default, ours):
    print(sorted(c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"))
    try:
        print(handshake_in_memory(client_context(Path(ca), curve="X25519"), ctx))
    except ssl.SSLError as exc:
        print("refused", exc.reason)
"""


def test_listener_context_overrides_openssl_cnf_defaults(pki: Pki, tmp_path: Path) -> None:
    # OpenSSL's defaults equal the profile today, so only a changed openssl.cnf shows that the pins hold.
    cnf = tmp_path / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(pki.rsa.cert), str(pki.rsa.key), str(pki.ca.pem)],
        env={**os.environ, "OPENSSL_CONF": str(cnf)},
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out[:2] == ["['TLS_AES_128_CCM_SHA256', 'TLS_AES_128_GCM_SHA256']", "refused NO_SUITABLE_KEY_SHARE"]
    assert out[2:] == [
        "['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']",
        "TLSv1.3",
    ]


@pytest.mark.parametrize(
    ("days", "key_mode", "expected"),
    [
        (365, 0o600, []),
        (10, 0o600, ["field 'listen.tls.cert'", "expires in"]),
        (-2, 0o600, ["field 'listen.tls.cert'", "expired on", "clients will refuse it"]),
        (365, 0o644, ["field 'listen.tls.key'", "readable by every user (mode 644)", "chmod 600"]),
        (365, 0o640, []),  # group-readable (an ssl-cert group) is a deliberate setup
    ],
    ids=["fine", "expiring", "expired", "key-world-readable", "key-group-readable"],
)
def test_listener_certificate_and_key_warnings(
    pki: Pki, tmp_path: Path, days: int, key_mode: int, expected: list[str]
) -> None:
    """What serves but should not: said at every load (and by `config check`), never a reason to refuse."""
    cert, key = _issue(pki, "warned", days=days, file=f"warned{days}{key_mode:o}")
    key.chmod(key_mode)
    loaded = load_config_text(listen(cert, key), env={})
    runtime = build_runtime(loaded, Services(clock=FakeClock(start=SYSTEM_CLOCK.time())))
    joined = "\n".join(runtime.tls.warnings)
    assert all(fragment in joined for fragment in expected), joined
    assert bool(runtime.tls.warnings) is bool(expected)
    assert runtime.tls.listener is not None  # a warning, not a refusal


def test_config_check_prints_tls_warnings(pki: Pki, tmp_path: Path) -> None:
    cert, key = _issue(pki, "soon", days=5, file="soon-check")
    path = tmp_path / "gw.yaml"
    path.write_text(listen(cert, key))
    result = subprocess.run(
        [sys.executable, "-m", "stockade", "config", "check", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "expires in" in result.stderr
    assert result.stderr.count("expires in") == 1  # printed once (not also logged)


def test_a_client_ca_without_a_root_is_warned_about(pki: Pki) -> None:
    """OpenSSL verifies clients only up to a self-signed root: an intermediate (here: a leaf) alone as client_ca
    loaded fine and then refused every client without a word."""
    not_a_root, _ = _issue(pki, "intermediate-like", file="not-a-root")
    extra = f", client_ca: '{not_a_root}', client_auth: optional"
    loaded = load_config_text(listen(pki.rsa.cert, pki.rsa.key, extra), env={})
    runtime = build_runtime(loaded, Services(clock=FakeClock(start=SYSTEM_CLOCK.time())))
    assert any("field 'listen.tls.client_ca'" in w and "no self-signed (root)" in w for w in runtime.tls.warnings)
    good = load_config_text(
        listen(pki.rsa.cert, pki.rsa.key, f", client_ca: '{pki.ca.pem}', client_auth: optional"), env={}
    )
    assert not build_runtime(good, Services(clock=FakeClock(start=SYSTEM_CLOCK.time()))).tls.warnings


def _bundle(tmp_path: Path, roots: int) -> Path:
    from tests.stages.authn.certs import Pki as EcPki  # EC keys: a dozen CAs in milliseconds

    parts = []
    for i in range(roots):
        (tmp_path / f"ca{i}").mkdir()
        parts.append(EcPki(tmp_path / f"ca{i}", f"Root {i}").ca_file.read_bytes())
    path = tmp_path / f"bundle{roots}.pem"
    path.write_bytes(b"".join(parts))
    return path


MTLS_ROUTE = """
routes:
  - id: partners
    match: {path: /**}
    handler: {use: static}
    stages: [{use: mtls, config: STAGE}]
"""


@pytest.mark.parametrize(
    ("roots", "stage", "warned"),
    [
        (11, "{}", True),
        (11, "{issuers: [ca0/ca.pem]}", False),  # the stage says which CA it means
        (10, "{}", False),  # a few private roots is a choice, not a bundle
    ],
    ids=["bundle-unrestricted", "bundle-with-issuers", "few-roots"],
)
def test_a_broad_client_ca_with_unrestricted_mtls_is_warned_about(
    pki: Pki, tmp_path: Path, roots: int, stage: str, warned: bool
) -> None:
    """With the system bundle as client_ca, any public CA's customer has a verified certificate, and its CN passes
    `allowed: [admin]` on an mtls route that does not name its CAs."""
    ca = _bundle(tmp_path, roots)
    text = (
        f"listen:\n  tls: {{cert: '{pki.rsa.cert}', key: '{pki.rsa.key}', client_ca: '{ca}', client_auth: optional}}\n"
        + MTLS_ROUTE.replace("STAGE", stage)
    )
    runtime = build_runtime(
        load_config_text(text, base_dir=tmp_path, env={}), Services(clock=FakeClock(start=SYSTEM_CLOCK.time()))
    )
    found = [w for w in runtime.tls.warnings if "root CAs" in w]
    assert bool(found) is warned, runtime.tls.warnings
    if warned:
        assert "field 'listen.tls.client_ca'" in found[0] and f"holds {roots} root CAs" in found[0]
        assert "route 'partners'" in found[0] and "issuers" in found[0]


@pytest.mark.skipif(not ssl.get_default_verify_paths().cafile, reason="no system CA bundle file on this machine")
def test_config_check_with_the_system_bundle_warns_once_and_prints_no_deprecation_noise(
    pki: Pki, tmp_path: Path
) -> None:
    bundle = ssl.get_default_verify_paths().cafile
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"listen:\n  tls: {{cert: '{pki.rsa.cert}', key: '{pki.rsa.key}', client_ca: '{bundle}', "
        "client_auth: optional}\n" + MTLS_ROUTE.replace("STAGE", "{}")
    )
    result = subprocess.run(
        [sys.executable, "-W", "default", "-m", "stockade", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("root CAs (a system bundle?)") == 1, result.stderr
    assert "Warning:" not in result.stderr, result.stderr  # Python warnings (CryptographyDeprecationWarning, ...)


@pytest.mark.parametrize(
    ("admin", "warned"),
    [
        ("{host: 0.0.0.0}", True),
        ("{host: '::'}", True),
        ("{host: 10.0.0.5}", True),
        ("{host: admin.internal}", True),
        ("{host: 127.0.0.1}", False),
        ("{host: 127.0.0.2}", False),
        ("{host: '::1'}", False),
        ("{host: localhost}", False),
        ("{enabled: false, host: 0.0.0.0}", False),
    ],
    ids=["any-v4", "any-v6", "private", "name", "loopback", "loopback-other", "loopback-v6", "localhost", "off"],
)
def test_an_admin_listener_off_loopback_is_warned_about(admin: str, warned: bool) -> None:
    """The admin listener has no TLS: bound beyond loopback, its bearer tokens cross the network in clear."""
    runtime = build(f"admin: {admin}\n{ROUTE}")
    found = [w for w in runtime.tls.warnings if "field 'admin.host'" in w]
    assert bool(found) is warned, runtime.tls.warnings
    if warned:
        assert "no TLS" in found[0] and "in clear" in found[0]


def test_an_asgi_config_is_not_warned_about_its_admin_listener() -> None:
    """Under the middleware there is no admin listener (docs/asgi.md): nothing to warn about."""
    loaded = load_config_text(f"admin: {{host: 0.0.0.0}}\n{ROUTE}", env={}, require_upstreams=False)
    runtime = build_runtime(loaded, Services(clock=FakeClock()))
    assert not [w for w in runtime.tls.warnings if "admin.host" in w], runtime.tls.warnings


def test_config_check_prints_the_admin_warning(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("admin: {host: 0.0.0.0}\n" + ROUTE)
    result = subprocess.run(
        [sys.executable, "-m", "stockade", "config", "check", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("field 'admin.host'") == 1, result.stderr

"""TLS contexts: the listener (Mozilla "intermediate"), its reloadable front, and verified HTTPS upstreams; all
built and checked when a config is loaded, so a bad certificate path is a config error, not a failed request."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
import warnings as _warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.errors import ConfigError
from stockade.proxy import ossl

if TYPE_CHECKING:
    from cryptography import x509

    from stockade.config.models import GatewayConfig, TlsListen

log = logging.getLogger("stockade.tls")

# Mozilla Server Side TLS "intermediate" (ssl-config.mozilla.org). TLS 1.2 suites: ECDHE with AEAD only. The
# profile's three DHE-RSA suites are left out: OpenSSL negotiates DHE only with DH parameters, which we do not
# load (finite-field DHE is slow, a CPU-exhaustion lever for clients (CVE-2002-20001), and every client that
# Mozilla's intermediate profile supports speaks ECDHE); Mozilla's own guidelines v6 dropped them too.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
# OpenSSL's default TLS 1.3 suites are these three, but openssl.cnf can change the default: pin them.
INTERMEDIATE_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
INTERMEDIATE_GROUPS = "X25519:P-256:P-384"
CERT_CURVES = frozenset({"secp256r1", "secp384r1"})  # the certificate curves the profile allows
MIN_RSA_BITS = 2048
EXPIRY_WARNING = 30 * 86400  # a listener certificate this close to its end gets a warning at every load
BROAD_CLIENT_CA = 10  # a client_ca with more roots than this is a bundle of public CAs, not a chosen few


class _Problem(Exception):
    """One TLS setting that cannot be used: `field` is its path under the config section being built."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase (and a
    # daemon would hang); refuse instead.
    raise _Problem("key", "the private key is encrypted; give the gateway an unencrypted key file (mode 0600)")


def _existing(base_dir: Path, name: str, field: str) -> Path:
    path = base_dir / Path(name).expanduser()  # relative paths are relative to the config file, like stages'
    if not path.is_file():
        raise _Problem(field, f"no such file: {path}")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise _Problem(field, f"cannot read {path}: {exc.strerror or exc}") from None
    return path


def _check_leaf(cert: Path) -> x509.Certificate:
    """The certificate's key must meet the profile (RSA >= 2048 bits, ECDSA on P-256 or P-384)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    except ValueError:
        raise _Problem("cert", f"{cert} is not a PEM certificate (chain)") from None
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _Problem("cert", f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in CERT_CURVES:
            raise _Problem("cert", f"ECDSA key on {key.curve.name}; use P-256 or P-384")
    else:
        raise _Problem("cert", f"{type(key).__name__.removeprefix('_')} keys are not supported; use RSA or ECDSA")
    return leaf


def _roots(ca: Path) -> int | None:
    """How many self-signed (root) certificates `ca` holds; None if it is not PEM certificates (OpenSSL has said
    what is wrong, or read them anyway)."""
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning

    with _warnings.catch_warnings():
        # System bundles hold a root or two with a non-positive serial number, which cryptography warns about on
        # every load; OpenSSL accepts them, and the operator can do nothing about it.
        _warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            certs = x509.load_pem_x509_certificates(ca.read_bytes())
        except ValueError:
            return None
    return sum(c.subject == c.issuer for c in certs)


def listener_warnings(leaf: x509.Certificate, cert: Path, key: Path, now: float) -> list[tuple[str, str]]:
    """(field, message) for what serves but should not: a certificate expired, not yet valid or expiring within
    EXPIRY_WARNING, and a private key file others can read. Warnings only: nginx and Envoy start with them too."""
    out: list[tuple[str, str]] = []
    after = leaf.not_valid_after_utc.timestamp()
    if after <= now:
        out.append(("cert", f"{cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: clients will refuse it"))
    elif after - now <= EXPIRY_WARNING:
        days = int((after - now) // 86400)
        when = f"{leaf.not_valid_after_utc:%Y-%m-%d}"
        out.append(("cert", f"{cert} expires in {days} day{'s' if days != 1 else ''} ({when})"))
    if leaf.not_valid_before_utc.timestamp() > now:
        out.append(("cert", f"{cert} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"))
    mode = key.stat().st_mode
    if mode & 0o007:  # group-readable (0640, an ssl-cert group) is a common, deliberate setup
        out.append(("key", f"{key} is readable by every user (mode {mode & 0o777:o}); chmod 600 or 640 it"))
    return out


def listener_context(cfg: TlsListen, base_dir: Path) -> ssl.SSLContext:
    """A server context: TLS 1.2+ (or 1.3 only), intermediate ciphers, X25519/P-256/P-384 only, no compression,
    renegotiation or session tickets; client certificates requested and verified against `client_ca` when
    `client_auth` is optional or required. Raises _Problem naming the offending field."""
    return _listener(cfg, base_dir, None)[0]


def _listener(cfg: TlsListen, base_dir: Path, now: float | None) -> tuple[ssl.SSLContext, list[tuple[str, str]]]:
    """`listener_context`, and (given the time) the `listener_warnings` of the certificate it read."""
    cert = _existing(base_dir, cfg.cert, "cert")
    key = _existing(base_dir, cfg.key, "key")
    leaf = _check_leaf(cert)
    warnings = listener_warnings(leaf, cert, key, now) if now is not None else []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    # No tickets: a TLS 1.2 ticket key lives as long as the process and would undo forward secrecy (Mozilla's
    # advice). TLS 1.3 then resumes from the server-side session cache instead.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    # Every suite left is strong, so the client's order decides (the profile's choice): a phone without AES
    # instructions gets ChaCha20. Python sets server preference by default.
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or exc
        raise _Problem(
            "key", f"cannot use {key} with certificate {cert} (is it that certificate's key?): {reason}"
        ) from None
    if cfg.client_auth != "none" and cfg.client_ca:  # the model requires client_ca for optional/required
        ca = _existing(base_dir, cfg.client_ca, "client_ca")
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise _Problem("client_ca", f"no usable CA certificates in {ca}: {exc.reason or exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_auth == "required" else ssl.CERT_OPTIONAL
        if _roots(ca) == 0:
            # OpenSSL needs a chain to a self-signed root: an intermediate alone verifies no client, and the
            # config loads fine, so every client would be refused without a word.
            warnings.append(("client_ca", f"{ca} holds no self-signed (root) certificate: no client will verify"))
        if not ossl.set_client_ca_names(ctx, ca):
            log.warning("TLS: cannot announce client CA names; clients with several certificates may pick wrong")
    if not ossl.set_groups(ctx, INTERMEDIATE_GROUPS):
        # Still compliant with the profile, only narrower: X25519 and P-384 clients fall back to P-256.
        log.warning("TLS: cannot set the key-exchange group list; restricting key exchange to P-256 only")
        ctx.set_ecdh_curve("prime256v1")
    if not ossl.set_ciphersuites(ctx, INTERMEDIATE_CIPHERSUITES):
        log.warning("TLS: cannot pin TLS 1.3 cipher suites; OpenSSL's configured defaults apply")
    return ctx, warnings


def upstream_context(ca_file: Path | None) -> ssl.SSLContext:
    """Client context for HTTPS upstreams: TLS 1.2+, certificate and host name always verified, against
    `ca_file` alone when given, else the system trust store."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ListenerContext(ssl.SSLContext):
    """What the listening socket is given: it hands every new connection to the newest listener context.

    The event loop creates each connection's SSL object with `wrap_bio` on the context it was given, so
    delegating that call means a reload (SIGHUP) changes certificates, client CAs and every other setting for
    new handshakes, while the listening socket stays open and established connections keep the context they
    started with. (An SNI callback could swap only the certificate: verify mode and versions are copied from
    the original context when the connection is created.)
    """

    current: ssl.SSLContext
    # Decides, as each connection is accepted (before any handshake work), whether it may open: False closes it
    # at once (limits.max_client_connections). None: all may.
    admit: Callable[[], bool] | None
    # The SSL objects of connections accepted and not yet established (ProxyServer.tls_established removes each
    # as its handshake completes): with
    # the established connections, what counts against max_client_connections. Weak: a failed handshake's
    # object goes when its transport does.
    handshakes: weakref.WeakSet[ssl.SSLObject]

    def __new__(cls, current: ssl.SSLContext) -> ListenerContext:
        self = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        self.current = current
        self.admit = None
        self.handshakes = weakref.WeakSet()
        return self

    def __init__(self, current: ssl.SSLContext) -> None:
        pass  # state set in __new__; ssl.SSLContext has no __init__ to call

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if self.admit is not None and not self.admit():
            # The event loop closes the connection (no alert: nothing has been read) and carries on accepting.
            raise ConnectionRefusedError("limits.max_client_connections reached")
        obj = self.current.wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        self.handshakes.add(obj)
        return obj


def _unrestricted_mtls(config: GatewayConfig) -> list[str]:
    """Where an `mtls` stage without `issuers` is used: `stages` (global) or route ids."""
    out = ["stages" for e in config.stages if e.use == "mtls" and not e.config.get("issuers")]
    for route in config.routes:
        if any(e.use == "mtls" and not e.config.get("issuers") for e in route.stages):
            out.append(f"route {route.id!r}")
    return out


def broad_client_ca_warning(config: GatewayConfig, base_dir: Path) -> str | None:
    """A `client_ca` with many roots (a system bundle: any public CA's customer gets a verified certificate) and
    an `mtls` stage that accepts whichever of them issued a certificate: its `allowed` names and identities are
    then anyone's to claim. Said at load; the file still serves (some setups trust many private roots)."""
    tls = config.listen.tls
    if tls is None or not tls.client_ca or tls.client_auth == "none":
        return None
    users = _unrestricted_mtls(config)
    if not users:
        return None
    path = base_dir / Path(tls.client_ca).expanduser()
    roots = _roots(path) if path.is_file() else None
    if roots is None or roots <= BROAD_CLIENT_CA:
        return None
    return (
        f"{path} holds {roots} root CAs (a system bundle?), and `mtls` accepts a certificate from any of them on "
        f"{', '.join(users[:3])}{' and more' if len(users) > 3 else ''}: name the CAs you mean in its `issuers`"
    )


def admin_warning(config: GatewayConfig) -> str | None:
    """The admin listener speaks plain HTTP: bound beyond loopback, the bearer tokens its API takes cross the
    network in clear. Said at every load (and by `config check`); it still serves (a private network may be
    what the operator means)."""
    admin = config.admin
    if not admin.enabled or admin.host == "localhost":
        return None
    try:
        if ipaddress.ip_address(admin.host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (
        f"the admin listener has no TLS, and {admin.host} is not a loopback address: admin tokens would cross the "
        "network in clear; bind 127.0.0.1 and reach it through SSH or a TLS-terminating proxy"
    )


@dataclass(frozen=True)
class TlsContexts:
    """A config's TLS, ready to use: the listener context, and one upstream context per `ca_file` as written
    (None: the system store)."""

    listener: ssl.SSLContext | None = None
    upstreams: Mapping[str | None, ssl.SSLContext] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # logged at every (re)load (runtime.py); `config check` prints
    # What client certificates the listener accepts (client_auth and the client_ca file's bytes, hashed): a
    # reload that changes it retires connections verified under the old rules (ProxyServer.reload).
    client_trust: bytes = b""


def build_tls(
    config: GatewayConfig, base_dir: Path, at: Callable[[Sequence[str | int]], str], now: float, *, asgi: bool = False
) -> TlsContexts:
    """Load every certificate, key and CA file the config names. Raises ConfigError listing each problem, each
    at its `file:line` (`at`, LoadedConfig.at). `asgi`: for the middleware, which has no admin listener."""
    problems: list[str] = []
    warnings: list[str] = []
    listener = None
    tls = config.listen.tls
    if tls is not None:
        if tls.client_ca and tls.client_auth == "none":
            # Fail closed: whoever names a client CA means to check client certificates; say how strictly.
            where = at(("listen", "tls", "client_ca"))
            problems.append(f"{where}: field 'listen.tls.client_auth': client_ca is set; say optional or required")
        try:
            listener, found = _listener(tls, base_dir, now)
            warnings += [f"{at(('listen', 'tls', name))}: field 'listen.tls.{name}': {m}" for name, m in found]
        except _Problem as p:
            problems.append(f"{at(('listen', 'tls', p.field))}: field 'listen.tls.{p.field}': {p.message}")
        broad = broad_client_ca_warning(config, base_dir)
        if broad is not None:
            warnings.append(f"{at(('listen', 'tls', 'client_ca'))}: field 'listen.tls.client_ca': {broad}")
    admin = None if asgi else admin_warning(config)
    if admin is not None:
        warnings.append(f"{at(('admin', 'host'))}: field 'admin.host': {admin}")
    upstreams: dict[str | None, ssl.SSLContext] = {}
    for i, route in enumerate(config.routes):
        up = route.upstream
        if up is None:
            continue
        where = f"{at(('routes', i, 'upstream'))}: route {route.id!r} (routes[{i}]) > field 'upstream"
        if not up.url.startswith("https://"):
            for name in ("ca_file", "server_name"):
                if getattr(up, name) is not None:
                    problems.append(f"{where}.{name}': only used with an https:// upstream url")
            continue
        if up.ca_file in upstreams:
            continue
        try:
            ca = _existing(base_dir, up.ca_file, "ca_file") if up.ca_file is not None else None
            upstreams[up.ca_file] = upstream_context(ca)
        except _Problem as p:
            problems.append(f"{where}.{p.field}': {p.message}")
        except ssl.SSLError as exc:
            problems.append(f"{where}.ca_file': no usable CA certificates: {exc.reason or exc}")
    if problems:
        raise ConfigError(problems)
    return TlsContexts(listener, upstreams, warnings, _client_trust(tls, base_dir) if tls is not None else b"")


def _client_trust(tls: TlsListen, base_dir: Path) -> bytes:
    trust = hashlib.sha256(tls.client_auth.encode())
    if tls.client_auth != "none" and tls.client_ca:
        trust.update(b"\x00" + (base_dir / Path(tls.client_ca).expanduser()).read_bytes())
    return trust.digest()

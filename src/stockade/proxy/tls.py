"""TLS contexts: the listener (Mozilla "intermediate") and verified upstream connections."""

from __future__ import annotations

import ctypes
import logging
import ssl
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stockade.config.models import TlsListen

log = logging.getLogger("stockade.tls")

# Mozilla Server Side TLS, "intermediate" configuration (TLS 1.2 suites; TLS 1.3 suites are OpenSSL's defaults,
# which are exactly Mozilla's).
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)
INTERMEDIATE_GROUPS = b"X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's SSL_CTX_set1_groups_list is this SSL_CTX_ctrl call (a macro)


def listener_context(cfg: TlsListen) -> ssl.SSLContext:
    """A server context: TLS 1.2+, intermediate ciphers, X25519/P-256/P-384 only, no compression or
    renegotiation; client certificates verified against `client_ca` when mTLS is configured."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.load_cert_chain(cfg.cert, cfg.key)
    if cfg.client_ca:
        ctx.load_verify_locations(cfg.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.client_auth == "required" else ssl.CERT_OPTIONAL
    restrict_groups(ctx)
    return ctx


def restrict_groups(ctx: ssl.SSLContext) -> None:
    """Limit key-exchange groups to X25519, P-256 and P-384 (Mozilla intermediate).

    Python's ssl module exposes no way to set the group list before 3.13's set_groups-less API, and
    `set_ecdh_curve` takes a single curve (it would drop X25519). So call OpenSSL's SSL_CTX_ctrl on the
    context's SSL_CTX, located right after the object header in CPython's PySSLContext. The pointer is
    checked first: if the verify mode read through it does not match the Python object, we fall back to
    P-256 alone (still compliant, only fewer groups) rather than touch memory we do not understand.
    """
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        ctrl = lib.SSL_CTX_ctrl
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        ctrl.restype = ctypes.c_long
        get_verify_mode = lib.SSL_CTX_get_verify_mode
        get_verify_mode.argtypes = [ctypes.c_void_p]
        get_verify_mode.restype = ctypes.c_int
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        expected = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]
        if not ptr or get_verify_mode(ptr) != expected:
            raise RuntimeError("unexpected PySSLContext layout")
        groups = ctypes.create_string_buffer(INTERMEDIATE_GROUPS)
        if ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.cast(groups, ctypes.c_void_p)) != 1:
            raise RuntimeError("OpenSSL refused the group list")
    except (OSError, AttributeError, RuntimeError, KeyError) as exc:
        log.warning("TLS groups: %s; restricting key exchange to P-256 only", exc)
        ctx.set_ecdh_curve("prime256v1")


@lru_cache(maxsize=32)
def upstream_context(ca_file: str | None) -> ssl.SSLContext:
    """Client context for HTTPS upstreams: certificates and host names always verified."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx

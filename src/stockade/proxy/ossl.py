"""OpenSSL settings Python 3.11's ssl module cannot make (key-exchange groups, TLS 1.3 suites, client CA names),
applied through ctypes to the SSL_CTX behind an `ssl.SSLContext`.

Python reaches a context's SSL_CTX only through CPython's object layout (`PySSLContext` starts with
`PyObject_HEAD; SSL_CTX *ctx;`, unchanged from 2.7 to 3.14). Reading the wrong memory would crash the process,
so every way this can go wrong is checked before the pointer is used, and any doubt returns False: the caller
then falls back to what the ssl module can do. The guards, in order: CPython only (elsewhere `id()` is not an
address); the OpenSSL found through `_ssl` is the one the ssl module reports; and the SSL_CTX read through the
pointer agrees with the Python object on both its verify mode and its option bits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("stockade.tls")

_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list(ctx, s) is the macro SSL_CTX_ctrl(ctx, 92, 0, s)
_VERIFY_MODES = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}  # SSL_VERIFY_PEER|FAIL_IF_NO_PEER


@lru_cache(maxsize=1)
def _libssl() -> Any | None:
    """libssl as linked into `_ssl`, with prototypes declared; None if it cannot be trusted to be that."""
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # dlsym on this handle searches _ssl and then its own libssl/libcrypto
        lib.OpenSSL_version_num.argtypes = []
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            log.warning("TLS: the OpenSSL found through _ssl is not the one the ssl module uses")
            return None
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64 if ssl.OPENSSL_VERSION_INFO[0] >= 3 else ctypes.c_ulong
        lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
        lib.SSL_load_client_CA_file.argtypes = [ctypes.c_char_p]
        lib.SSL_load_client_CA_file.restype = ctypes.c_void_p
        lib.SSL_CTX_set_client_CA_list.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.SSL_CTX_set_client_CA_list.restype = None
        lib.ERR_clear_error.argtypes = []
        lib.ERR_clear_error.restype = None
    except (OSError, AttributeError, ImportError) as exc:
        log.warning("TLS: OpenSSL is not reachable through ctypes: %s", exc)
        return None
    return lib


def _ssl_ctx(ctx: ssl.SSLContext) -> tuple[Any, int] | None:
    """(libssl, SSL_CTX pointer) for `ctx`, or None unless the pointer provably belongs to it."""
    lib = _libssl()
    if lib is None:
        return None
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        return None
    if lib.SSL_CTX_get_verify_mode(ptr) != _VERIFY_MODES[ctx.verify_mode] or lib.SSL_CTX_get_options(ptr) != int(
        ctx.options
    ):
        log.warning("TLS: unexpected ssl.SSLContext layout; not touching its SSL_CTX")
        return None
    return lib, ptr


def set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """SSL_CTX_set1_groups_list: the key-exchange groups offered or accepted, e.g. "X25519:P-256:P-384"."""
    found = _ssl_ctx(ctx)
    if found is None:
        return False
    lib, ptr = found
    if lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        lib.ERR_clear_error()  # leave no stale error for the ssl module to misreport later
        return False
    return True


def set_ciphersuites(ctx: ssl.SSLContext, suites: str) -> bool:
    """SSL_CTX_set_ciphersuites: the TLS 1.3 suites (set_ciphers only governs TLS 1.2 and below)."""
    found = _ssl_ctx(ctx)
    if found is None:
        return False
    lib, ptr = found
    if lib.SSL_CTX_set_ciphersuites(ptr, suites.encode("ascii")) != 1:
        lib.ERR_clear_error()
        return False
    return True


def set_client_ca_names(ctx: ssl.SSLContext, ca_file: Path) -> bool:
    """Announce the subjects of `ca_file` in the CertificateRequest, so clients holding several certificates
    (browsers, OS key stores) offer one these CAs issued. Verification does not depend on it."""
    found = _ssl_ctx(ctx)
    if found is None:
        return False
    lib, ptr = found
    names = lib.SSL_load_client_CA_file(os.fsencode(ca_file))
    if not names:
        lib.ERR_clear_error()
        return False
    lib.SSL_CTX_set_client_CA_list(ptr, names)  # takes ownership of the list
    return True

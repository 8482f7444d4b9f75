"""What an allowed request carries on to the application: the client's identity claims out, the gateway's in.

Every front applies the same edits: client-sent `x-stockade-*` headers are dropped (only the gateway may say
who the caller is), so are the names stages removed or replaced, and the request id is the one the decision
log uses; then the runner's identity headers and the stages' `set_headers` are added.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from stockade.pipeline.runner import IDENTITY_PREFIX

if TYPE_CHECKING:
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.runner import Pipeline

IDENTITY_PREFIX_BYTES: Final = IDENTITY_PREFIX.encode("ascii")
REQUEST_ID: Final = b"x-request-id"


def is_identity_header(lower_name: bytes) -> bool:
    """Whether a (lower-case) header name is one only the gateway may set."""
    return lower_name.startswith(IDENTITY_PREFIX_BYTES)


# Overrides of what the request is: method overrides (X-HTTP-Method-Override: DELETE on a GET) and URL overrides
# (X-Original-URL: /admin on a GET /public, which older Symfony/Zend and IIS URL Rewrite route by). Routes and
# policies are chosen by the request's own method and path, so a request an application runs as another would
# pass as the one it claims. Never forwarded, on either front. The path prefixes count too: gunicorn takes
# SCRIPT_NAME and PATH_INFO from a trusted forwarder's headers (its `forwarder_headers`; the gateway on the same
# host is one) and cuts the path by them, so `GET /x/admin` with `SCRIPT_NAME: /x` would run as /admin; Flask's
# well-known ReverseProxied recipe does the same with X-Script-Name. Listed dashed: is_underscore_alias drops the
# underscore spellings (the ones gunicorn reads) of every name here.
OVERRIDE_HEADERS: Final = frozenset(
    {
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-uri",
        b"script-name",
        b"path-info",
        b"x-script-name",
    }
)

# Client-certificate headers (Envoy's X-Forwarded-Client-Cert, RFC 9440's Client-Cert, nginx's and HAProxy's
# X-SSL-Client-*, IIS's X-ARR-ClientCert, AWS's X-Amzn-Mtls-*, Traefik's X-Forwarded-Tls-Client-Cert,
# Cloudflare's Cf-Client-Cert-*, and the names nginx/HAProxy/Apache configurations commonly set by hand): what a
# TLS terminator says the client proved. Applications moved from such a setup trust them, so like the other
# forwarding metadata they are kept only from a trusted proxy (Envoy's default drops them from anyone). Each name
# is matched whole or before a `-` (Client-Cert-Chain, X-SSL-Client-Verify), never as a bare prefix: `x-client-cn`
# must not take X-Client-CNAME, nor `x-ssl` X-SSL-Protocol.
CLIENT_CERT_NAMES: Final[tuple[bytes, ...]] = (
    b"x-forwarded-client-cert",
    b"x-forwarded-tls-client-cert",
    b"client-cert",
    b"client-certificate",
    b"cf-client-cert",
    b"x-client-cert",
    b"x-client-certificate",
    b"x-client-verify",
    b"x-client-dn",
    b"x-client-s-dn",
    b"x-client-cn",
    b"x-client-subject",
    b"x-ssl",
    b"x-ssl-client",
    b"x-ssl-cert",
    b"x-ssl-certificate",
    b"x-ssl-clientcert",
    b"x-ssl-issuer",
    b"x-ssl-subject",
    b"x-ssl-verified",
    b"x-ssl-cn",
    b"x-tls-client-cert",
    b"x-tls-client-certificate",
    b"x-mtls",
    b"ssl-client",
    b"x-arr-clientcert",
    b"x-amzn-mtls",
)
# x-ssl's own family (X-SSL-Protocol, X-SSL-Cipher) says nothing about the client: its listed members are.
CLIENT_CERT_PREFIXES: Final = tuple(name + b"-" for name in CLIENT_CERT_NAMES if name != b"x-ssl")

# Forwarding metadata: what a proxy says about the client's address, the scheme, host, port or prefix it was
# reached by. Kept only from a trusted proxy (the proxy front rebuilds X-Forwarded-For/-Proto/-Host): applications
# take these for the word of the proxy in front of them (gunicorn reads X-Forwarded-Ssl and -Protocol from
# 127.0.0.1, i.e. from the gateway; Rack prefers X-Forwarded-Ssl: on to X-Forwarded-Proto), so from a client they
# would choose the scheme or the address an application sees. Every `x-forwarded-*` name is (FORWARDING_PREFIXES),
# and these, the names frameworks, CDNs and load balancers use for the same things, and the certificate names:
FORWARDING_HEADERS: Final = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded",
        b"forwarded",
        b"forwarded-for",
        b"x-real-ip",
        b"x-client-ip",
        b"client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-original-forwarded-for",
        b"front-end-https",
        b"x-url-scheme",
        *CLIENT_CERT_NAMES,
    }
)

# Name prefixes of forwarding metadata: any X-Forwarded-* (-Ssl, -Scheme, -Protocol, -Server, -Uri and whatever a
# framework reads next) and the client-certificate families. One `startswith` per header name the tables do not know.
FORWARDING_PREFIXES: Final[tuple[bytes, ...]] = (b"x-forwarded-", *CLIENT_CERT_PREFIXES)


def is_forwarding_header(lower_name: bytes) -> bool:
    """Whether a (lower-case) header name is forwarding metadata: kept only from a trusted proxy."""
    return lower_name in FORWARDING_HEADERS or lower_name.startswith(FORWARDING_PREFIXES)


# Request headers the gateway itself sets or rebuilds (besides the identity headers).
_OWNED: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", REQUEST_ID, *FORWARDING_HEADERS, *OVERRIDE_HEADERS}
)


def is_underscore_alias(lower_name: bytes) -> bool:
    """Whether a (lower-case) name is an underscore spelling of a header the gateway owns: CGI and WSGI servers
    read `X_Stockade_Principal` and `X-Stockade-Principal` alike (both HTTP_X_STOCKADE_PRINCIPAL), so such a
    spelling is never forwarded (nginx drops every underscore name by default)."""
    if b"_" not in lower_name:
        return False
    dashed = lower_name.replace(b"_", b"-")
    return dashed in _OWNED or dashed.startswith(IDENTITY_PREFIX_BYTES) or dashed.startswith(FORWARDING_PREFIXES)


_FORWARDED_HOST: Final = re.compile(rb'(?i)(?:^|[;,\s])host=("(?:[^"\\]|\\.)*"|[^;,\s]*)')


def names_other_host(lower_name: bytes, value: bytes, host: str) -> bool:
    """Whether a trusted proxy's `X-Forwarded-Host` or `Forwarded: host=` names a host other than the one the
    request was routed by. A proxy that passes a client's value through (an AWS ALB does) would otherwise let
    the client pick the virtual host an application serves (Django's USE_X_FORWARDED_HOST, Werkzeug's
    ProxyFix, Express's `trust proxy`) while the gateway applied another host's routes: such a value is not
    forwarded. Callers ask only when some route is host-specific (Router.by_host): otherwise the Host picked
    no route, and a front proxy that rewrites Host (nginx's default) keeps its X-Forwarded-Host."""
    from stockade.pipeline.intake import parse_host

    if lower_name == b"x-forwarded-host":
        return parse_host(value.strip()) != host
    if lower_name == b"forwarded":
        return any(parse_host(m.group(1).strip(b'"')) != host for m in _FORWARDED_HOST.finditer(value))
    return False


def replaced_headers(ctx: RequestContext) -> set[str] | None:
    """Names (lower-case) of client headers a stage removed or replaced; None when there are none."""
    removed = ctx.remove_headers
    added = ctx.set_headers
    if not removed and not added:
        return None
    out = set(removed or ())
    if added:
        out.update(added)
    return out


def added_headers(pipeline: Pipeline, ctx: RequestContext) -> list[tuple[str, str]]:
    """Headers the gateway adds, in order: the runner's identity headers, then the stages' `set_headers`.

    Values are already header-safe (the runner encodes them when it accepts a verdict).
    """
    out = pipeline.identity_headers(ctx)
    if ctx.set_headers:
        out.extend(ctx.set_headers.items())
    return out


def forwarded_headers(
    raw: list[tuple[bytes, bytes]], pipeline: Pipeline, ctx: RequestContext, *, trusted: bool, by_host: bool = True
) -> list[tuple[bytes, bytes]]:
    """The request headers an in-process application receives (ASGI form: lower-case byte names).

    Framing and hop-by-hop headers are left alone: the server that parsed the request still owns the connection
    (except Proxy-Authorization: credentials for a proxy, never for the app). Forwarding metadata is kept only
    when the peer is a trusted proxy (`trusted`).
    """
    drop = replaced_headers(ctx)
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lname = name.lower()
        if is_identity_header(lname) or lname == REQUEST_ID or lname in OVERRIDE_HEADERS or is_underscore_alias(lname):
            continue
        if is_forwarding_header(lname) and (not trusted or (by_host and names_other_host(lname, value, ctx.host))):
            continue
        if lname == b"proxy-authorization":
            continue
        if drop is not None and lname.decode("latin-1") in drop:
            continue
        out.append((lname, value))
    out.append((REQUEST_ID, ctx.request_id.encode("ascii")))
    for name_s, value_s in added_headers(pipeline, ctx):
        out.append((name_s.encode("latin-1"), value_s.encode("latin-1")))
    return out

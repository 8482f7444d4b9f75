"""The configuration models. Closed (`extra="forbid"`), validated once at load, never coerced when unsafe."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from stockade.config.oauth2 import OAuth2Server, expand_oauth2_routes
from stockade.scalars import no_bool_for_number
from stockade.security.netaddr import check_networks

KIB = 1024
MIB = 1024 * KIB


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        return no_bool_for_number(cls, v, info)


Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=86400)]
_BIND_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE)


def _bind_host(v: str) -> str:
    """An address to listen on: an IP literal or a host name (not resolved here). Checked at load, as `serve` would
    otherwise pass `config check` and die at bind with socket.gaierror."""
    if not v:  # asyncio reads '' as every interface; here it is more likely a template variable left empty
        raise ValueError("host '' (empty): for every interface write '0.0.0.0' (IPv4) or '::' (IPv6 and IPv4)")
    try:
        ipaddress.ip_address(v)
    except ValueError:
        labels = v.removesuffix(".").split(".")
        if len(v) > 253 or not all(_BIND_LABEL.fullmatch(label) for label in labels):
            raise ValueError(
                f"host {v!r}: not an IP address (no brackets) or a host name (letters, digits, '-', '_')"
            ) from None
    return v


def _family(host: str) -> int | None:
    """4 or 6 for an IP literal; None for a name, which may resolve to either."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _canonical(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _overlap(a: str, b: str) -> bool:
    """Whether listeners on hosts `a` and `b` would want the same socket on one port. Both listeners bind IPv6
    sockets IPv6-only, so `::` is every IPv6 address and `0.0.0.0` every IPv4 one (a name may be either);
    `localhost` is both loopbacks. Addresses compare as addresses (`0::1` is `::1`)."""
    a, b = _canonical(a), _canonical(b)
    if a == b:
        return True
    for x, y in ((a, b), (b, a)):
        if (x == "::" and _family(y) != 4) or (x == "0.0.0.0" and _family(y) != 6):  # noqa: S104 - compared
            return True
        if x == "localhost" and y in ("127.0.0.1", "::1"):
            return True
    return False


class TlsListen(Strict):
    """TLS on the client listener. Mozilla "intermediate": TLS 1.2+, AEAD ciphers, X25519/P-256/P-384."""

    cert: str
    key: str
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_ca: str | None = None  # verify client certificates against this CA bundle (mTLS)
    client_auth: Literal["none", "optional", "required"] = "none"

    @model_validator(mode="after")
    def _client_auth_needs_ca(self) -> TlsListen:
        if self.client_auth != "none" and not self.client_ca:
            raise ValueError("client_auth requires client_ca")
        return self


class Listen(Strict):
    host: Annotated[str, AfterValidator(_bind_host)] = "127.0.0.1"
    port: Port = 8080
    backlog: Annotated[int, Field(ge=1, le=65535)] = 1024
    tls: TlsListen | None = None


class Admin(Strict):
    """The control-plane listener: loopback by default."""

    enabled: bool = True
    host: Annotated[str, AfterValidator(_bind_host)] = "127.0.0.1"
    port: Port = 8081
    # Host names the listener answers besides IP literals and localhost (DNS rebinding: a web page whose name
    # resolves to 127.0.0.1 must not reach /metrics or the API with the browser's help).
    allowed_hosts: list[str] = Field(default_factory=list)


class Limits(Strict):
    """Client-side protocol limits and timeouts (nginx-like defaults)."""

    max_header_bytes: Annotated[int, Field(ge=1 * KIB, le=1 * MIB)] = 16 * KIB
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100
    max_body_bytes: Annotated[int, Field(ge=0)] = 10 * MIB
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 30.0  # longest pause between two reads of a request body (while the gateway reads)
    keepalive_timeout: Seconds = 75.0
    keepalive_requests: Annotated[int, Field(ge=1)] = 1000
    max_pipelined: Annotated[int, Field(ge=1, le=1024)] = 16
    send_timeout: Seconds = 60.0  # longest a response may wait for a client that does not read
    # An upgraded connection (WebSocket) with no bytes either way for this long is closed on both sides (nginx's
    # proxy_read_timeout/proxy_send_timeout, 60 s there). 300 s, Envoy's stream_idle_timeout: applications that
    # ping every 20-60 s keep their tunnels (a 60 s heartbeat races nginx's default).
    tunnel_idle_timeout: Seconds = 300.0
    drain_timeout: Seconds = 30.0  # on SIGTERM, how long in-flight requests get to finish
    pipeline_timeout: Seconds = 10.0  # a stage awaiting I/O longer than this denies with 503
    # ';' in a request path (RFC 3986 path parameters). Off, such a path is 400 http.bad_path, as Spring's
    # StrictHttpFirewall: Tomcat, Spring and JAX-RS drop `;params` before matching, so `/admin;x/secret`, which
    # the gateway routes as its own path, reaches them as `/admin/secret`. Turn on only if no upstream does that.
    path_parameters: bool = False
    # Match path templates ignoring case (for upstreams that route so: Express by default, ASP.NET, IIS). Off, a
    # path that would match another route ignoring case is 404, so `/ADMIN/x` cannot pass as a `/**` request.
    case_insensitive_routing: bool = False
    # A request body is received this far before forwarding (see Upstream.request_buffering); reads pause beyond it.
    buffer_bytes: Annotated[int, Field(ge=4 * KIB, le=64 * MIB)] = 64 * KIB
    # With request buffering, a body beyond buffer_bytes is received into an unlinked temporary file (nginx's client
    # body temp files) up to this size before forwarding; a larger one streams. 0 (or less than buffer_bytes): never.
    spool_bytes: Annotated[int, Field(ge=0, le=1024 * MIB)] = 1 * MIB
    # What one worker's spools may hold at once (each reserves its greatest size); a body beyond it streams.
    spool_total_bytes: Annotated[int, Field(ge=0)] = 256 * MIB
    # What one worker (or process running the ASGI middleware) may hold of response bodies buffered for hooks that
    # read them (the `openapi` response checks) at once; a response that would take it further is 503
    # gateway.busy instead of growing the worker without bound.
    response_buffer_total_bytes: Annotated[int, Field(ge=64 * KIB)] = 256 * MIB
    # Client connections one process holds at once, TLS handshakes in progress included (nginx's
    # worker_connections); one accepted beyond it is closed at once. A pending handshake costs ~60 kB.
    max_client_connections: Annotated[int, Field(ge=1)] = 10000
    # How long a client gets to complete the TLS handshake; unset: header_timeout (as before it existed).
    tls_handshake_timeout: Seconds | None = None


class Upstream(Strict):
    """Where a route forwards to, and how."""

    url: str
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 60.0  # for the response head, and for taking a streamed request body again
    ca_file: str | None = None  # verify an HTTPS upstream against this CA bundle instead of the system store
    server_name: str | None = None  # SNI and certificate name, if not the URL host
    preserve_host: bool = False  # send the client's Host instead of the upstream's
    # Receive a request body whole (up to limits.buffer_bytes) before connecting, as nginx's proxy_request_buffering:
    # a client that drips its body then ties up a gateway connection, not an upstream worker. Off: stream at once.
    request_buffering: bool = True
    max_idle: Annotated[int, Field(ge=0, le=10000)] = 64
    idle_timeout: Seconds = 60.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # Checked as written: urlsplit drops CR, LF and tab, and the URL goes on the wire as written (a request line
        # with `\r\nX-Injected: 1` in it; a non-ASCII path made every request a 500).
        if not v.isascii() or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError(
                "upstream url must be ASCII without spaces or control characters (percent-encode them: %C3%A1)"
            )
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError("upstream url must be http:// or https://")
        if not parts.hostname:
            raise ValueError("upstream url has no host")
        if parts.query or parts.fragment or "@" in parts.netloc:  # `http://@host` too: an empty user info
            raise ValueError("upstream url must not carry a query, fragment or credentials")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"upstream url: {exc}") from None
        return v


class StageEntry(Strict):
    """A stage on a route. `config` is validated against the stage's own model in a second pass."""

    use: str
    config: dict[str, Any] = Field(default_factory=dict)
    fail_open: bool = False


def _listify(v: object) -> object:
    return [v] if isinstance(v, str) else v


def _upstream_from_url(v: object) -> object:
    return {"url": v} if isinstance(v, str) else v


class HandlerEntry(Strict):
    """A built-in handler answering the route instead of an upstream (`use:` names it)."""

    use: str
    config: dict[str, Any] = Field(default_factory=dict)


# The methods llhttp parses in HTTP mode (it refuses every other token), less CONNECT.
HTTP_METHODS = frozenset(
    "GET HEAD POST PUT PATCH DELETE OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND "
    "REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR "
    "LINK UNLINK SOURCE QUERY".split()
)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")


def _host_pattern(text: str) -> str:
    """A `match.host` entry in the form requests are compared in (lower-case, no trailing dot, IDN as punycode,
    IPv6 without brackets), or ValueError: a pattern no Host header can equal would fail open, every request
    going to the any-host routes."""
    host = text.strip().lower().rstrip(".")
    if "://" in host or "/" in host:
        raise ValueError(f"host {text!r}: a host name, not a URL")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"host {text!r}: a host name without a port (routes match every port)") from None
    if not host.isascii():
        # IDNA 2008 with UTS 46, as browsers send it: Python's own codec is IDNA 2003, which maps `straße` to
        # `strasse` where browsers send `xn--strae-oqa`, and the route would match no request (fail open).
        import idna

        labels = []
        for label in host.split("."):
            if label.isascii():  # as written (`*`, `a_b`: not IDNA's business)
                labels.append(label)
                continue
            try:
                labels.append(idna.encode(label, uts46=True, transitional=False).decode("ascii"))
            except idna.IDNAError:
                try:  # what strict IDNA 2008 refuses and browsers still send (`☃`): the IDNA 2003 form
                    labels.append(label.encode("idna").decode("ascii"))
                except UnicodeError:
                    raise ValueError(f"host {text!r}: not a valid international domain name") from None
        host = ".".join(labels)
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"host {text!r}: not a host name (letters, digits, '-', '_'; '*.' only as a prefix)")
    return host


class Match(Strict):
    path: str
    methods: list[str] | None = None
    host: Annotated[list[str] | None, BeforeValidator(_listify, json_schema_input_type=str | list[str] | None)] = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        # Any method the parser accepts may be named (WebDAV's PROPFIND, PURGE, QUERY...): a route must be able to
        # claim every method its upstream serves. CONNECT is refused before routing (405).
        out = [m.upper() for m in v]
        bad = [m for m in out if m not in HTTP_METHODS]
        if bad:
            raise ValueError(f"unsupported method(s) {bad}; allowed: {' '.join(sorted(HTTP_METHODS))}")
        if not out:
            raise ValueError("methods must not be empty (omit it to allow every method)")
        return out

    @field_validator("host")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        if v == []:  # it matched every host, as an omitted one does: say which is meant
            raise ValueError("host must not be empty (omit it to match every host)")
        return None if v is None else [_host_pattern(h) for h in v]

    def hosts(self) -> tuple[str, ...] | None:
        return tuple(self.host) if self.host else None


class Route(Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    match: Match
    upstream: Annotated[
        Upstream | None, BeforeValidator(_upstream_from_url, json_schema_input_type=str | Upstream | None)
    ] = None  # a URL or a mapping
    handler: HandlerEntry | None = None  # answered by the gateway itself (instead of `upstream`)
    stages: list[StageEntry] = Field(default_factory=list)
    websocket: bool = False  # allow WebSocket upgrades once the pipeline has allowed the request
    own_auth: bool = False  # the handler authenticates callers itself: global authn/authz stages do not apply

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if self.upstream is not None and self.handler is not None:
            raise ValueError("a route has either an upstream or a handler, not both")
        if self.own_auth and self.handler is None:
            # It drops the global authenticators and authorizers; only a handler that authenticates its callers
            # itself (the token endpoint) may do without them.
            raise ValueError("own_auth is for routes with a handler that authenticates its callers")
        return self


class Log(Strict):
    decisions: str = "stdout"  # stdout | stderr | off | a file path
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("decisions", mode="before", json_schema_input_type=str | Literal[False])
    @classmethod
    def _off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `off` as false


class Secrets(Strict):
    """Where the API-key pepper and the key-encryption keys come from (env STOCKADE_PEPPER / STOCKADE_KEK win).

    Unset files default to `.stockade/pepper` and `.stockade/kek` next to the config, generated (mode 0600)
    on first use when `generate` is true.
    """

    pepper_file: str | None = None
    kek_file: str | None = None
    generate: bool = True


class GatewayConfig(Strict):
    """The whole gateway: listeners, stores, limits, global stages and routes."""

    listen: Listen = Field(default_factory=Listen)
    admin: Admin = Field(default_factory=Admin)
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    storage: str = "sqlite:///.stockade/stockade.db"
    limits_storage: str = "memory://"
    secrets: Secrets = Field(default_factory=Secrets)
    trusted_proxies: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    log: Log = Field(default_factory=Log)
    stages: list[StageEntry] = Field(default_factory=list)  # run on every route, before the route's own
    routes: list[Route] = Field(default_factory=list)
    oauth2_server: OAuth2Server | None = None  # the gateway's own token endpoint (expanded into four routes)

    @model_validator(mode="before")
    @classmethod
    def _expand_oauth2_server(cls, data: Any) -> Any:
        return expand_oauth2_routes(data)

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str, info: ValidationInfo) -> str:
        from stockade.storage import check_url  # the storage registry; no backend driver is imported

        problem = check_url(v)
        if problem is not None:
            raise ValueError(problem)
        if v.startswith("memory:") and info.data.get("workers", 1) > 1:
            # Consumers, keys, clients, revocations and the admin change log would differ per worker.
            raise ValueError("memory:// is per process: with several workers use sqlite:// or postgresql://")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        check_networks(v)
        return v

    @model_validator(mode="after")
    def _admin_port_is_not_listen_port(self, info: ValidationInfo) -> GatewayConfig:
        a, listen = self.admin, self.listen
        if (info.context or {}).get("asgi"):
            return self  # the ASGI middleware opens neither listener: its server listens (docs/asgi.md)
        if a.enabled and a.port == listen.port != 0 and _overlap(a.host, listen.host):
            # One of the two would fail to bind at start, after `config check` said OK (or, with SO_REUSEPORT
            # between workers, the two would share connections).
            raise ValueError(
                f"admin.port and listen.port are both {a.port} on overlapping hosts "
                f"({a.host!r}, {listen.host!r}): give the admin listener another port"
            )
        if listen.port == 0 and self.workers > 1:
            # Each worker binds the port itself (SO_REUSEPORT): with 0 each would get its own from the kernel, and
            # the gateway would be several unrelated listeners with no one port to name.
            raise ValueError(
                f"listen.port is 0 (a port the kernel picks), which {self.workers} workers cannot share: "
                "name a port, or run one worker"
            )
        return self

"""RequestContext: everything the stages may read about one request, and what the runner records of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qs

from stockade.pipeline.headers import Headers

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.pipeline.principal import Principal
    from stockade.pipeline.verdict import Finding


# Authenticators that parse a credential record a keyed hash of the identifier presented (key id, JWT `sub`,
# client id - never the secret) under this `ctx.state` key, so failures can be counted per identity.
AUTH_IDENTITY: Final = "auth.identity"


class BodyTooLargeError(Exception):
    """The request body exceeded the route's limit while it was being read."""


class BodySource(Protocol):
    """What a front gives the context to read the request body with (its exchange)."""

    async def read_request_body(self) -> bytes: ...


class RequestContext:
    """One request as the pipeline sees it. Stages read it; only the runner writes the decision fields."""

    __slots__ = (
        "_body",
        "_body_source",
        "_findings",
        "_headers",
        "_path_params",
        "_query_params",
        "_raw_headers",
        "_rid_bytes",
        "_rid_of",
        "_state",
        "client_ip",
        "clock",
        "decision",
        "detail",
        "host",
        "http_version",
        "method",
        "path",
        "peer_cert",
        "peer_cert_der",
        "peer_ip",
        "principal",
        "query",
        "raw_path",
        "reason",
        "remove_headers",
        "request_id",
        "route_id",
        "scheme",
        "set_headers",
        "stage",
        "started",
        "status",
    )

    def __init__(
        self,
        request_id: str,
        method: str,
        path: str,
        raw_path: str,
        query: str,
        headers: Headers | list[tuple[bytes, bytes]],
        client_ip: str,
        peer_ip: str,
        host: str,
        scheme: str,
        clock: Clock,
        http_version: str = "1.1",
        started: float = 0.0,
        peer_cert: dict[str, Any] | None = None,
        peer_cert_der: bytes | None = None,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path  # percent-decoded and normalised: what routing and stages see
        self.raw_path = raw_path  # canonical encoded form: what goes upstream
        self.query = query  # raw query string, without '?'
        # The fronts pass the raw pairs: the Headers view is made when a stage first reads it (a route whose
        # stages read no header never makes one). The same for the containers below: made on first use.
        if isinstance(headers, Headers):
            self._headers: Headers | None = headers
            self._raw_headers = headers.raw
        else:
            self._headers = None
            self._raw_headers = headers
        self.client_ip = client_ip
        self.peer_ip = peer_ip
        self.host = host
        self.scheme = scheme
        self.clock = clock
        self.http_version = http_version
        self.started = started
        self.peer_cert = peer_cert  # the verified client certificate (mTLS), as ssl.getpeercert() returns it
        self.peer_cert_der = peer_cert_der  # the same certificate, DER-encoded (for thumbprints, RFC 8705)
        self.route_id = ""
        self._path_params: dict[str, str] | None = None
        self.principal: Principal | None = None
        self._findings: list[Finding] | None = None
        self._state: dict[str, Any] | None = None
        self.set_headers: dict[str, str] | None = None
        self.remove_headers: frozenset[str] | None = None  # lower-case names (the runner merges the stages')
        self.decision = "allow"
        self.reason = ""
        self.stage = ""
        self.detail = ""
        self.status = 0
        self._query_params: dict[str, list[str]] | None = None
        self._rid_bytes = b""  # request_id encoded, and the id it was encoded from (request_id_bytes)
        self._rid_of = ""
        self._body: bytes | None = None
        self._body_source: BodySource | None = None

    @property
    def headers(self) -> Headers:
        """The request's headers as received (case-insensitive lookup)."""
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._raw_headers)
        return h

    @property
    def path_params(self) -> dict[str, str]:
        """The route template's parameters (`/books/{id}`), by name."""
        p = self._path_params
        if p is None:
            p = self._path_params = {}
        return p

    @path_params.setter
    def path_params(self, value: dict[str, str]) -> None:
        self._path_params = value

    @property
    def findings(self) -> list[Finding]:
        """What detection stages found (logged by rule; a monitor-mode stage adds here instead of denying)."""
        f = self._findings
        if f is None:
            f = self._findings = []
        return f

    @findings.setter
    def findings(self, value: list[Finding]) -> None:
        self._findings = value

    @property
    def state(self) -> dict[str, Any]:
        """Per-request notes stages leave for later stages and hooks (`AUTH_IDENTITY`, "failed_open", ...)."""
        s = self._state
        if s is None:
            s = self._state = {}
        return s

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    def request_id_bytes(self) -> bytes:
        """`request_id` encoded (UTF-8; intake's ids are ASCII), once for the upstream head and the log line."""
        rid = self.request_id
        if rid != self._rid_of or not self._rid_bytes:
            self._rid_bytes = rid.encode()
            self._rid_of = rid
        return self._rid_bytes

    @property
    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The raw `(name, value)` pairs as received, without making the `headers` view."""
        return self._raw_headers

    def existing_findings(self) -> list[Finding] | None:
        """The findings list if one was made (reading `findings` makes it): for the log line's quick test."""
        return self._findings

    def existing_state(self) -> dict[str, Any] | None:
        """The state dict if one was made (reading `state` makes it): for the log line's quick test."""
        return self._state

    @property
    def query_params(self) -> dict[str, list[str]]:
        """Query parameters, parsed on first use (blank values kept)."""
        q = self._query_params
        if q is None:
            q = parse_qs(self.query, keep_blank_values=True) if self.query else {}
            self._query_params = q
        return q

    def replace_query(self, query: str) -> None:
        """Set the raw query string forwarded upstream (the runner applies `Continue(set_query=...)`)."""
        self.query = query
        self._query_params = None

    @property
    def body(self) -> bytes | None:
        """The buffered request body if it has been read, else None."""
        return self._body

    def attach_body_source(self, source: BodySource | None) -> None:
        """Set by the front (its exchange, not a bound method of it: one attribute store, no object made per
        request); cleared when the exchange ends, which breaks the context <-> front reference cycle (otherwise
        every request would wait for the cyclic garbage collector)."""
        self._body_source = source

    async def read_body(self) -> bytes:
        """Wait for the whole request body (bounded by the route's limit); raises BodyTooLargeError."""
        if self._body is None:
            source = self._body_source
            self._body = await source.read_request_body() if source is not None else b""
        return self._body

    def __repr__(self) -> str:
        return f"RequestContext({self.method} {self.path} route={self.route_id!r} id={self.request_id})"

"""What `make demo` suggests trying: the banner's examples as data (`SECTIONS`), and the banner built from them.

tests/examples/test_demo.py replays every example against the running demo and checks the promised status,
reason and headers, so the banner cannot drift from what the demo does. run.py imports this module (as a
script, its own directory is on sys.path).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
KEY = "$KEY"  # stands for the API key run.py makes at start-up: the banner prints `KEY=stk_live_...` first
# The OAuth2 client run.py registers at start-up (printed as CLIENT_ID=/CLIENT_SECRET= lines), and a token the
# banner's TOKEN= line fetches for it: shell variables in the commands, replaced by real values in the tests.
CLIENT_ID = "$CLIENT_ID"
CLIENT_SECRET = "$CLIENT_SECRET"
TOKEN = "$TOKEN"
PLACEHOLDERS = (KEY, CLIENT_ID, CLIENT_SECRET, TOKEN)
# The key's consumer is a user of the API's seed data: the API maps X-Stockade-Principal to a user by name, so
# orders placed with the key are alice's.
CONSUMER = "alice"
SCOPES = "orders:write"
# A machine client, a catalogue importer that restocks books; run.py revokes the clients of this name that earlier
# starts made, so the one in the banner is the one valid demo client.
CLIENT_NAME = "make-demo-importer"
CLIENT_SCOPES = "books:write"
BANNER_END = "Ctrl-C stops both."


@dataclass(frozen=True)
class Ports:
    gateway: int = 8080
    admin: int = 8081
    upstream: int = 9000


@dataclass(frozen=True)
class Example:
    """One request the banner suggests, and what it must answer."""

    says: str
    method: str
    path: str
    status: int
    target: Literal["gateway", "admin", "upstream"] = "gateway"
    reason: str | None = None  # the problem `reason` a gateway denial carries
    headers: tuple[tuple[str, str], ...] = ()  # values may hold PLACEHOLDERS, replaced by the real values
    body: str | None = None  # may hold PLACEHOLDERS too
    body_file: str | None = None  # relative to examples/demo/
    contains: str | None = None  # a piece of the response body
    omits: str | None = None  # a piece the response body must not have
    has_headers: tuple[str, ...] = ()
    lacks_headers: tuple[str, ...] = ()
    curl_flags: str = "-si"
    pipe: str = ""  # shell filter appended to the curl command
    repeat: int = 1  # sent this many times in a row (a shell loop): all but the last answer 200

    def url(self, ports: Ports) -> str:
        return f"http://{HOST}:{getattr(ports, self.target)}{self.path}"

    def uses(self, placeholder: str) -> bool:
        return any(placeholder in value for _, value in self.headers) or placeholder in (self.body or "")

    def curl(self, ports: Ports, cwd: Path | None = None) -> str:
        parts = ["curl", *self.curl_flags.split()]
        if self.method not in ("GET", "HEAD"):
            parts += ["-X", self.method]
        parts.append(self.url(ports))
        words = [shlex.quote(p) for p in parts]
        for name, value in self.headers:
            words += ["-H", _shell_word(f"{name}: {value}")]
        if self.body is not None:
            words += ["-d", _shell_word(self.body)]
        if self.body_file is not None:
            words += ["--data-binary", shlex.quote("@" + display_path(HERE / self.body_file, cwd or Path.cwd()))]
        command = " ".join(words) + (f" | {self.pipe}" if self.pipe else "")
        if self.repeat > 1:
            command = f"for i in {' '.join(str(i) for i in range(1, self.repeat + 1))}; do {command}; done"
        return command

    def request_headers(self, values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The headers as sent, with the real values (by placeholder) in place of the placeholders."""
        return tuple((name, fill(value, values)) for name, value in self.headers)

    def body_bytes(self, values: Mapping[str, str]) -> bytes | None:
        if self.body_file is not None:
            return (HERE / self.body_file).read_bytes()
        return None if self.body is None else fill(self.body, values).encode()


def fill(text: str, values: Mapping[str, str]) -> str:
    for placeholder in PLACEHOLDERS:
        if placeholder in text:
            text = text.replace(placeholder, values[placeholder])
    return text


def _shell_word(text: str) -> str:
    """Single-quoted, or double-quoted when it holds a placeholder so the shell expands it. Inside double quotes
    bash still reads `$`, backquotes, backslashes and `!`, so only the placeholders may be special, and each must
    end where its name ends."""
    if not any(p in text for p in PLACEHOLDERS):
        return shlex.quote(text)
    rest = text
    for placeholder in PLACEHOLDERS:
        if re.search(re.escape(placeholder) + r"\w", rest):
            raise ValueError(f"{placeholder} runs into the text after it in {text!r}")
        rest = rest.replace(placeholder, "")
    if any(c in rest for c in '"\\`$!'):
        raise ValueError(f"cannot double-quote {text!r} for the shell")  # a mistake in the examples' data
    return f'"{text}"'


@dataclass(frozen=True)
class Section:
    """A short heading and the examples under it."""

    title: str
    examples: tuple[Example, ...]


JSON = ("content-type", "application/json")
FORM = ("content-type", "application/x-www-form-urlencoded")
API_KEY = ("X-API-Key", KEY)
BEARER = ("Authorization", f"Bearer {TOKEN}")
CLIENT_CREDENTIALS = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
ORDER = '{"items": [{"book_id": 1, "quantity": 1}]}'
SIGNUP = '{"username": "Eve!", "name": "Eve", "email": "eve@", "password": "short", "role": "staff"}'

SECTIONS: tuple[Section, ...] = (
    Section(
        "Reads are open; what comes back is hardened",
        (
            Example("A read, open to everyone (anonymous)", "GET", "/books?limit=2", 200, contains='"limit":2'),
            Example(
                "Security headers added, Server header stripped",
                "HEAD",
                "/books/1",
                200,
                curl_flags="-sI",
                has_headers=("x-content-type-options", "cache-control", "x-frame-options"),
                lacks_headers=("server",),
            ),
            Example(
                "...compare the API answering directly",
                "HEAD",
                "/books/1",
                200,
                "upstream",
                curl_flags="-sI",
                has_headers=("server",),
            ),
            Example(
                "A user's profile: only the fields the contract declares",
                "GET",
                "/users/1",
                200,
                contains='"username":"alice"',
                omits="password_hash",
                curl_flags="-s",
            ),
            Example(
                "...compare the API answering directly: it leaks email, password_hash, internal_notes",
                "GET",
                "/users/1",
                200,
                "upstream",
                contains='"password_hash"',
                curl_flags="-s",
            ),
            Example(
                "Answered by the gateway itself", "GET", "/gateway/health", 200, contains='"answered_by":"stockade"'
            ),
        ),
    ),
    Section(
        "The API's OpenAPI contract, enforced before the API is asked",
        (
            Example("No route for this path", "GET", "/v2/books", 404, reason="route.not_found"),
            Example(
                "A routed path (/books/**) that the spec does not list",
                "GET",
                "/books/1/reviews",
                404,
                reason="openapi.unknown_operation",
            ),
            Example(
                "Known path, method not allowed (see Allow)",
                "DELETE",
                "/users/1",
                405,
                reason="route.method_not_allowed",
                has_headers=("allow",),
            ),
            Example(
                "A sign-up breaking the contract: one JSON pointer per problem, and `role` is not yours to set",
                "POST",
                "/users",
                422,
                reason="openapi.invalid_request",
                headers=(JSON,),
                body=SIGNUP,
                contains='{"pointer":"/body/role","rule":"additionalProperties"}',
            ),
            Example(
                "A write over the 4 KiB cap, refused from its Content-Length alone",
                "POST",
                "/books",
                413,
                reason="request.body_too_large",
                headers=(JSON,),
                body_file="requests/too-large-book.json",
            ),
        ),
    ),
    Section(
        "Who is calling: API keys (run the KEY= line first)",
        (
            Example(
                "Identity comes from the gateway: a spoofed X-Stockade-Principal is stripped",
                "GET",
                "/me",
                200,
                headers=(("X-Stockade-Principal", "alice"),),
                contains='"principal":"anonymous"',
                curl_flags="-s",
            ),
            Example(
                "With alice's key the API knows who calls (the key itself never reaches it)",
                "GET",
                "/me",
                200,
                headers=(API_KEY,),
                contains='"principal":"alice"',
                curl_flags="-s",
            ),
            Example(
                "Placing an order needs a key (see WWW-Authenticate)",
                "POST",
                "/orders",
                401,
                reason="auth.required",
                headers=(JSON,),
                body=ORDER,
                has_headers=("www-authenticate",),
            ),
            Example(
                "...with alice's key: the order is hers",
                "POST",
                "/orders",
                201,
                headers=(JSON, API_KEY),
                body=ORDER,
                contains='"owner":"alice"',
            ),
            Example(
                "A made-up key (repeated failures from one IP are slowed down, then locked out)",
                "GET",
                "/me",
                401,
                reason="auth.invalid_credentials",
                headers=(("X-API-Key", "stk_live_made-up"),),
                has_headers=("www-authenticate",),
            ),
            Example(
                "Catalogue changes need the books:write scope, which alice's key lacks",
                "POST",
                "/books",
                403,
                reason="auth.insufficient_scope",
                headers=(JSON, API_KEY),
                body_file="requests/new-book.json",
            ),
        ),
    ),
    Section(
        "Machine clients: OAuth2 client credentials (run the CLIENT_ID=, CLIENT_SECRET= and TOKEN= lines first)",
        (
            Example(
                "A token for the importer: the gateway's token endpoint, client_credentials grant",
                "POST",
                "/oauth2/token",
                200,
                headers=(FORM,),
                body=CLIENT_CREDENTIALS,
                contains='"token_type":"Bearer"',
                curl_flags="-s",
            ),
            Example(
                "A wrong secret: an RFC 6749 error, and the decision log says why",
                "POST",
                "/oauth2/token",
                401,
                headers=(FORM,),
                body=f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret=stk_secret_wrong",
                contains='"error":"invalid_client"',
                curl_flags="-s",
            ),
            Example(
                "With the token the API knows the client (verified in-process, no JWKS round trip)",
                "GET",
                "/me",
                200,
                headers=(BEARER,),
                contains='"principal":"cl_',
                curl_flags="-s",
            ),
            Example(
                "The importer restocks a book: its token carries books:write",
                "PATCH",
                "/books/2",
                200,
                headers=(JSON, BEARER),
                body='{"stock": 12}',
                contains='"stock":12',
                curl_flags="-s",
            ),
            Example(
                "The public keys that verify its tokens (ES256, rotated with an overlap)",
                "GET",
                "/.well-known/jwks.json",
                200,
                contains='"kty":"EC"',
                curl_flags="-s",
            ),
        ),
    ),
    Section(
        "Rate limits",
        (
            Example(
                "The user directory: 5 a minute per IP; RateLimit counts down, the sixth gets Retry-After",
                "GET",
                "/users?limit=1",
                429,
                reason="rate_limit.exceeded",
                has_headers=("retry-after", "ratelimit", "ratelimit-policy"),
                curl_flags="-s -o /dev/null -D -",
                pipe="grep -iE '^(HTTP|ratelimit:|retry-after)'",
                repeat=6,
            ),
        ),
    ),
    Section(
        "Operations",
        (
            Example(
                "Ops endpoints only from 10.8.0.0/16; a forged X-Forwarded-For does not help",
                "GET",
                "/admin/stats",
                403,
                reason="ip.denied",
                headers=(("X-Forwarded-For", "10.8.0.5"),),
            ),
            Example(
                "Prometheus metrics on the admin listener",
                "GET",
                "/metrics",
                200,
                "admin",
                contains="stockade_requests_total",
                curl_flags="-s",
                pipe="grep '^stockade_requests_total'",
            ),
        ),
    ),
)
EXAMPLES: tuple[Example, ...] = tuple(ex for section in SECTIONS for ex in section.examples)


def display_path(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def promise(ex: Example) -> str:
    return f"{ex.status} {ex.reason}" if ex.reason else str(ex.status)


def token_command(ports: Ports) -> str:
    """The banner's TOKEN= line: a fresh token for the demo client, kept in a shell variable."""
    url = shlex.quote(f"http://{HOST}:{ports.gateway}/oauth2/token")
    extract = shlex.quote('import json,sys; print(json.load(sys.stdin)["access_token"])')
    return f"TOKEN=$(curl -s -d {_shell_word(CLIENT_CREDENTIALS)} {url} | python3 -c {extract})"


def banner(
    ports: Ports,
    config: Path,
    state: Path,
    decisions: Path,
    key: str,
    client: tuple[str, str],
    cwd: Path | None = None,
) -> str:
    """What the demo prints once both processes are ready: where things are, then every example. `client` is the
    OAuth2 client's id and secret."""
    cwd = cwd or Path.cwd()
    spec = display_path(HERE / "openapi.yaml", cwd)
    lines = [
        "",
        "Stockade demo is running",
        f"  gateway   http://{HOST}:{ports.gateway}   policy {display_path(config, cwd)}",
        f"  admin     http://{HOST}:{ports.admin}   /metrics /healthz /readyz",
        f"  upstream  http://{HOST}:{ports.upstream}   the bookshop API, spec {spec}",
        f"  state     {display_path(state, cwd)}   API keys and OAuth2 clients (SQLite), decision log",
        "",
        "Try, from another terminal:",
    ]
    for section in SECTIONS:
        lines += ["", f"{section.title}"]
        if any(ex.uses(KEY) for ex in section.examples):
            made = f"stockade keys create --consumer {CONSUMER} --scopes {SCOPES}"
            lines += [f"  # {CONSUMER}'s API key, made at start-up: {made}", f"  KEY={key}"]
        if any(ex.uses(CLIENT_ID) or ex.uses(TOKEN) for ex in section.examples):
            made = f"stockade clients create --name {CLIENT_NAME} --scopes {CLIENT_SCOPES}"
            lines += [f"  # a machine client (a catalogue importer), registered at start-up: {made}"]
            lines += [f"  CLIENT_ID={client[0]}", f"  CLIENT_SECRET={client[1]}"]
            lines += ["  # a token for it, for the commands below (it expires after 10 minutes: run this again)"]
            lines += [f"  {token_command(ports)}"]
        for ex in section.examples:
            lines += [f"  # {ex.says}  -> {promise(ex)}", f"  {ex.curl(ports, cwd)}"]
    lines += [
        "",
        "Every decision, one JSON line per request (route, principal, decision, reason, stage, status):",
        f"  tail -f {shlex.quote(display_path(decisions, cwd))}",
        "",
        BANNER_END,
        "",
    ]
    return "\n".join(lines)

"""`brute_force`: failed authentications counted per client IP and per presented identity, answered with
exponential back-off and then a temporary lockout (429 + Retry-After), on gateway auth and on login routes."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar
from urllib.parse import parse_qs

from pydantic import Field

from stockade.config.models import KIB
from stockade.pipeline.context import AUTH_IDENTITY
from stockade.pipeline.phase import Phase
from stockade.pipeline.runner import step_eagerly
from stockade.pipeline.stage import AuthGuard, Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny
from stockade.ratelimit.backend import LimiterUnavailableError, LockoutRule, limits_backend, storage_problems
from stockade.ratelimit.keys import IpGrouper
from stockade.ratelimit.limitset import seconds_up
from stockade.security import jsonscan, keys
from stockade.security.readings import foreign_charset, php_name
from stockade.stages.ratelimit.identity_key import IdentityKey, identity_key
from stockade.stages.ratelimit.username_key import KeyMismatchError, UsernameKey, username_key

if TYPE_CHECKING:
    from stockade.config.models import GatewayConfig
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.response import Outcome

log = logging.getLogger("stockade.ratelimit")

IP, USER, IDENT = "bf.ip", "bf.user", "bf.identity"  # ctx.state: the subjects this request was checked as
FAILURES = "bf.failures"  # ctx.state: subjects that already had failures (a success then forgets them)


class Rule(StageConfig):
    free_failures: int = Field(default=5, ge=0, le=1000)  # failures tolerated before back-off starts
    lockout_after: int = Field(default=10, ge=1, le=100_000)  # failures that lock the subject out
    backoff_base: float = Field(default=1.0, gt=0, le=3600)  # seconds after the first failure past the free ones
    backoff_max: float = Field(default=60.0, gt=0, le=86400)  # the doubling stops here
    lockout_seconds: float = Field(default=900.0, gt=0, le=30 * 86400)
    window: float = Field(default=900.0, gt=0, le=30 * 86400)  # failures are forgotten this long after the last

    def rule(self) -> LockoutRule:
        return LockoutRule(
            self.free_failures,
            self.lockout_after,
            self.backoff_base,
            self.backoff_max,
            self.lockout_seconds,
            self.window,
        )


class Login(StageConfig):
    """A login route the gateway does not authenticate itself: the upstream's 401/403 are the failures."""

    username_field: str = Field(default="username", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # JSON path or form field
    failure_statuses: tuple[Annotated[int, Field(ge=400, le=599)], ...] = Field(default=(401, 403), min_length=1)
    max_body_bytes: int = Field(default=16 * KIB, ge=256, le=1024 * KIB)


class BruteForceConfig(StageConfig):
    per_ip: Rule | None = Field(default_factory=lambda: Rule(free_failures=10, lockout_after=50))
    per_identity: Rule | None = Field(default_factory=Rule)
    login: Login | None = None
    ipv6_prefix: int = Field(default=64, ge=32, le=128)


class BruteForce:
    """Counts failed authentications and refuses subjects that are backing off or locked out (429 with
    `Retry-After`, reason `auth.throttled` or `auth.locked_out`).

    - PRE_AUTH `check`: refuses a locked client IP, and on a login route the locked username read from the
      body, before anything else runs.
    - `after_authenticate` (a runner guard): once an authenticator has parsed a credential, refuses a locked
      identity whether the credential was right or wrong, so the answer reveals nothing to a guesser.
    - `on_complete`: a 401 from an authenticator (or, on a login route, an upstream 401/403) counts against
      the IP and the identity; a success forgets the identity's failures. Identities and usernames are counted
      under keyed hashes (see identity_key.py and username_key.py), never as recorded, never secrets.
    """

    id: ClassVar[str] = "brute_force"
    phase: ClassVar[Phase] = Phase.PRE_AUTH
    Config: ClassVar[type[StageConfig]] = BruteForceConfig

    def __init__(self, config: BruteForceConfig, env: StageEnv) -> None:
        self._backend = limits_backend(env.services)
        self._metrics = env.services.metrics
        self._ip_rule = config.per_ip.rule() if config.per_ip is not None else None
        self._id_rule = config.per_identity.rule() if config.per_identity is not None else None
        self._login = config.login
        self._group = IpGrouper(config.ipv6_prefix)
        self._tasks: set[asyncio.Task[Any]] = set()
        if config.login is not None:
            self.max_body_bytes = config.login.max_body_bytes  # login bodies are small; read one at most this big
        self._username_key: UsernameKey | None = None
        self._identity_key: IdentityKey | None = None
        if config.login is not None and config.per_identity is not None:
            # Usernames are counted under a keyed hash. With Redis the key derives from the pepper: the pepper
            # alone (never a KEK) is loaded (generated by default) at build, so a missing one refuses the config
            # instead of failing requests. With memory:// it is the process's own.
            self._username_key = username_key(env.services, f"route {env.route_id!r}: stage brute_force")
        if config.per_identity is not None:
            # Identities too, under a key shared through the limits backend itself (read on use): no pepper.
            self._identity_key = identity_key(env.services)

    @classmethod
    def check_deployment(cls, config: StageConfig, gateway_config: GatewayConfig) -> list[str]:
        return storage_problems(gateway_config.limits_storage, gateway_config.workers)

    async def check(self, ctx: RequestContext) -> Continue | Deny:
        subjects: list[str] = []
        if self._ip_rule is not None and ctx.client_ip:
            subjects.append(ip := f"ip:{self._group(ctx.client_ip)}")
            ctx.state[IP] = ip
        if self._login is not None and self._id_rule is not None:
            # Every way the upstream might read a username the gateway cannot read the same way is refused: each
            # would reach a locked account uncounted (a botnet's only limit is the per-username one).
            field = self._login.username_field
            in_query = ctx.query_params.get(field) if ctx.query else None
            body = await ctx.read_body()
            try:
                if body.strip():
                    if in_query is not None:  # Flask's request.values, say, merges the two: which one is read?
                        raise UnreadableLoginError(f"{field} in the query string and a login body")
                    content_type = ctx.headers.get("content-type")
                    if (
                        not readable_login(content_type)
                        or ctx.headers.get("content-encoding", "identity") != "identity"
                    ):
                        # Multipart, JSON sent as text/plain or without a type, a compressed body: the upstream may
                        # read a username in it.
                        return Deny(415, "brute_force.unsupported_body", detail="login bodies are JSON or form-encoded")
                    name = username(body, content_type, field)
                else:
                    name = query_username(in_query, field)  # a login by query string (GET /login?username=...)
            except UnreadableLoginError as exc:
                return Deny(400, "brute_force.bad_login", detail=str(exc))
            if name is not None and self._username_key is not None:
                try:
                    await self._username_key.verify(self._backend)
                except LimiterUnavailableError as exc:
                    return self._unavailable(exc)
                subjects.append(user := f"user:{hash_username(self._username_key.key, name)}")
                ctx.state[USER] = user
        return await self._refuse(ctx, subjects) or CONTINUE

    async def after_authenticate(self, ctx: RequestContext) -> Deny | None:
        identity, key = ctx.state.get(AUTH_IDENTITY), self._identity_key
        if key is None or not identity:
            return None
        try:
            subject = await self._identity_subject(key, identity)
        except LimiterUnavailableError as exc:
            return self._unavailable(exc)
        ctx.state[IDENT] = subject
        return await self._refuse(ctx, [subject])

    async def _identity_subject(self, key: IdentityKey, identity: object) -> str:
        return f"id:{hash_identity(await key.current(self._backend), identity)}"

    async def _refuse(self, ctx: RequestContext, subjects: list[str]) -> Deny | None:
        if not subjects:
            return None
        try:
            states = await self._backend.blocked(subjects)
        except LimiterUnavailableError as exc:
            return self._unavailable(exc)
        worst: tuple[float, bool, str] | None = None
        for subject, (wait, locked, failures) in zip(subjects, states, strict=True):
            if failures:
                ctx.state.setdefault(FAILURES, set()).add(subject)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, locked, subject)
        if worst is None:
            return None
        wait, locked, subject = worst
        self._metrics.event("brute_force", "refused")
        reason = "auth.locked_out" if locked else "auth.throttled"
        retry = str(max(1, seconds_up(round(wait * 1_000_000))))
        return Deny(429, reason, headers={"retry-after": retry}, detail=f"{subject} {reason.split('.')[1]}")

    def _unavailable(self, exc: LimiterUnavailableError) -> Deny:
        self._metrics.event("brute_force", "unavailable")
        if isinstance(exc, KeyMismatchError) and self._username_key is not None and not self._username_key.reported:
            self._username_key.reported = True  # (a backend outage is logged by the backend)
            log.error("brute_force refuses logins: %s", exc)
        return Deny(503, "brute_force.unavailable", detail=str(exc))

    def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        ip, user = ctx.state.get(IP), ctx.state.get(USER)
        if self._login is not None:
            if outcome.upstream_status in self._login.failure_statuses:
                self._failed(ip, user)
            elif user is not None and 200 <= outcome.upstream_status < 300 and user in ctx.state.get(FAILURES, ()):
                self._later(self._backend.succeeded([user]))
            return
        if ctx.decision == "deny":
            if ctx.status == 401 and ctx.reason != "auth.required" and ctx.stage != self.id:
                identity, subject, key = ctx.state.get(AUTH_IDENTITY), ctx.state.get(IDENT), self._identity_key
                if subject is None and identity and key is not None:
                    self._later(self._failed_as(ip, key, identity))  # no guard ran: the key may need a read first
                else:
                    self._failed(ip, subject)
        elif (ident := ctx.state.get(IDENT)) is not None and ident in ctx.state.get(FAILURES, ()):
            self._later(self._backend.succeeded([ident]))

    def _failed(self, ip: str | None, identity: str | None) -> None:
        subjects = []
        if ip is not None and self._ip_rule is not None:
            subjects.append((ip, self._ip_rule))
        if identity is not None and self._id_rule is not None:
            subjects.append((identity, self._id_rule))
        if subjects:
            self._metrics.event("brute_force", "failure")
            self._later(self._record(subjects))

    async def _failed_as(self, ip: str | None, key: IdentityKey, identity: object) -> None:
        self._failed(ip, await self._identity_subject(key, identity))

    async def _record(self, subjects: Sequence[tuple[str, LockoutRule]]) -> None:
        for (_, rule), lockout in zip(subjects, await self._backend.failed(subjects), strict=True):
            if lockout is not None and lockout.locked and lockout.failures == rule.lockout_after:
                self._metrics.event("brute_force", "lockout")
                log.warning("locked out after repeated authentication failures", extra={"subject": lockout.subject})

    def _later(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Completion hooks must not block: finish now if no I/O is needed, else in a task."""
        try:
            done, rest = step_eagerly(coro)
        except LimiterUnavailableError as exc:
            log.warning("authentication failure not recorded: %s", exc)
            return
        if not done:
            task = asyncio.get_running_loop().create_task(rest)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("authentication failure not recorded: %s", exc)


def fold_username(name: str) -> str:
    """A username as counted: case, surrounding space and compatibility forms (fullwidth or mathematical letters,
    which Django's NFKC and most identity stores fold) do not make a new identity."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).strip()


def hash_username(key: bytes, name: str) -> str:
    """The stored form of a username (`user:<this>`): the keyed hash (`keys.username_hash`, `key` from
    `keys.username_key(pepper)`) of its folded form."""
    return keys.username_hash(key, fold_username(name))


def hash_identity(key: bytes, identity: object) -> str:
    """The stored form of a presented identity (`id:<this>`): the keyed hash (`keys.identity_subject`, `key` from
    identity_key.py) of what the authenticator recorded under AUTH_IDENTITY. Keyed here, for every
    authenticator: jwt, introspection and mtls record an unkeyed digest (of issuer + sub, of a certificate's name),
    which whoever can list lockouts could confirm a guessed name against."""
    return keys.identity_subject(key, str(identity))


def _login_format(content_type: str | None) -> str | None:
    """ "form" or "json" for a login body `username` can read, else None: one answer for both callers."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    return None


def readable_login(content_type: str | None) -> bool:
    """Whether `username` can read a body of this type (JSON or a urlencoded form)."""
    return _login_format(content_type) is not None


class UnreadableLoginError(ValueError):
    """A login body the gateway cannot read a username from the way an upstream would: refused, not passed."""


MAX_USERNAME = 512
_JSON_LOGIN = jsonscan.Limits()  # duplicates refused; the size is bounded by login.max_body_bytes
# Beyond 2**53 a JavaScript upstream's JSON.parse maps many integers to one double: 9007199254740993 and ...995
# would be one account there and two here, so such an integer username is refused, not counted apart.
_MAX_SAFE_INTEGER = 2**53 - 1


def query_username(values: list[str] | None, field: str) -> str | None:
    """The username of a login sent in the query string alone, as `username` reads a form field."""
    if values is not None and len(values) > 1:
        raise UnreadableLoginError(f"{field} repeated in the query string")
    return _checked(values[0] if values else None, field)


def username(body: bytes, content_type: str | None, field: str) -> str | None:
    """The username a login request presents, from a JSON object (dotted path) or a form; None if absent.

    Raises UnreadableLoginError where an upstream could read one the gateway does not: JSON that is not UTF-8
    (a BOM, UTF-16), a repeated form field (Django takes the last, others the first), a form that is not
    UTF-8, a username that is not a string or is over MAX_USERNAME characters."""
    kind = _login_format(content_type)
    charset = foreign_charset(content_type) if kind is not None else None
    if charset is not None:  # Django decodes the body in it: `+ACY-username+AD0-alice` in UTF-7 is a second field
        raise UnreadableLoginError(f"login body in charset {charset}")
    value: object = None
    if kind == "form":
        # Latin-1 maps every byte, so a legacy page's other fields (a password in ISO-8859-1) parse; only the
        # username must be UTF-8, or it could name an account other than the one the gateway counts.
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        values = fields.get(field)
        if values is not None and len(values) > 1:
            raise UnreadableLoginError(f"{field} repeated in the login form")
        if any(key != field and php_name(key) == field for key in fields):  # ` username`, `user.name`: PHP's
            raise UnreadableLoginError(f"{field} spelled another way in the login form")
        try:
            value = values[0].encode("latin-1").decode("utf-8") if values else None
        except UnicodeDecodeError:
            raise UnreadableLoginError(f"{field} in the login form is not UTF-8") from None
    elif kind == "json":
        try:  # repeated keys refused: orjson keeps the last copy, other parsers the first
            value = jsonscan.parse(body, _JSON_LOGIN)
        except jsonscan.Violation as exc:
            if exc.rule == "duplicate_key":
                raise UnreadableLoginError(f"a key repeated in the login body at {exc.pointer or '/'}") from None
            raise UnreadableLoginError("login body is not JSON in UTF-8") from None
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return _checked(value, field)


def _checked(value: object, field: str) -> str | None:
    if value is None:
        return None
    if type(value) is int and abs(value) <= _MAX_SAFE_INTEGER:  # an account or phone number (never a bool)
        value = str(value)
    if not isinstance(value, str):
        raise UnreadableLoginError(f"{field} is not a string")
    value = value.strip()
    if len(value) > MAX_USERNAME:
        raise UnreadableLoginError(f"{field} is longer than {MAX_USERNAME} characters")
    return value or None


_: type[Stage] = BruteForce
_guard: type[AuthGuard] = BruteForce

"""`api_key`: authenticate by an API key in `X-API-Key`, `Authorization: ApiKey ...` or (opt-in) a query param.

A cache hit costs one hash (`keys.fingerprint`) and one dict lookup: no I/O, no HMAC, nothing decoded.
Unknown, revoked, expired and malformed keys all get the same 401 `auth.invalid_credentials`; the decision
log's `detail` says which. The credential is removed before the request goes upstream.

Compiled (stockade.native.COMPILED): every request of a key-protected route runs `check`; its configuration lives
in api_key_config.py, as a pydantic model must not be compiled.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any, ClassVar, Final, cast
from urllib.parse import unquote_plus

from stockade.errors import StorageError
from stockade.identity.key_cache import MAX_STALE, KeyEntry, shared_key_cache
from stockade.pipeline.context import AUTH_IDENTITY, RequestContext
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.security import keys
from stockade.stages.authn.api_key_config import ApiKeyConfig

log: Final = logging.getLogger("stockade.stages.api_key")

INVALID: Final = "auth.invalid_credentials"
_NO_KEY: Final = Skip("no API key")
_fingerprint: Final = keys.fingerprint


class ApiKeyAuthenticator:
    """Looks the key up in the per-process cache (store on a miss) and establishes the consumer as principal."""

    id: ClassVar[str] = "api_key"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = ApiKeyConfig

    def __init__(self, config: ApiKeyConfig, env: StageEnv) -> None:
        self._header = config.header.lower()
        self._authorization = config.authorization
        self._query = config.query_param
        self._header_key = config.header.lower().encode("ascii")
        self._env_prefix = (f"{keys.PREFIX}_{config.env}_" if config.env else keys.PREFIX + "_").encode("ascii")
        self.challenge = f'ApiKey realm="{config.realm}"'
        self._cache = shared_key_cache(env.services)
        self._entries = self._cache.entries
        self._unknown = self._cache.unknown
        self._watcher = self._cache.watcher
        self._used = self._cache.used  # the same set for the cache's lifetime (flush_usage empties it in place)
        self._clock = env.services.clock
        # Variable-length tuple types: compiled, a fixed-length one is stored unboxed and boxed again at every read,
        # a new tuple per request to hash in `entry.verdicts`.
        self._strip_header: tuple[str, ...] = (self._header,)
        self._strip_authorization: tuple[str, ...] = ("authorization",)
        if self._query:
            log.warning(
                "api_key on route %r accepts keys in the query parameter %r: URLs end up in logs and caches; "
                "prefer the X-API-Key header",
                env.route_id,
                self._query,
            )

    def credential(self, ctx: RequestContext) -> str | None:
        """Where this request carries what `check` would take for a key (see CredentialSource)."""
        headers = ctx.headers
        if self._header in headers:
            return self._header
        if self._authorization:
            auth = headers.get("authorization")
            if auth is not None and auth[:7].lower() == "apikey ":
                return "authorization"
        if self._query is not None and self._query in ctx.query_params:
            return f"query:{self._query}"
        return None

    def check(self, ctx: RequestContext) -> Continue | Skip | Deny | Coroutine[Any, Any, Continue | Deny]:
        """A cached key's verdict at once (no coroutine); a miss returns a coroutine that asks the store."""
        # In bytes until a miss: a cache hit decodes nothing (the key is hashed as received).
        headers = ctx.headers
        try:
            value = headers.single(self._header_key)
            strip: tuple[str, ...] = self._strip_header
            if self._authorization:
                auth = headers.single(b"authorization")
                if auth is not None and auth[:7].lower() == b"apikey ":
                    if value is not None:
                        return Deny(400, "auth.ambiguous_credentials", detail="API key in two headers")
                    value, strip = auth[7:].strip(), self._strip_authorization
        except DuplicateHeaderError as exc:
            return Deny(400, "http.duplicate_header", detail=f"repeated {exc.name} header")
        query = None
        if self._query is not None:
            found = ctx.query_params.get(self._query)
            if found is not None:
                if value is not None or len(found) > 1:
                    return Deny(400, "auth.ambiguous_credentials", detail="more than one API key presented")
                value, strip, query = found[0].strip().encode("utf-8"), (), self._without_param(ctx.query)
        if value is None:
            return _NO_KEY
        if len(value) > keys.MAX_KEY_LENGTH or not value.startswith(self._env_prefix):
            return Deny(
                401, INVALID, detail="malformed key" if len(value) > keys.MAX_KEY_LENGTH else "wrong key prefix"
            )
        fp = _fingerprint(value)
        entry = self._entries.get(fp) or self._unknown.get(fp)
        if entry is not None:
            now = self._clock.monotonic()
            if now >= entry.stale_at or now - self._watcher.last_ok > MAX_STALE:
                entry = None
        if entry is None:
            return self._check_loaded(ctx, value, fp, strip, query)
        return self._verdict(ctx, entry, strip, query)

    async def _check_loaded(
        self, ctx: RequestContext, value: bytes, fp: bytes, strip: tuple[str, ...], query: str | None
    ) -> Continue | Deny:
        loaded = await self._miss(value.decode("latin-1"), fp)
        if type(loaded) is Deny:
            return loaded
        return self._verdict(ctx, cast(KeyEntry, loaded), strip, query)

    def _verdict(
        self, ctx: RequestContext, entry: KeyEntry, strip: tuple[str, ...], query: str | None
    ) -> Continue | Deny:
        """The verdict on a known key: the cache-hit path of every API-key request."""
        ctx.state[AUTH_IDENTITY] = entry.identity
        if entry.principal is None:
            return Deny(401, INVALID, detail=entry.problem)
        if entry.expires_at is not None and self._clock.time() >= entry.expires_at:
            return Deny(401, INVALID, detail=f"expired key {entry.key_id}")
        if entry.key_id is not None:
            self._used.add(entry.key_id)  # last-used, flushed in batches off the request path
        if query is not None:
            return Continue(principal=entry.principal, remove_headers=strip, set_query=query)
        verdict = entry.verdicts.get(strip)
        if verdict is None:
            verdict = entry.verdicts[strip] = Continue(principal=entry.principal, remove_headers=strip)
        return verdict

    async def _miss(self, value: str, fp: bytes) -> KeyEntry | Deny:
        """Not cached (or too old to trust): check the format, then ask the store through the cache."""
        try:
            keys.parse(value)
        except keys.KeyFormatError as exc:
            return Deny(401, INVALID, detail=f"malformed key ({exc.reason})")
        try:
            return await self._cache.load(fp, value)
        except StorageError as exc:
            return Deny(503, "auth.unavailable", detail=f"key store: {exc}")

    def _without_param(self, query: str) -> str:
        """The raw query minus every occurrence of the key parameter (other parameters byte-for-byte)."""
        name = self._query
        return "&".join(p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != name)


_: Final[type[Stage]] = ApiKeyAuthenticator  # checked against the protocol by mypy

"""`oauth2_introspection`: opaque bearer tokens checked at an RFC 7662 endpoint, results cached by token hash."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
from collections import OrderedDict
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator

from stockade.pipeline.context import AUTH_IDENTITY, RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.security import jose, keys
from stockade.security.fetch import bounded_body
from stockade.security.jsonscan import has_unpaired_surrogate
from stockade.security.jwk import thumbprint_sha256
from stockade.stages.authn.authorization import authorization, bearer_credential, bearer_token, query_token
from stockade.stages.authn.jwt_config import _loopback

log = logging.getLogger("stockade.introspection")

_MAX_RESPONSE = 64 * 1024
# Calls under way or waiting for a slot, as a multiple of max_concurrent_calls, beyond which an uncached token is
# refused at once: a flood of made-up tokens queues no further, and a real one waits a little instead of failing.
_QUEUE_FACTOR = 4


class IntrospectionConfig(StageConfig):
    endpoint: str
    client_id: Annotated[str, Field(min_length=1)]
    client_secret_env: Annotated[str, Field(min_length=1)]  # the secret itself never sits in the config file
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    timeout: Annotated[float, Field(gt=0, le=30)] = 5.0
    cache_ttl: Annotated[float, Field(ge=0, le=3600)] = 300.0  # positive results: until exp, at most this
    negative_ttl: Annotated[float, Field(ge=0, le=300)] = 10.0
    cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000  # active tokens (inactive ones: apart, as many)
    # Calls to the endpoint under way at once (more wait their turn, up to 4x as many; beyond that an uncached
    # token is 503 auth.unavailable), so a flood of made-up tokens cannot turn request rate into load on the
    # authorization server, nor shut out every real token at once.
    max_concurrent_calls: Annotated[int, Field(ge=1, le=10_000)] = 32
    issuer: str | None = None  # if set, `iss` in the response must equal it
    audiences: tuple[str, ...] = ()  # if set, `aud` must include one of them
    roles_claim: str = "roles"
    ca_file: str | None = None
    realm: str = Field(default="stockade", pattern=r'^[^"\\\x00-\x1f]{1,64}$')

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("endpoint must be an absolute http(s) URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError("endpoint must use https (plain http is allowed only to a loopback address)")
        return v


class IntrospectionAuthenticator:
    """Positive answers are cached until the token's `exp` (bounded), negative ones briefly; errors fail closed."""

    id: ClassVar[str] = "oauth2_introspection"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = IntrospectionConfig

    def __init__(self, config: IntrospectionConfig, env: StageEnv) -> None:
        secret = os.environ.get(config.client_secret_env)
        if not secret:
            raise ValueError(f"environment variable {config.client_secret_env} (client secret) is not set")
        self._config = config
        self._secret = secret
        self._clock = env.clock
        self._shared = env.services.shared
        self._ca = str(env.base_dir / config.ca_file) if config.ca_file else None
        # Least recently used first. Inactive answers have a cache of their own: made-up tokens, which anyone can
        # send, would otherwise push out the active ones and make every real user's next request a call.
        self._cache: OrderedDict[bytes, tuple[float, Continue | Deny, str]] = OrderedDict()
        self._negative: OrderedDict[bytes, tuple[float, Continue | Deny, str]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[dict[str, Any] | None]] = {}
        self._slots = asyncio.Semaphore(config.max_concurrent_calls)
        gateway = env.services.config
        self._slot_wait = gateway.limits.pipeline_timeout if gateway is not None else 10.0
        self.challenge = f'Bearer realm="{config.realm}"'
        self._invalid = Deny(
            401,
            "auth.invalid_token",
            headers={"www-authenticate": f'Bearer realm="{config.realm}", error="invalid_token"'},
            detail="introspection: token not active",
        )
        self.requests = 0  # calls made to the endpoint (tests and metrics)
        # Who vouches for an answer without `iss`: the endpoint, named without credentials, query or fragment (the
        # name goes upstream in x-stockade-issuer and into rate-limit keys).
        parts = urlsplit(config.endpoint)
        port = f":{parts.port}" if parts.port is not None else ""
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        self._endpoint_issuer = f"{parts.scheme}://{host}{port}{parts.path}"

    credential = staticmethod(bearer_credential)

    async def check(self, ctx: RequestContext) -> Continue | Skip | Deny:
        if (refused := query_token(ctx)) is not None:
            return refused
        value = authorization(ctx)
        if not isinstance(value, str):
            return value
        token = bearer_token(value)
        if not token:
            return Skip("Authorization is not a Bearer credential")
        key = keys.fingerprint(token.encode("latin-1"))
        now = self._clock.time()
        for cache in (self._cache, self._negative):
            hit = cache.get(key)
            if hit is not None:
                if now < hit[0]:
                    cache.move_to_end(key)
                    return self._reuse(ctx, hit[1], hit[2])
                del cache[key]
        fut = self._inflight.get(key)
        if fut is None:  # concurrent requests with one token share one call
            if len(self._inflight) >= _QUEUE_FACTOR * self._config.max_concurrent_calls:
                return Deny(503, "auth.unavailable", detail="introspection: too many calls waiting")
            fut = self._inflight[key] = asyncio.ensure_future(self._introspect(token))
            fut.add_done_callback(functools.partial(self._done, key))
        doc = await asyncio.shield(fut)
        if doc is None:
            return Deny(503, "auth.unavailable", detail="introspection endpoint unavailable")
        now = self._clock.time()
        verdict, until, identity = self._judge(doc, now)
        if self._config.cache_size and until > now:
            cache = self._cache if type(verdict) is Continue else self._negative
            if len(cache) >= self._config.cache_size:
                cache.popitem(last=False)
            cache[key] = (until, verdict, identity)
        return self._reuse(ctx, verdict, identity)

    def _done(self, key: bytes, fut: asyncio.Future[dict[str, Any] | None]) -> None:
        self._inflight.pop(key, None)

    def _reuse(self, ctx: RequestContext, verdict: Continue | Deny, identity: str) -> Continue | Deny:
        if type(verdict) is Continue and verdict.principal is not None:
            try:
                want = jose.bound_thumbprint(verdict.principal.claims)
            except jose.BadClaim as exc:
                detail = f"introspection: {exc.detail}"
                return Deny(401, "auth.invalid_token", headers=self._invalid.headers, detail=detail)
            if want is not None and (ctx.peer_cert_der is None or thumbprint_sha256(ctx.peer_cert_der) != want):
                return Deny(401, "auth.invalid_token", headers=self._invalid.headers, detail="introspection: cnf")
        if identity:
            ctx.state[AUTH_IDENTITY] = identity
        return verdict

    def _judge(self, doc: dict[str, Any], now: float) -> tuple[Continue | Deny, float, str]:
        cfg = self._config
        negative_until = now + cfg.negative_ttl
        if doc.get("active") is not True:
            return self._invalid, negative_until, ""
        exp = doc.get("exp")
        if isinstance(exp, bool) or (exp is not None and not isinstance(exp, int | float)):
            return self._why("exp is not a number"), negative_until, ""
        if exp is not None and exp <= now:
            return self._why("exp in the past"), negative_until, ""
        if cfg.issuer is not None and doc.get("iss") != cfg.issuer:
            return self._why(f"iss {doc.get('iss')!r}"), negative_until, ""
        aud = doc.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if cfg.audiences and set(cfg.audiences).isdisjoint(a for a in auds if isinstance(a, str)):
            return self._why(f"aud {aud!r}"), negative_until, ""
        sub = doc.get("sub") or doc.get("client_id") or doc.get("username")
        if not isinstance(sub, str):
            return self._why("no sub, client_id or username"), negative_until, ""
        scope = doc.get("scope")
        roles = doc.get(cfg.roles_claim)
        # Without an `iss` the endpoint that vouched for the token names its authority: two authorization servers
        # may both have an `alice`, and the `principal` rate-limit key and x-stockade-issuer must tell them apart.
        iss = doc.get("iss")
        issuer = iss if isinstance(iss, str) else self._endpoint_issuer
        principal = Principal(
            id=sub,
            kind="introspection",
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            roles=frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset(),
            credential_id=doc.get("jti") if isinstance(doc.get("jti"), str) else None,
            claims=MappingProxyType(doc),
            issuer=issuer,
        )
        until = now + cfg.cache_ttl
        if exp is not None:
            until = min(until, float(exp))
        identity = hashlib.sha256(f"{issuer}\x00{sub}".encode()).hexdigest()[:32]
        return Continue(principal=principal), until, identity

    def _why(self, detail: str) -> Deny:
        return Deny(401, "auth.invalid_token", headers=self._invalid.headers, detail=f"introspection: {detail}")

    async def _introspect(self, token: str) -> dict[str, Any] | None:
        # At most max_concurrent_calls at once; the others wait their turn (bounded above), but no longer than the
        # request that asked can wait: a call made later would be load nobody waits for.
        try:
            async with asyncio.timeout(self._slot_wait):  # a cancelled acquire gives its permit back itself
                await self._slots.acquire()
        except TimeoutError:
            log.warning("introspection: no call slot within %gs; refused", self._slot_wait)
            return None
        try:
            return await self._call(token)
        finally:
            self._slots.release()

    async def _call(self, token: str) -> dict[str, Any] | None:
        import httpx

        cfg = self._config
        self.requests += 1
        form = {"token": token, "token_type_hint": "access_token"}
        auth: tuple[str, str] | None = None
        if cfg.auth_method == "client_secret_post":
            form.update(client_id=cfg.client_id, client_secret=self._secret)
        else:  # RFC 6749 §2.3.1: form-encode both before Basic
            auth = (quote(cfg.client_id, safe=""), quote(self._secret, safe=""))
        try:
            client = self._client(httpx)
            headers = {"accept": "application/json"}
            async with client.stream("POST", cfg.endpoint, data=form, auth=auth, headers=headers) as resp:
                if resp.status_code != 200:
                    raise ValueError(f"HTTP {resp.status_code}")
                body = await bounded_body(resp, _MAX_RESPONSE)  # read no more than that from the endpoint
            if body is None:
                raise ValueError("response too large")
            doc = json.loads(body)
            if has_unpaired_surrogate(body):  # a str that cannot be hashed or sent on as an identity
                raise ValueError("response has a string with half a surrogate pair")
            if not isinstance(doc, dict):
                raise ValueError("response is not a JSON object")
            return doc
        except Exception as exc:  # any failure denies with 503: fail closed, never a guess
            log.warning("introspection at %s failed: %s", cfg.endpoint, str(exc) or type(exc).__name__)
            return None

    def _client(self, httpx: Any) -> Any:
        """One pooled client per endpoint CA and event loop (a client must not outlive or change its loop)."""
        clients: dict[str | None, tuple[object, Any]] = self._shared.setdefault("oauth2_introspection.http", {})
        loop = asyncio.get_running_loop()
        found = clients.get(self._ca)
        if found is not None and found[0] is loop:
            return found[1]
        import ssl

        verify = ssl.create_default_context(cafile=self._ca)
        client = httpx.AsyncClient(timeout=self._config.timeout, follow_redirects=False, trust_env=False, verify=verify)
        clients[self._ca] = (loop, client)
        return client


_: type[Stage] = IntrospectionAuthenticator

"""`jwt`: bearer JWT authentication against pinned issuers, with verified tokens cached by their exact bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from stockade.errors import StorageError
from stockade.pipeline.context import AUTH_IDENTITY, RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.security import jose
from stockade.security.jwk import thumbprint_sha256
from stockade.security.jwks import KeySet, StaticKeys, fetcher_for
from stockade.stages.authn.authorization import authorization, bearer_credential, bearer_token, query_token
from stockade.stages.authn.jwt_config import IssuerConfig, JwtConfig

if TYPE_CHECKING:
    from stockade.oauth2.revocation import RevokedJtis

log: Final = logging.getLogger("stockade.jwt")


class KeySource(Protocol):
    """Where an issuer's keys come from: static config, a JWKS URL, or the gateway's own signing keys."""

    keys: KeySet | None
    fresh_until: float

    async def current(self, now: float) -> KeySet | None: ...  # raises StorageError: 503
    async def refetch(self, now: float) -> bool: ...  # an unknown kid; True if `keys` changed. StorageError: 503


@dataclass(frozen=True, slots=True)
class _Issuer:
    policy: jose.IssuerPolicy
    source: KeySource
    roles_path: tuple[str, ...]
    revocation: bool


class _Entry:
    """A verified token: the verdict to return and what must still hold for it to be reused."""

    __slots__ = ("client_id", "cnf", "exp_limit", "identity", "jti", "keys", "source", "verdict")

    def __init__(self, verdict: Continue, exp_limit: float, source: KeySource, keys: KeySet, identity: str) -> None:
        self.verdict = verdict
        self.exp_limit = exp_limit
        self.source = source
        # The key set that verified the token (not the source's current one, which may have been replaced while
        # the revocation list was awaited): a rotated set (new object) sends the token back through verification.
        self.keys = keys
        self.identity = identity
        self.jti: str | None = None  # set only where revocation is honoured
        self.client_id: str | None = None
        self.cnf: str | None = None  # RFC 8705 certificate thumbprint the token is bound to


class JwtAuthenticator:
    """Verifies `Authorization: Bearer <JWT>`; skips when absent or opaque (no dots: introspection's)."""

    id: ClassVar[str] = "jwt"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = JwtConfig

    def __init__(self, config: JwtConfig, env: StageEnv) -> None:
        self._clock = env.clock
        self._issuers = {i.issuer: _issuer(i, env) for i in config.issuers}
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cache_size = config.cache_size
        self._max_bytes = config.max_token_bytes
        self.challenge = f'Bearer realm="{config.realm}"'
        self._invalid = {"www-authenticate": f'Bearer realm="{config.realm}", error="invalid_token"'}
        self._revoked: RevokedJtis | None = None
        if any(i.revocation for i in self._issuers.values()):
            from stockade.oauth2.revocation import revoked_jtis

            self._revoked = revoked_jtis(env.services)

    credential = staticmethod(bearer_credential)

    def check(self, ctx: RequestContext) -> Continue | Skip | Deny | Coroutine[Any, Any, Continue | Skip | Deny]:
        """The cached verdict of a token seen before (no coroutine), else a coroutine that verifies it."""
        if (refused := query_token(ctx)) is not None:
            return refused
        value = authorization(ctx)
        if not isinstance(value, str):
            return value
        entry = self._cache.get(value)
        if entry is not None:
            now = self._clock.time()
            source = entry.source
            if (
                now <= entry.exp_limit
                and entry.keys is source.keys
                and now < source.fresh_until
                and (entry.jti is None or self._not_revoked(entry.jti, entry.client_id))
                and (entry.cnf is None or _thumbprint(ctx) == entry.cnf)
            ):
                self._cache.move_to_end(value)
                ctx.state[AUTH_IDENTITY] = entry.identity
                return entry.verdict
            del self._cache[value]
        return self._verify(ctx, value)

    def _not_revoked(self, jti: str, client_id: str | None) -> bool:
        revoked = self._revoked
        return revoked is not None and revoked.allows(jti, client_id)

    async def _verify(self, ctx: RequestContext, value: str) -> Continue | Skip | Deny:
        token = bearer_token(value)
        if token is None:
            return Skip("Authorization is not a Bearer credential")
        if "." not in token:
            return Skip("opaque bearer token")
        iss: str | None = None
        kid: object = None
        try:
            parsed = jose.parse(token, max_bytes=self._max_bytes)
            kid = parsed.header.get("kid")
            iss = jose.unverified_issuer(parsed)
            issuer = self._issuers.get(iss) if iss is not None else None
            if issuer is None:
                raise jose.UnknownIssuer("iss missing or not a configured issuer")
            alg = jose.check_header(parsed.header, issuer.policy)  # the pin applies before any key is looked at
            now = self._clock.time()
            try:
                keys = await issuer.source.current(now)
            except StorageError as exc:
                keys = None
                log.error("signing keys unavailable: %s", exc)
            if keys is None:
                return Deny(503, "auth.unavailable", detail=f"no usable key set for issuer {iss!r}")
            try:
                jose.verify_signature(parsed, alg, keys.find)
            except jose.UnknownKid:
                try:
                    refetched = await issuer.source.refetch(now)
                except StorageError as exc:  # the key may be good: cannot tell, not "invalid"
                    return Deny(503, "auth.unavailable", detail=f"key set for issuer {iss!r} not current: {exc}")
                if not refetched or issuer.source.keys is None:
                    raise
                keys = issuer.source.keys
                jose.verify_signature(parsed, alg, keys.find)
            exp = jose.check_claims(parsed.claims, issuer.policy, now)
            if issuer.revocation and self._revoked is not None:
                client_id = parsed.claims.get("client_id")
                try:  # waits for the re-read of a client a change has just named (a new one, too), if any
                    await self._revoked.ensure_fresh(client_id if isinstance(client_id, str) else None)
                except StorageError as exc:  # a revocation list we cannot trust fails closed; the token may be good
                    return Deny(503, "auth.unavailable", detail=f"revocation list unavailable: {exc}")
            entry = self._accept(ctx, parsed.claims, issuer, keys, exp)
        except jose.JoseError as exc:
            return Deny(401, "auth.invalid_token", headers=self._invalid, detail=_detail(exc, iss, kid))
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.popitem(last=False)
            self._cache[value] = entry
        ctx.state[AUTH_IDENTITY] = entry.identity
        return entry.verdict

    def _accept(self, ctx: RequestContext, claims: dict[str, Any], issuer: _Issuer, keys: KeySet, exp: float) -> _Entry:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise jose.BadClaim("claim 'sub' missing or not a string")
        jti = claims.get("jti")
        if issuer.revocation and self._revoked is not None:
            if not isinstance(jti, str) or not jti:
                raise jose.BadClaim("claim 'jti' is required where revocation is honoured")
            if jti in self._revoked:
                raise jose.Revoked(f"jti {jti!r} was revoked")
            client_id = claims.get("client_id")
            if isinstance(client_id, str) and client_id in self._revoked.disabled_clients:
                raise jose.Revoked(f"client {client_id!r} was revoked")
        cnf = jose.bound_thumbprint(claims)
        if cnf is not None and _thumbprint(ctx) != cnf:
            raise jose.CnfMismatch("token is bound to another client certificate (cnf.x5t#S256)")
        principal = Principal(
            id=sub,
            kind="jwt",
            scopes=_scopes(claims),
            roles=_strings(_path(claims, issuer.roles_path)),
            credential_id=jti if isinstance(jti, str) else None,
            claims=MappingProxyType(claims),
            issuer=issuer.policy.issuer,
        )
        identity = hashlib.sha256(f"{issuer.policy.issuer}\x00{sub}".encode()).hexdigest()[:32]
        entry = _Entry(Continue(principal=principal), exp + issuer.policy.leeway, issuer.source, keys, identity)
        entry.jti = jti if issuer.revocation and isinstance(jti, str) else None
        client_id = claims.get("client_id")
        entry.client_id = client_id if isinstance(client_id, str) else None
        entry.cnf = cnf
        return entry


def _issuer(cfg: IssuerConfig, env: StageEnv) -> _Issuer:
    source: KeySource
    policy = cfg.policy()
    if cfg.gateway:
        from stockade.oauth2.signing import gateway_key_source

        source = gateway_key_source(env.services, cfg.issuer)
        server = env.services.config.oauth2_server if env.services.config is not None else None
        if server is not None and "algorithms" not in cfg.model_fields_set:  # pinned to what the gateway signs
            policy = dataclasses.replace(policy, algorithms=frozenset({server.algorithm}))
        if "types" not in cfg.model_fields_set:
            policy = dataclasses.replace(policy, types=frozenset({"at+jwt"}))  # RFC 9068 explicit typing
    elif cfg.jwks_url is not None:
        source = fetcher_for(env.services.shared, cfg.jwks_url, env.clock, cfg.fetch_policy(env.base_dir))
    else:
        source = StaticKeys(cfg.static_keys(env.base_dir))
    revocation = cfg.revocation if cfg.revocation is not None else cfg.gateway
    return _Issuer(policy, source, tuple(cfg.roles_claim.split(".")), revocation)


def _thumbprint(ctx: RequestContext) -> str | None:
    der = ctx.peer_cert_der
    return thumbprint_sha256(der) if der is not None else None


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    return _strings(claims.get("scp"))


def _strings(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def _path(claims: Mapping[str, Any], path: tuple[str, ...]) -> object:
    node: object = claims
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _detail(exc: jose.JoseError, iss: str | None, kid: object) -> str:
    return f"{exc.code}: {exc.detail}; iss={_short(iss)} kid={_short(kid)}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_: Final[type[Stage]] = JwtAuthenticator  # checked against the protocol by mypy

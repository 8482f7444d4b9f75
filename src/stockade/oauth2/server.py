"""The token endpoint (client_credentials, RFC 6749 §4.4) issuing RFC 9068 JWT access tokens, RFC 7009
revocation honoured through `jti`, the published JWKS and RFC 8414 metadata.

A store that fails is `503 temporarily_unavailable`, logged when the failures start and when a request succeeds
again, never per request: the endpoints take unauthenticated requests, which must not become log volume.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

from stockade.errors import StorageError
from stockade.handlers.base import LocalResponse
from stockade.oauth2.clients import ASSERTION_ALGS, SUPPORTED_METHODS, ClientAuthenticator, OAuthError
from stockade.pipeline.context import BodyTooLargeError
from stockade.pipeline.headers import DuplicateHeaderError
from stockade.pipeline.local import problem
from stockade.pipeline.runner import Pipeline
from stockade.pipeline.verdict import Deny
from stockade.security import jose
from stockade.security.jwk import thumbprint_sha256
from stockade.storage.base import ConflictError, NotFoundError

if TYPE_CHECKING:
    from stockade.config.oauth2 import OAuth2Server
    from stockade.oauth2.revocation import RevokedJtis
    from stockade.oauth2.signing import SigningKeys
    from stockade.pipeline.context import RequestContext
    from stockade.pipeline.stage import Services
    from stockade.storage.base import Store

log = logging.getLogger("stockade.oauth2")

SHARED_KEY = "oauth2.server"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 32
_NO_STORE = [("cache-control", "no-store"), ("pragma", "no-cache")]
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a secret
REVOKE_PATH = "/oauth2/revoke"
JWKS_PATH = "/.well-known/jwks.json"


class TokenServer:
    """One per process and `oauth2_server` config; handlers delegate to it."""

    def __init__(self, cfg: OAuth2Server, services: Services) -> None:
        from stockade.oauth2.revocation import revoked_jtis
        from stockade.oauth2.signing import shared_signing_keys
        from stockade.security.secrets import shared_secrets
        from stockade.storage import shared_store

        self.cfg = cfg
        self.clock = services.clock
        self.store: Store = shared_store(services)
        self.signing: SigningKeys = shared_signing_keys(services)
        self.signing.policy = cfg
        self.revoked: RevokedJtis = revoked_jtis(services)
        self.auth = ClientAuthenticator(
            store=self.store,
            pepper=shared_secrets(services).pepper,
            clock=self.clock,
            assertion_audiences=frozenset({cfg.issuer, cfg.issuer + TOKEN_PATH}),
            assertion_max_lifetime=cfg.assertion_max_lifetime,
        )
        self._own_policy = jose.IssuerPolicy(
            issuer=cfg.issuer,
            audiences=frozenset(cfg.audiences),
            algorithms=ASSERTION_ALGS,  # any algorithm our keys may have used across an algorithm change
            leeway=jose.MAX_LEEWAY,
            types=frozenset({"at+jwt"}),
        )
        self.metadata_body = orjson.dumps(metadata(cfg))
        self._store_failing = False  # since a store call failed, until a request succeeds again

    def _unavailable(self, exc: StorageError) -> OAuthError:
        if not self._store_failing:
            self._store_failing = True
            log.error("token endpoint: the store failed (%s): 503 temporarily_unavailable until it answers", exc)
        return OAuthError("temporarily_unavailable", "try again later", status=503, log=f"store: {exc}")

    def _answered(self) -> None:
        if self._store_failing:
            self._store_failing = False
            log.warning("token endpoint: the store answers again")

    # -- /oauth2/token -----------------------------------------------------------------------------------------

    async def token(self, ctx: RequestContext) -> LocalResponse:
        try:
            form, authorization = await _form(ctx)
            client = await self.auth.authenticate(form, authorization)
            grant_type = form.get("grant_type")
            if not grant_type:  # RFC 6749 §5.2: a missing parameter is invalid_request
                raise OAuthError("invalid_request", "the grant_type parameter is required")
            if grant_type != "client_credentials":
                raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
            allowed = client.allowed_scopes
            requested = form.get("scope")
            granted = list(dict.fromkeys(requested.split(" "))) if requested is not None else list(allowed)
            if requested is not None and (not all(granted) or not set(granted) <= set(allowed)):
                raise OAuthError("invalid_scope", "the requested scope exceeds what the client may have")
            self.signing.serving()
            await self.signing.up_to_date(force=True)  # never sign with a key a change not read yet may have retired
            signer = self.signing.signer()
            if signer is None:
                await self.signing.maintain(self.cfg)
                signer = self.signing.signer()
            if signer is None:
                raise OAuthError("temporarily_unavailable", "no signing key", status=503)
        except OAuthError as exc:
            return self._error(ctx, exc)
        except (NotFoundError, ConflictError):
            raise  # not an outage: a fault of ours, answered 500
        except StorageError as exc:
            return self._error(ctx, self._unavailable(exc))
        self._answered()
        kid, alg, key = signer
        now = int(self.clock.time())
        aud: str | list[str] = self.cfg.audiences[0] if len(self.cfg.audiences) == 1 else list(self.cfg.audiences)
        claims: dict[str, Any] = {
            "iss": self.cfg.issuer,
            "sub": client.client_id,
            "aud": aud,
            "exp": now + self.cfg.token_ttl,
            "iat": now,
            "jti": secrets.token_urlsafe(18),
            "client_id": client.client_id,
            "scope": " ".join(granted),
        }
        if self.cfg.bind_certificates and ctx.peer_cert_der is not None:
            claims["cnf"] = {"x5t#S256": thumbprint_sha256(ctx.peer_cert_der)}  # RFC 8705
        token = jose.sign(claims, key, alg, kid=kid, typ="at+jwt")
        ctx.detail = f"issued {claims['jti']} to {client.client_id} (kid {kid})"
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.cfg.token_ttl,
            "scope": claims["scope"],
        }
        return LocalResponse(200, [("content-type", "application/json"), *_NO_STORE], orjson.dumps(body))

    # -- /oauth2/revoke (RFC 7009) -----------------------------------------------------------------------------

    async def revoke(self, ctx: RequestContext) -> LocalResponse:
        try:
            return await self._revoke(ctx)
        except OAuthError as exc:
            return self._error(ctx, exc)
        except (NotFoundError, ConflictError):
            raise  # not an outage: a fault of ours, answered 500
        except StorageError as exc:
            return self._error(ctx, self._unavailable(exc))

    async def _revoke(self, ctx: RequestContext) -> LocalResponse:
        form, authorization = await _form(ctx)
        client = await self.auth.authenticate(form, authorization)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "the token parameter is required")
        now = self.clock.time()
        await self.signing.up_to_date(force=True)  # a withheld key made a good token look foreign: 200, not revoked
        try:
            parsed = jose.parse(token)
            keys = await self.signing.current(now)
            if keys is None:
                raise jose.UnknownKid("no signing keys")
            _, exp = jose.verify(parsed, self._own_policy, keys.find, now)
        except jose.JoseError as exc:
            # RFC 7009 §2.2: an invalid, expired or foreign token is answered like a revoked one (200).
            ctx.detail = f"nothing revoked: {exc.code}"
            self._answered()
            return LocalResponse(200, list(_NO_STORE))
        jti = parsed.claims.get("jti")
        if parsed.claims.get("client_id") != client.client_id or not isinstance(jti, str):
            ctx.detail = f"nothing revoked: token not issued to {client.client_id}"
            self._answered()
            return LocalResponse(200, list(_NO_STORE))
        # Kept until the token is past every verifier's leeway: a worker loading the list just after `exp` must
        # still know it (the jwt stage accepts a token up to exp + leeway).
        expires_at = exp + jose.MAX_LEEWAY
        await self.store.revoke_token(jti, expires_at=expires_at, actor=f"client:{client.client_id}", at=now)
        self.revoked.add(jti)
        ctx.detail = f"revoked {jti} for {client.client_id}"
        self._answered()
        return LocalResponse(200, list(_NO_STORE))

    # -- published documents -----------------------------------------------------------------------------------

    async def jwks(self, ctx: RequestContext) -> LocalResponse:
        self.signing.serving()
        try:
            # Not a set a key change may have overtaken: verifiers cache what this says for jwks_max_age, and keep
            # the set they have through a 503. Unauthenticated: no read during a failure's back-off.
            await self.signing.up_to_date()
            if self.signing.signer() is None:
                await self.signing.maintain(self.cfg)  # publish a key before the first token needs it
        except (NotFoundError, ConflictError):
            raise
        except StorageError as exc:
            unavailable = self._unavailable(exc)
            Pipeline.deny(ctx, "oauth2", Deny(503, "auth.unavailable", detail=unavailable.log))
            return problem(503, "auth.unavailable", ctx.request_id)
        headers = [
            ("content-type", "application/jwk-set+json"),
            ("cache-control", f"public, max-age={self.cfg.jwks_max_age}"),
        ]
        return LocalResponse(200, headers, orjson.dumps(self.signing.jwks()))

    def metadata(self) -> LocalResponse:
        return LocalResponse(200, [("content-type", "application/json")], self.metadata_body)

    def _error(self, ctx: RequestContext, exc: OAuthError) -> LocalResponse:
        Pipeline.deny(ctx, "oauth2", Deny(exc.status, f"oauth2.{exc.error}", detail=exc.log))  # for the decision log
        headers = [("content-type", "application/json"), *_NO_STORE]
        if exc.status == 401:
            # A 401 names a scheme to use (RFC 9110 §15.5.2), and Basic is the only HTTP authentication scheme the
            # endpoint takes: the one a client_secret_basic client used (RFC 6749 §5.2), and the one to offer a
            # client that authenticated in the body (§5.2: 401 to say which schemes are supported). Bearer is how
            # a resource is called, never how a client authenticates here.
            headers.append(("www-authenticate", 'Basic realm="stockade", error="invalid_client"'))
        body = orjson.dumps({"error": exc.error, "error_description": exc.description})
        return LocalResponse(exc.status, headers, body)


async def _form(ctx: RequestContext) -> tuple[dict[str, str], str | None]:
    """The request's form parameters (each at most once, RFC 6749 §3.2) and its Authorization header."""
    try:
        ctype = ctx.headers.get_single("content-type")
        authorization = ctx.headers.get_single("authorization")
    except DuplicateHeaderError as exc:
        raise OAuthError("invalid_request", f"repeated {exc.name} header") from None
    if ctype is None or ctype.split(";")[0].strip().lower() != FORM:
        raise OAuthError("invalid_request", f"the body must be {FORM}")
    try:
        body = await ctx.read_body()
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError, BodyTooLargeError):
        raise OAuthError("invalid_request", "malformed form body") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"parameter {name!r} repeated")
        form[name] = value
    return form, authorization


def metadata(cfg: OAuth2Server) -> dict[str, Any]:
    """RFC 8414 authorization server metadata."""
    doc: dict[str, Any] = {
        "issuer": cfg.issuer,
        "token_endpoint": cfg.issuer + TOKEN_PATH,
        "jwks_uri": cfg.issuer + JWKS_PATH,
        "revocation_endpoint": cfg.issuer + REVOKE_PATH,
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],  # no authorization endpoint: machine clients only
        "token_endpoint_auth_methods_supported": list(SUPPORTED_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": sorted(ASSERTION_ALGS),
        "revocation_endpoint_auth_methods_supported": list(SUPPORTED_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": sorted(ASSERTION_ALGS),
    }
    if cfg.bind_certificates:
        doc["tls_client_certificate_bound_access_tokens"] = True
    return doc


def token_server(services: Services) -> TokenServer:
    """The process's token server for the current `oauth2_server` config (rebuilt when a reload changes it)."""
    services.need("store")  # on every build, the cached path too: /readyz checks what this config uses
    cfg = services.config.oauth2_server if services.config is not None else None
    if cfg is None:
        raise ValueError("the OAuth2 handlers need an `oauth2_server:` section")
    server = services.shared.get(SHARED_KEY)
    if not isinstance(server, TokenServer) or server.cfg != cfg:
        server = services.shared[SHARED_KEY] = TokenServer(cfg, services)
    return server

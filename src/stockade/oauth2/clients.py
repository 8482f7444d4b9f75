"""OAuth2 clients: registration (secrets generated here, stored only as keyed hashes) and client authentication
at the token and revocation endpoints: client_secret_basic, client_secret_post and private_key_jwt (RFC 7523)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from stockade.security import jose
from stockade.security.jwk import has_secret_members
from stockade.security.jwks import JwksError, KeySet, parse_jwks
from stockade.security.keys import fingerprint, shown_id
from stockade.storage.base import NotFoundError
from stockade.storage.records import OAuthClient

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.storage.base import Store

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
SUPPORTED_METHODS = (*SECRET_METHODS, "private_key_jwt")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LEEWAY = 30  # seconds of clock skew allowed on a client assertion
ASSERTION_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 §3.3
_DUMMY_HASH = "0" * 64


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response. `error` is the registered code; `description` is safe to show."""

    def __init__(self, error: str, description: str, *, status: int = 400, log: str = "") -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.log = log or description  # for the decision log: may name the client, never a secret


def invalid_client(why: str) -> OAuthError:
    return OAuthError("invalid_client", "client authentication failed", status=401, log=why)


def check_scopes(scopes: list[str]) -> list[str]:
    bad = [s for s in scopes if not SCOPE_TOKEN.match(s)]
    if bad:
        raise ValueError(f"invalid scope(s) {bad}: scopes are printable ASCII without spaces, quotes or backslashes")
    return list(dict.fromkeys(scopes))


def new_client(
    *,
    name: str,
    scopes: list[str],
    auth_method: str,
    pepper: bytes,
    now: float,
    jwks: Mapping[str, Any] | None = None,
    consumer_id: str | None = None,
) -> tuple[OAuthClient, str | None]:
    """A client record and, for secret methods, its secret (shown once; only its keyed hash is kept)."""
    from stockade.security.keys import generate, hash_secret, new_id

    if auth_method not in SUPPORTED_METHODS:
        raise ValueError(f"auth method must be one of {', '.join(SUPPORTED_METHODS)}")
    if not name or len(name) > 128 or not name.isprintable():  # listings print it: no newlines, no escapes
        raise ValueError("client name must be 1-128 printable characters")
    secret: str | None = None
    secret_hash: str | None = None
    if jwks is not None and auth_method != "private_key_jwt":
        raise ValueError("a JWK Set is only for private_key_jwt clients")
    if auth_method in SECRET_METHODS:
        secret = generate("secret")  # stk_secret_...: 256 random bits, checksummed, recognisable by scanners
        secret_hash = hash_secret(pepper, secret)
    elif auth_method == "private_key_jwt":
        if jwks is None:
            raise ValueError("private_key_jwt needs the client's public JWK Set")
        entries = jwks.get("keys")
        if isinstance(entries, list) and any(isinstance(e, Mapping) and has_secret_members(e) for e in entries):
            # Stored as given: a private or symmetric key in it would let anyone who reads the store forge this
            # client's assertions (parse_jwks alone only skips such a key when another one is usable).
            raise ValueError("the client's JWK Set must hold public keys only (it has private or secret members)")
        keys = parse_jwks(jwks)  # skips unusable keys
        if not keys:
            raise ValueError("the client's JWK Set has no usable signing key")
    client = OAuthClient(
        client_id=new_id("cl"),
        name=name,
        auth_method=auth_method,
        created_at=now,
        allowed_scopes=tuple(check_scopes(scopes)),
        secret_hash=secret_hash,
        jwks=jwks,
        consumer_id=consumer_id,
    )
    return client, secret


@dataclass
class ClientAuthenticator:
    """Authenticates the client of a token or revocation request from its form and Authorization header."""

    store: Store
    pepper: bytes
    clock: Clock
    assertion_audiences: frozenset[str]  # the issuer and the token endpoint URL (RFC 7523 §3)
    assertion_max_lifetime: int

    async def authenticate(self, form: dict[str, str], authorization: str | None) -> OAuthClient:
        basic = authorization is not None and authorization[:6].lower() == "basic "
        used = [
            m
            for m, present in (("basic", basic), ("post", "client_secret" in form), ("jwt", "client_assertion" in form))
            if present
        ]
        if authorization is not None and not basic:
            raise OAuthError("invalid_request", "unsupported Authorization scheme")
        if len(used) != 1:
            raise OAuthError("invalid_request", "use exactly one client authentication method")
        if basic:
            assert authorization is not None  # noqa: S101 - narrowed by `basic`
            client_id, secret = _basic(authorization)
            if form.get("client_id", client_id) != client_id:
                raise OAuthError("invalid_request", "client_id differs from the authenticated client")
            return await self._secret_client(client_id, secret)
        if used == ["post"]:
            client_id = form.get("client_id", "")
            return await self._secret_client(client_id, form["client_secret"])
        return await self._assertion_client(form)

    async def _load(self, client_id: str) -> OAuthClient | None:
        if not client_id or len(client_id) > 128:
            return None
        try:
            client = await self.store.get_client(client_id)
        except NotFoundError:
            return None
        return None if client.disabled_at is not None else client

    async def _secret_client(self, client_id: str, secret: str) -> OAuthClient:
        from stockade.security.keys import verify_secret

        client = await self._load(client_id)
        stored = client.secret_hash if client is not None and client.auth_method in SECRET_METHODS else None
        ok = verify_secret(self.pepper, secret, stored or _DUMMY_HASH)  # same work whether or not the client exists
        if client is None or stored is None or not ok:
            # The client is told only "invalid_client"; the operator's log says which (no enumeration oracle).
            if client is None:
                why = "unknown or disabled"
            elif stored is None:
                why = f"authenticates with {client.auth_method}, not a secret"
            else:
                why = "wrong secret"
            raise invalid_client(f"client {shown_id(client_id)}: {why}")
        return client

    async def _assertion_client(self, form: dict[str, str]) -> OAuthClient:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        try:
            parsed = jose.parse(form["client_assertion"], max_bytes=8192)
        except jose.JoseError as exc:
            raise invalid_client(f"client assertion: {exc.code}: {exc.detail}") from None
        sub = parsed.claims.get("sub")
        client_id = sub if isinstance(sub, str) and sub.isprintable() and sub.isascii() else ""
        if form.get("client_id", client_id) != client_id:
            raise OAuthError("invalid_request", "client_id differs from the assertion's subject")
        client = await self._load(client_id)
        if client is None or client.auth_method != "private_key_jwt" or not client.jwks:
            raise invalid_client(f"client {shown_id(client_id)}: unknown, disabled or not private_key_jwt")
        policy = jose.IssuerPolicy(
            issuer=client_id,  # RFC 7523 §3: iss and sub are both the client_id
            audiences=self.assertion_audiences,
            algorithms=ASSERTION_ALGS,
            leeway=ASSERTION_LEEWAY,
            max_lifetime=self.assertion_max_lifetime,
        )
        now = self.clock.time()
        try:
            keys = KeySet(parse_jwks(client.jwks))
            _, exp = jose.verify(parsed, policy, keys.find, now)
        except (jose.JoseError, JwksError) as exc:
            code = getattr(exc, "code", "jwks.invalid")
            raise invalid_client(f"client {client_id!r} assertion: {code}: {exc}") from None
        jti = parsed.claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise invalid_client(f"client {client_id!r} assertion has no jti")
        # Single use across every worker and node sharing the store (RFC 7523 §3): a replay fails anywhere.
        key = "assertion:" + fingerprint(f"{client_id}\x00{jti}".encode()).hex()
        if not await self.store.use_once(key, expires_at=exp + ASSERTION_LEEWAY, now=now):
            raise invalid_client("client assertion replayed (jti already used)")
        return client


def _basic(authorization: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client("malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise invalid_client("malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)  # RFC 6749 §2.3.1: both are form-encoded first


async def disable_client(store: Store, client_id: str, *, actor: str, at: float) -> OAuthClient:
    """Disable a client (idempotent). Its tokens stop verifying through the `client` change on the feed."""
    client = await store.get_client(client_id)
    if client.disabled_at is None:
        client = dataclasses.replace(client, disabled_at=at)
        await store.update_client(client, actor=actor, at=at)
    return client

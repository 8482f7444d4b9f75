"""The `jwt` stage's configuration: issuers, their key sources, pinned algorithms and claim rules."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from stockade.pipeline.stage import StageConfig
from stockade.security.jose import MAX_LEEWAY, IssuerPolicy
from stockade.security.jwk import SYMMETRIC, Jwk, JwkError, parse_jwk, secret_key
from stockade.security.jwks import FetchPolicy, parse_jwks

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512"
]
_MIN_SECRET = {"HS256": 32, "HS384": 48, "HS512": 64}


class IssuerConfig(StageConfig):
    """One trusted issuer. Exactly one key source: `jwks_url`, `keys`/`keys_file`, `secret_env`, or `gateway`."""

    issuer: Annotated[str, Field(min_length=1, max_length=512)]
    audiences: Annotated[tuple[str, ...], Field(min_length=1)]
    algorithms: Annotated[tuple[Algorithm, ...], Field(min_length=1)] = ("RS256",)
    jwks_url: str | None = None
    keys: tuple[dict[str, Any], ...] | None = None  # public JWKs inline
    keys_file: str | None = None  # a JWKS document on disk (relative to the config file)
    secret_env: str | None = None  # environment variable holding the HS* shared secret (never in the file)
    # The `kid` tokens signed with that secret carry, if any: without it a token with a `kid` matches no key
    # (many IdPs put one in every header, Auth0 and Keycloak among them).
    secret_kid: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    gateway: bool = False  # this gateway's own `oauth2_server` issuer: local signing keys, no HTTP round trip
    leeway: Annotated[int, Field(ge=0, le=MAX_LEEWAY)] = 30
    max_lifetime: Annotated[int, Field(ge=60, le=31 * 86400)] = 86400
    require_iat: bool = False
    types: tuple[str, ...] = ()  # accepted `typ` header values, e.g. ["at+jwt"] (RFC 9068); empty: any
    roles_claim: str = "roles"  # dotted path, e.g. realm_access.roles
    allow_header_keys: tuple[Literal["jku", "x5u", "jwk", "x5c"], ...] = ()  # tolerated, never used to verify
    revocation: bool | None = None  # honour RFC 7009 revocation by jti (default: on for `gateway` issuers)
    cache_ttl: Annotated[float, Field(ge=10, le=86400)] = 300.0
    min_ttl: Annotated[float, Field(ge=10, le=86400)] = 60.0
    max_ttl: Annotated[float, Field(ge=10, le=7 * 86400)] = 86400.0
    refetch_interval: Annotated[float, Field(ge=1, le=3600)] = 60.0
    retry_interval: Annotated[float, Field(ge=1, le=3600)] = 30.0
    stale_if_error: Annotated[float, Field(ge=0, le=7 * 86400)] = 86400.0
    fetch_timeout: Annotated[float, Field(gt=0, le=30)] = 5.0
    max_jwks_bytes: Annotated[int, Field(ge=1024, le=4 * 1024 * 1024)] = 256 * 1024
    ca_file: str | None = None

    @field_validator("types")
    @classmethod
    def _types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.lower().removeprefix("application/") for t in v)

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("jwks_url must be an absolute http(s) URL")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError("jwks_url must use https (plain http is allowed only to a loopback address)")
        return v

    @model_validator(mode="after")
    def _sources(self) -> IssuerConfig:
        sources = [n for n in ("jwks_url", "keys", "keys_file", "secret_env") if getattr(self, n) is not None]
        sources += ["gateway"] if self.gateway else []
        if len(sources) != 1:
            raise ValueError(
                f"give exactly one key source (jwks_url, keys, keys_file, secret_env, gateway); got {sources}"
            )
        symmetric = SYMMETRIC.intersection(self.algorithms)
        if symmetric and self.secret_env is None:
            raise ValueError(f"{sorted(symmetric)} need a shared secret (`secret_env`)")
        if self.secret_env is not None and set(self.algorithms) - SYMMETRIC:
            raise ValueError("an issuer with a shared secret accepts only HS* algorithms (no HS/RS mixing)")
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl exceeds max_ttl")
        if self.secret_kid is not None and self.secret_env is None:
            raise ValueError("secret_kid names the kid of a shared secret: set `secret_env` too")
        return self

    def policy(self) -> IssuerPolicy:
        return IssuerPolicy(
            issuer=self.issuer,
            audiences=frozenset(self.audiences),
            algorithms=frozenset(self.algorithms),
            leeway=self.leeway,
            max_lifetime=self.max_lifetime,
            require_iat=self.require_iat,
            types=frozenset(self.types),
            allowed_header_params=frozenset(self.allow_header_keys),
        )

    def fetch_policy(self, base_dir: Path) -> FetchPolicy:
        return FetchPolicy(
            timeout=self.fetch_timeout,
            default_ttl=self.cache_ttl,
            min_ttl=self.min_ttl,
            max_ttl=self.max_ttl,
            refetch_interval=self.refetch_interval,
            retry_interval=self.retry_interval,
            stale_if_error=self.stale_if_error,
            max_bytes=self.max_jwks_bytes,
            ca_file=str(base_dir / self.ca_file) if self.ca_file else None,
        )

    def static_keys(self, base_dir: Path) -> list[Jwk]:
        """Keys from `keys`, `keys_file` or `secret_env`. Raises ValueError (reported as a config error)."""
        if self.secret_env is not None:
            secret = os.environ.get(self.secret_env, "").encode()
            need = max(_MIN_SECRET[a] for a in self.algorithms)
            if len(secret) < need:
                raise ValueError(f"secret in ${self.secret_env} is missing or shorter than {need} bytes")
            return [secret_key(secret, self.secret_kid)]
        if self.keys is not None:
            try:
                keys = [parse_jwk(k) for k in self.keys]
            except JwkError as exc:
                raise ValueError(f"issuer {self.issuer!r}: {exc}") from None
        else:
            import json

            path = base_dir / str(self.keys_file)
            keys = parse_jwks(json.loads(path.read_text(encoding="utf-8")), allow_private=False)
        usable = [k for k in keys if any(k.accepts(a) for a in self.algorithms)]
        if not usable:
            raise ValueError(f"issuer {self.issuer!r}: no key can verify {list(self.algorithms)}")
        return keys


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JwtConfig(StageConfig):
    issuers: Annotated[tuple[IssuerConfig, ...], Field(min_length=1)]
    cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000  # verified tokens kept (0 disables)
    max_token_bytes: Annotated[int, Field(ge=256, le=65536)] = 8192
    realm: Annotated[str, Field(pattern=r'^[^"\\\x00-\x1f]{1,64}$')] = "stockade"

    @field_validator("issuers")
    @classmethod
    def _unique(cls, v: tuple[IssuerConfig, ...]) -> tuple[IssuerConfig, ...]:
        names = [i.issuer for i in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"issuer(s) listed twice: {sorted(dup)}")
        return v

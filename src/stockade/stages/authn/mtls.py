"""`mtls`: the principal from a client certificate the TLS listener verified (subject CN or a SAN)."""

from __future__ import annotations

import hashlib
import math
import ssl
from typing import Any, ClassVar, Literal

from pydantic import Field

from stockade.config.models import GatewayConfig
from stockade.pipeline.context import AUTH_IDENTITY, RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.security.jwk import thumbprint_sha256

_NO_CERT = Skip("no verified client certificate")
_SAN_TYPES = {"san_dns": "DNS", "san_uri": "URI", "san_email": "email"}


class MtlsConfig(StageConfig):
    principal_from: Literal["subject_cn", "san_dns", "san_uri", "san_email"] = "subject_cn"
    allowed: tuple[str, ...] = ()  # if set, only these identities are accepted
    scopes: tuple[str, ...] = ()  # granted to every certificate this stage accepts
    roles: tuple[str, ...] = ()
    realm: str = Field(default="stockade", pattern=r'^[^"\\\x00-\x1f]{1,64}$')


class MtlsAuthenticator:
    """Reads `ctx.peer_cert`, which the listener sets only for a certificate that chained to `tls.client_ca`."""

    id: ClassVar[str] = "mtls"
    phase: ClassVar[Phase] = Phase.AUTHENTICATE
    Config: ClassVar[type[StageConfig]] = MtlsConfig

    def __init__(self, config: MtlsConfig, env: StageEnv) -> None:
        self._from = config.principal_from
        kind = _SAN_TYPES.get(config.principal_from)
        self._allowed = frozenset(_normalised(kind, a) if kind else a for a in config.allowed)
        self._scopes = frozenset(config.scopes)
        self._roles = frozenset(config.roles)
        self.challenge = f'Mutual realm="{config.realm}"'
        self._periods: dict[bytes, tuple[float, float]] = {}  # notBefore/notAfter by certificate (DER)

    @classmethod
    def check_deployment(cls, config: MtlsConfig, gateway: GatewayConfig) -> list[str]:
        tls = gateway.listen.tls
        if tls is None or tls.client_ca is None or tls.client_auth == "none":
            return ["mtls needs `listen.tls` with `client_ca` and `client_auth: optional|required`"]
        return []

    async def check(self, ctx: RequestContext) -> Continue | Skip | Deny:
        cert = ctx.peer_cert
        der = ctx.peer_cert_der
        if cert is None or der is None:
            return _NO_CERT
        # The handshake checked the validity period, but a resumed TLS session (up to two hours later) and a
        # long keep-alive connection do not repeat it: without revocation checking, expiry is the only end a
        # certificate has, so it is checked on every request.
        not_before, not_after = self._validity(der, cert)
        now = ctx.clock.time()
        if not not_before <= now <= not_after:
            return Deny(401, "auth.invalid_certificate", detail="client certificate expired or not yet valid")
        try:
            identity = self._identity(cert)
        except ValueError as exc:
            return Deny(401, "auth.invalid_certificate", detail=str(exc))
        if identity is None:
            return Deny(401, "auth.invalid_certificate", detail=f"certificate has no {self._from}")
        if self._allowed and identity not in self._allowed:
            return Deny(401, "auth.invalid_certificate", detail=f"{self._from} {identity!r} is not allowed")
        # Per field: `CN=spiffe://td/alice` on a subject_cn route is not the workload with that SAN URI.
        ctx.state[AUTH_IDENTITY] = hashlib.sha256(f"mtls\x00{self._from}\x00{identity}".encode()).hexdigest()[:32]
        principal = Principal(
            id=identity,
            kind="mtls",
            scopes=self._scopes,
            roles=self._roles,
            credential_id=thumbprint_sha256(der),
        )
        return Continue(principal=principal)

    def _validity(self, der: bytes, cert: dict[str, Any]) -> tuple[float, float]:
        hit = self._periods.get(der)
        if hit is None:
            try:
                hit = (ssl.cert_time_to_seconds(cert["notBefore"]), ssl.cert_time_to_seconds(cert["notAfter"]))
            except (KeyError, ValueError):
                hit = (math.inf, -math.inf)  # an unreadable period is never valid
            if len(self._periods) >= 4096:
                self._periods.clear()
            self._periods[der] = hit
        return hit

    def _identity(self, cert: dict[str, Any]) -> str | None:
        """The identity named by `principal_from`, normalised as the name type compares (DNS names and email
        domains ignore case and a DNS name's trailing dot). ValueError for a name that cannot be one identity:
        several CNs (software disagrees on which counts: Go's takes the last) or a wildcard DNS name."""
        if self._from == "subject_cn":
            names = [v for rdn in cert.get("subject", ()) for n, v in rdn if n == "commonName" and isinstance(v, str)]
            if len(names) > 1:
                raise ValueError("certificate has several subject CNs")
            return names[0] if names and names[0] else None
        kind = _SAN_TYPES[self._from]
        for san_type, value in cert.get("subjectAltName", ()):
            if san_type == kind and isinstance(value, str) and value:
                return _normalised(kind, value)
        return None


def _normalised(kind: str, value: str) -> str:
    if kind == "DNS":
        if value.startswith("*"):
            raise ValueError("a wildcard DNS name is not an identity")
        return value.rstrip(".").lower()
    if kind == "email":
        local, at, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}" if at else value
    return value


_: type[Stage] = MtlsAuthenticator

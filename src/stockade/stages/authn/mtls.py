"""`mtls`: the principal from a client certificate the TLS listener verified (subject CN or a SAN)."""

from __future__ import annotations

import hashlib
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
        self._allowed = frozenset(config.allowed)
        self._scopes = frozenset(config.scopes)
        self._roles = frozenset(config.roles)
        self.challenge = f'Mutual realm="{config.realm}"'

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
        identity = self._identity(cert)
        if identity is None:
            return Deny(401, "auth.invalid_certificate", detail=f"certificate has no {self._from}")
        if self._allowed and identity not in self._allowed:
            return Deny(401, "auth.invalid_certificate", detail=f"{self._from} {identity!r} is not allowed")
        ctx.state[AUTH_IDENTITY] = hashlib.sha256(f"mtls\x00{identity}".encode()).hexdigest()[:32]
        principal = Principal(
            id=identity,
            kind="mtls",
            scopes=self._scopes,
            roles=self._roles,
            credential_id=thumbprint_sha256(der),
        )
        return Continue(principal=principal)

    def _identity(self, cert: dict[str, Any]) -> str | None:
        if self._from == "subject_cn":
            for rdn in cert.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName" and isinstance(value, str) and value:
                        return value
            return None
        kind = _SAN_TYPES[self._from]
        for san_type, value in cert.get("subjectAltName", ()):
            if san_type == kind and isinstance(value, str) and value:
                return value
        return None


_: type[Stage] = MtlsAuthenticator

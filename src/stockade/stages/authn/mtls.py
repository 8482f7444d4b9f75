"""`mtls`: the principal from a client certificate the TLS listener verified (subject CN or a SAN)."""

from __future__ import annotations

import hashlib
import math
import re
import ssl
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from pydantic import Field

from stockade.config.models import GatewayConfig
from stockade.pipeline.context import AUTH_IDENTITY, RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.principal import Principal
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import Continue, Deny, Skip
from stockade.security.jwk import thumbprint_sha256

if TYPE_CHECKING:
    from cryptography import x509

_NO_CERT = Skip("no verified client certificate")
_SAN_TYPES = {"san_dns": "DNS", "san_uri": "URI", "san_email": "email"}


class MtlsConfig(StageConfig):
    principal_from: Literal["subject_cn", "san_dns", "san_uri", "san_email"] = "subject_cn"
    # CA certificate files (PEM): if set, only a certificate one of them issued directly is accepted here, not
    # every CA of `listen.tls.client_ca` (Kong's mtls-auth `ca_certificates`, per route).
    issuers: tuple[str, ...] = ()
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
        self._issuers = _load_issuers(config.issuers, env.base_dir)
        self._seen: dict[bytes, _Seen] = {}  # what each certificate (DER) was found to be, worked out once

    @classmethod
    def check_deployment(cls, config: MtlsConfig, gateway: GatewayConfig) -> list[str]:
        tls = gateway.listen.tls
        if tls is None or tls.client_ca is None or tls.client_auth == "none":
            return ["mtls needs `listen.tls` with `client_ca` and `client_auth: optional|required`"]
        return []

    def check(self, ctx: RequestContext) -> Continue | Skip | Deny:
        cert = ctx.peer_cert
        der = ctx.peer_cert_der
        if cert is None or der is None:
            return _NO_CERT
        # The handshake checked the validity period, but a resumed TLS session (up to two hours later) and a
        # long keep-alive connection do not repeat it: without revocation checking, expiry is the only end a
        # certificate has, so it is checked on every request.
        seen = self._seen.get(der)
        if seen is None:
            seen = self._examine(der, cert)
        now = ctx.clock.time()
        if not seen.not_before <= now <= seen.not_after:
            return Deny(401, "auth.invalid_certificate", detail="client certificate expired or not yet valid")
        if seen.issuer is None:
            detail = (
                f"certificate issued by {seen.dn!r}, not by one of this stage's issuers"
                if seen.readable
                else f"certificate issued by {seen.dn!r} cannot be read to check it against this stage's issuers"
            )
            return Deny(401, "auth.invalid_certificate", detail=detail)
        try:
            identity = self._identity(cert)
        except ValueError as exc:
            return Deny(401, "auth.invalid_certificate", detail=str(exc))
        if identity is None:
            return Deny(401, "auth.invalid_certificate", detail=f"certificate has no {self._from}")
        if self._allowed and identity not in self._allowed:
            return Deny(401, "auth.invalid_certificate", detail=f"{self._from} {identity!r} is not allowed")
        # Per issuer: `admin` of a partner's CA is not our `admin`. Per field: `CN=spiffe://td/alice` on a
        # subject_cn route is not the workload with that SAN URI.
        key = f"mtls\x00{seen.issuer}\x00{self._from}\x00{identity}"
        ctx.state[AUTH_IDENTITY] = hashlib.sha256(key.encode()).hexdigest()[:32]
        principal = Principal(
            id=identity,
            kind="mtls",
            scopes=self._scopes,
            roles=self._roles,
            credential_id=seen.thumbprint,
            issuer=seen.dn,
        )
        return Continue(principal=principal)

    def _examine(self, der: bytes, cert: dict[str, Any]) -> _Seen:
        """The certificate's validity period, its issuer's name, and (with `issuers`) which of them issued it."""
        from cryptography import x509
        from cryptography.utils import CryptographyDeprecationWarning

        period: tuple[float, float]
        try:
            period = (ssl.cert_time_to_seconds(cert["notBefore"]), ssl.cert_time_to_seconds(cert["notAfter"]))
        except (KeyError, ValueError):
            period = (math.inf, -math.inf)  # an unreadable period is never valid
        try:
            with warnings.catch_warnings():  # a negative serial number: OpenSSL accepted it, nothing to say
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                leaf: x509.Certificate | None = x509.load_der_x509_certificate(der)
        except ValueError:
            leaf = None  # OpenSSL verified it, but cryptography cannot read it (a name encoding it is strict about)
        dn = leaf.issuer.rfc4514_string() if leaf is not None else _rfc4514(cert.get("issuer", ()))
        issuer: str | None = dn
        if self._issuers:
            issuer = None
            for fingerprint, ca in self._issuers:
                if leaf is not None and _issued_by(leaf, ca):
                    issuer = fingerprint  # the CA itself, not only its name
                    break
        seen = _Seen(period[0], period[1], dn, issuer, thumbprint_sha256(der), leaf is not None)
        if len(self._seen) >= 4096:
            self._seen.clear()
        self._seen[der] = seen
        return seen

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
        values = [v for t, v in cert.get("subjectAltName", ()) if t == kind and isinstance(v, str) and v]
        if len(values) > 1:
            # As with CNs: which one counts is a guess, and a CA approving one name may not have meant the other.
            raise ValueError(f"certificate has several {kind} SANs")
        return _normalised(kind, values[0]) if values else None


class _Seen(NamedTuple):
    not_before: float
    not_after: float
    dn: str  # the issuer's name (RFC 4514): what the upstream is told (x-stockade-issuer)
    issuer: str | None  # what identities are qualified by; None: not issued by one of the stage's `issuers`
    thumbprint: str
    readable: bool  # cryptography could read it (else the names are as OpenSSL read them, and `issuers` cannot
    # be checked)


_RFC4514_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rfc4514(rdns: Any) -> str:
    """A name as `getpeercert()` gives it (RDNs in certificate order), as RFC 4514 writes it (reversed, escaped),
    for a certificate cryptography cannot read."""
    out = []
    for rdn in reversed(tuple(rdns)):
        parts = []
        for name, value in rdn:
            text = re.sub(r'([,+"\\<>;])', r"\\\1", str(value)).replace("\x00", "\\00")
            if text[:1] in ("#", " "):
                text = "\\" + text
            if text.endswith(" "):
                text = text[:-1] + "\\ "
            parts.append(f"{_RFC4514_NAMES.get(name, name)}={text}")
        out.append("+".join(parts))
    return ",".join(out)


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _load_issuers(files: tuple[str, ...], base_dir: Path) -> tuple[tuple[str, x509.Certificate], ...]:
    """(SHA-256 fingerprint, certificate) of every CA the files hold, read once at load. ValueError names the
    entry: a missing file, one without CA certificates, or two CAs with the same name (the upstream, told the
    name, could not tell them apart)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    out: list[tuple[str, x509.Certificate]] = []
    names: dict[x509.Name, tuple[str, Path]] = {}
    for i, name in enumerate(files):
        path = base_dir / Path(name).expanduser()
        where = f"field 'config.issuers[{i}]'"
        if not path.is_file():
            raise ValueError(f"{where}: no such file: {path}")
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
        except ValueError:
            raise ValueError(f"{where}: no PEM certificate in {path}") from None
        for cert in certs:
            try:
                ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                ca = False
            if not ca:
                raise ValueError(f"{where}: {path} holds {cert.subject.rfc4514_string()!r}, not a CA certificate")
            fingerprint = cert.fingerprint(hashes.SHA256()).hex()
            known = names.get(cert.subject)
            if known is not None and known[0] != fingerprint:
                dn = cert.subject.rfc4514_string()
                raise ValueError(f"{where}: {path} names a CA with the same subject as one in {known[1]} ({dn})")
            if known is None:
                names[cert.subject] = (fingerprint, path)
                out.append((fingerprint, cert))
    return tuple(out)


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

"""Test PKI and TLS clients: a CA, server and client certificates generated into a directory, and helpers that
speak HTTPS to a gateway with exactly the protocol versions, ciphers, groups and certificates a test wants."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.clock import SYSTEM_CLOCK
from stockade.testing import read_responses

KeyType = Literal["rsa", "ec", "rsa-1024", "ec-p521", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk."""

    cert: Path
    key: Path
    der: bytes


def _new_key(kind: KeyType) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=1024 if kind == "rsa-1024" else 2048)


def _write_key(key: PrivateKey, path: Path, password: bytes | None = None) -> None:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    path.chmod(0o600)  # as a deployment keeps it (a key others can read draws a config warning)


def _now() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(SYSTEM_CLOCK.time(), datetime.UTC)


class TestCA:
    """A throw-away certificate authority (RSA-2048, SHA-256) writing PEM files into `directory`."""

    __test__ = False

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = directory
        self.name = name
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Stockade Test CA {name}")])
        now = _now()
        self.subject = subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        *,
        key_type: KeyType = "rsa",
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        client: bool = False,
        days: int = 90,
        password: bytes | None = None,
        file: str | None = None,
    ) -> Issued:
        """A leaf certificate for `hosts` (DNS names or IP addresses), for a server or (client=True) a client,
        valid until `days` from now (negative: expired). Written to `file`.crt/.key (default: `name`)."""
        key = _new_key(key_type)
        now = _now()
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now, now + datetime.timedelta(days=days)) - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.dir / f"{file or name}.crt"
        key_path = self.dir / f"{file or name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path, password)
        return Issued(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


def client_context(
    ca: Path,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    curve: str | None = None,
    cert: Issued | None = None,
) -> ssl.SSLContext:
    """A client context trusting `ca`. `curve` limits the key-exchange groups the client offers to that one
    (CPython's set_ecdh_curve calls SSL_CTX_set1_groups with one group on OpenSSL 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: offering them is the point of some tests
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def tls_connect(
    port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost", *, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    """Connect and complete the handshake (raises ssl.SSLError if the gateway refuses it); `session` resumes."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise


def https_get(
    sock: ssl.SSLSocket, target: str = "/", *, close: bool = False, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET on an open TLS connection (keep-alive unless `close`)."""
    hdrs = {"Host": "localhost", **(headers or {})}
    if close:
        hdrs["Connection"] = "close"
    raw = f"GET {target} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in hdrs.items())
    sock.sendall(raw + b"\r\n")
    responses = read_responses(sock, 1)
    assert responses, "the gateway closed the connection without a response"
    return responses[0]


def try_get(
    port: int, ctx: ssl.SSLContext, server_hostname: str = "localhost", *, session: ssl.SSLSession | None = None
) -> int | None:
    """Handshake and one GET; the status, or None if the gateway refused the handshake.

    With TLS 1.3 a client finishes its side of the handshake before the server has checked the client's
    certificate, so a refusal can also surface as an error or a close on the first read."""
    try:
        with tls_connect(port, ctx, server_hostname, session=session) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            responses = read_responses(sock, 1)
    except (ssl.SSLError, ConnectionError):
        return None
    return responses[0][0] if responses else None


def handshake_in_memory(client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str = "localhost") -> str:
    """Run a handshake between two contexts over memory BIOs; the negotiated version, or raises ssl.SSLError.

    The control in negative tests: it shows a client really offers what the gateway then refuses."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if done["c"] and done["s"]:
            version = c.version()
            assert version is not None
            return version
    raise AssertionError("handshake did not finish")


# RFC 7919 ffdhe2048, for control servers that must be able to accept DHE suites.
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def permissive_server(issued: Issued, directory: Path) -> ssl.SSLContext:
    """A server that accepts everything this OpenSSL can still do (TLS 1.0+, every cipher including NULL
    encryption, every group, DHE). This machine's OpenSSL has no 3DES, so no test can offer 3DES."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    ctx.load_cert_chain(issued.cert, issued.key)
    dh = directory / "ffdhe2048.pem"
    dh.write_bytes(FFDHE2048_PEM)
    ctx.load_dh_params(str(dh))
    return ctx


@dataclass(frozen=True)
class Pki:
    """Everything the TLS tests need, in one directory."""

    dir: Path
    ca: TestCA
    other_ca: TestCA
    rsa: Issued  # server certificate for localhost and 127.0.0.1, RSA-2048
    ec: Issued  # the same, ECDSA P-256
    client: Issued  # client certificate issued by `ca`
    rogue_client: Issued  # client certificate issued by `other_ca`


def make_pki(directory: Path) -> Pki:
    ca = TestCA(directory, "ca")
    other = TestCA(directory, "other-ca")
    return Pki(
        dir=directory,
        ca=ca,
        other_ca=other,
        rsa=ca.issue("server-rsa"),
        ec=ca.issue("server-ec", key_type="ec"),
        client=ca.issue("client", client=True, hosts=()),
        rogue_client=other.issue("rogue-client", client=True, hosts=()),
    )


def listener_yaml(cert: Issued, *, tls_extra: str = "", routes: str | None = None, extra: str = "") -> str:
    """A gateway config with TLS on the listener; by default one route answering 200 "hi" from the gateway."""
    if routes is None:
        routes = """
  - id: hello
    match: {path: /**}
    handler: {use: static, config: {status: 200, content_type: text/plain, body: hi}}
    stages: [{use: anonymous}]
"""
    tls = f"{{cert: '{cert.cert}', key: '{cert.key}'{', ' + tls_extra if tls_extra else ''}}}"
    return f"listen: {{tls: {tls}}}\n{extra}routes:{routes}"

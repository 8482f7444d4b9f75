"""What the upstream receives and what the client gets back: headers, bodies, framing, keep-alive."""

from __future__ import annotations

import re
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest

from stockade.proxy.exchange import Exchange
from stockade.testing import Reply, TestGateway, TestUpstream, read_responses
from tests.conftest import GatewayFactory
from tests.proxy.helpers import closed, echo, exchange, wait_for


def test_request_reaches_upstream_with_forwarding_headers(gateway: TestGateway, upstream: TestUpstream) -> None:
    status, _, _ = gateway.request("GET", "/api/books?q=1", headers={"X-Custom": "yes"})
    assert status == 200
    got = upstream.received[0]
    assert got.target == "/api/books?q=1"
    assert got.header("host") == f"127.0.0.1:{upstream.port}"
    assert got.header("x-custom") == "yes"
    assert got.header("x-forwarded-for") == "127.0.0.1"
    assert got.header("x-forwarded-proto") == "http"
    assert got.header("x-forwarded-host") == "localhost"
    assert got.header("x-stockade-principal") == "anonymous"
    assert got.header("x-stockade-anonymous") == "true"
    assert got.header("x-request-id")


@pytest.mark.parametrize(
    "hosts",
    [["a.example", "a.example", "b.example", "a.example"], ["x", "x:8080", "X", "x"]],
    ids=["switch-back", "port-and-case"],
)
def test_each_request_on_a_connection_forwards_its_own_host(
    gateway: TestGateway, upstream: TestUpstream, hosts: list[str]
) -> None:
    """The connection keeps the X-Forwarded-Host lines of the last Host value: another value must not reuse them."""
    with gateway.connect() as sock:
        for host in hosts:
            sock.sendall(f"GET /api/h HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert read_responses(sock, 1)[0][0] == 200
    assert [r.header("x-forwarded-host") for r in upstream.received] == hosts


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"v", "v"), (b"v ", "v"), (b"v\t", "v"), (b"v \t \t", "v"), (b"a b ", "a b"), (b"a\tb\t", "a\tb"), (b" \t", "")],
    ids=["none", "space", "tab", "mixed", "inner-space-kept", "inner-tab-kept", "only-whitespace"],
)
def test_trailing_whitespace_of_a_header_value_is_not_forwarded(
    gateway: TestGateway, upstream: TestUpstream, value: bytes, expected: str
) -> None:
    """llhttp hands trailing SP/HTAB on (RFC 9110 5.5: not part of the value): the gateway cuts it, Host's too."""
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/ows HTTP/1.1\r\nHost: localhost \t\r\nX-Custom: " + value + b"\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 200
    got = upstream.received[-1]
    assert (got.header("x-custom"), got.header("x-forwarded-host")) == (expected, "localhost")


REQUEST_HOP_BY_HOP = [
    ("connection-named", {"Connection": "X-Secret, keep-alive", "X-Secret": "s"}, "x-secret"),
    ("keep-alive", {"Keep-Alive": "timeout=5"}, "keep-alive"),
    ("te", {"TE": "trailers"}, "te"),
    ("trailer", {"Trailer": "X-T"}, "trailer"),
    ("proxy-authorization", {"Proxy-Authorization": "Basic eDp5"}, "proxy-authorization"),
    ("proxy-connection", {"Proxy-Connection": "keep-alive"}, "proxy-connection"),
    ("upgrade-h2c", {"Upgrade": "h2c", "HTTP2-Settings": "AAA"}, "http2-settings"),
    ("identity-spoof", {"X-Stockade-Principal": "admin"}, "x-stockade-principal-spoof"),
    ("identity-spoof-case", {"x-STOCKADE-roles": "admin"}, "x-stockade-roles"),
    # CGI/WSGI servers read an underscore spelling as the dashed one (HTTP_X_STOCKADE_PRINCIPAL)
    ("identity-spoof-underscore", {"X_Stockade_Principal": "admin"}, "x_stockade_principal"),
    ("identity-spoof-mixed", {"X-Stockade_Roles": "admin"}, "x-stockade_roles"),
    ("xff-underscore", {"X_Forwarded_For": "10.0.0.1"}, "x_forwarded_for"),
    ("request-id-underscore", {"X_Request_Id": "forged"}, "x_request_id"),
    ("real-ip-underscore", {"X_Real_IP": "10.0.0.1"}, "x_real_ip"),
    # a GET that method-override middleware would run as DELETE must not pass as the GET it was routed as
    ("method-override", {"X-HTTP-Method-Override": "DELETE"}, "x-http-method-override"),
    ("method-override-short", {"X-HTTP-Method": "DELETE"}, "x-http-method"),
    ("method-override-other", {"X-Method-Override": "PUT"}, "x-method-override"),
    ("method-override-underscore", {"X_HTTP_Method_Override": "DELETE"}, "x_http_method_override"),
    # a GET /public that URL-override handling (older Symfony/Zend, IIS URL Rewrite) would serve as /admin
    ("url-override", {"X-Original-URL": "/admin/x"}, "x-original-url"),
    ("url-override-rewrite", {"X-Rewrite-URL": "/admin/x"}, "x-rewrite-url"),
    ("url-override-uri", {"X-Original-URI": "/admin/x"}, "x-original-uri"),
    ("url-override-underscore", {"X_Original_URL": "/admin/x"}, "x_original_url"),
    # gunicorn cuts a trusted forwarder's SCRIPT_NAME off the path (GET /x/admin + SCRIPT_NAME: /x runs /admin),
    # and takes PATH_INFO the same way; Flask's ReverseProxied recipe reads X-Script-Name
    ("script-name-gunicorn", {"SCRIPT_NAME": "/x"}, "script_name"),
    ("script-name-case", {"Script_Name": "/x"}, "script_name"),
    ("path-info-gunicorn", {"PATH_INFO": "/admin/x"}, "path_info"),
    ("script-name-dashed", {"Script-Name": "/x"}, "script-name"),
    ("x-script-name", {"X-Script-Name": "/x"}, "x-script-name"),
    ("x-script-name-underscore", {"X_Script_Name": "/x"}, "x_script_name"),
    # what a TLS terminator says the client proved: only the gateway knows, so only a trusted proxy may say it
    ("xfcc", {"X-Forwarded-Client-Cert": 'Subject="CN=admin"'}, "x-forwarded-client-cert"),
    ("rfc9440-cert", {"Client-Cert": ":MIIB:"}, "client-cert"),
    ("rfc9440-chain", {"Client-Cert-Chain": ":MIIB:"}, "client-cert-chain"),
    ("nginx-verify", {"X-SSL-Client-Verify": "SUCCESS"}, "x-ssl-client-verify"),
    ("nginx-dn", {"X-SSL-Client-S-DN": "CN=admin"}, "x-ssl-client-s-dn"),
    ("arr", {"X-ARR-ClientCert": "MIIB"}, "x-arr-clientcert"),
    ("alb", {"X-Amzn-Mtls-Clientcert": "MIIB"}, "x-amzn-mtls-clientcert"),
    ("traefik", {"X-Forwarded-Tls-Client-Cert": "MIIB"}, "x-forwarded-tls-client-cert"),
    ("cert-underscore", {"X_SSL_Client_Verify": "SUCCESS"}, "x_ssl_client_verify"),
    # Cloudflare's mTLS headers, and the names nginx/HAProxy/Apache snippets set by hand
    ("cloudflare-sha256", {"Cf-Client-Cert-Sha256": "ab12"}, "cf-client-cert-sha256"),
    ("cloudflare-der", {"Cf-Client-Cert-Der-Base64": "MIIB"}, "cf-client-cert-der-base64"),
    ("x-ssl", {"X-SSL": "1"}, "x-ssl"),
    ("x-ssl-issuer", {"X-SSL-Issuer": "CN=ca"}, "x-ssl-issuer"),
    ("x-ssl-subject", {"X-SSL-Subject": "CN=admin"}, "x-ssl-subject"),
    ("x-ssl-verified", {"X-SSL-Verified": "SUCCESS"}, "x-ssl-verified"),
    ("x-ssl-cn", {"X-SSL-CN": "admin"}, "x-ssl-cn"),
    ("x-client-cn", {"X-Client-CN": "admin"}, "x-client-cn"),
    ("x-client-s-dn", {"X-Client-S-DN": "CN=admin"}, "x-client-s-dn"),
    ("x-client-subject", {"X-Client-Subject": "CN=admin"}, "x-client-subject"),
    ("x-tls-client-cert", {"X-Tls-Client-Cert": "MIIB"}, "x-tls-client-cert"),
    ("x-mtls", {"X-Mtls-Client-Cert": "MIIB"}, "x-mtls-client-cert"),
    ("x-ssl-cn-underscore", {"X_SSL_CN": "admin"}, "x_ssl_cn"),
    # the `-certificate` spellings of the same headers (a bare `cert` prefix used to take them)
    ("x-client-certificate", {"X-Client-Certificate": "MIIB"}, "x-client-certificate"),
    ("x-client-certificate-dn", {"X-Client-Certificate-DN": "CN=admin"}, "x-client-certificate-dn"),
    ("x-ssl-certificate", {"X-SSL-Certificate": "MIIB"}, "x-ssl-certificate"),
    ("x-ssl-clientcert", {"X-SSL-ClientCert": "MIIB"}, "x-ssl-clientcert"),
    ("x-tls-client-certificate", {"X-TLS-Client-Certificate": "MIIB"}, "x-tls-client-certificate"),
    ("client-certificate", {"Client-Certificate": "MIIB"}, "client-certificate"),
    ("x-client-certificate-underscore", {"X_Client_Certificate": "MIIB"}, "x_client_certificate"),
    ("expect", {"Expect": "100-continue"}, "expect"),
]


@pytest.mark.parametrize(
    ("sent", "absent"), [c[1:] for c in REQUEST_HOP_BY_HOP], ids=[c[0] for c in REQUEST_HOP_BY_HOP]
)
def test_hop_by_hop_and_spoofed_headers_are_not_forwarded(
    gateway: TestGateway, upstream: TestUpstream, sent: dict[str, str], absent: str
) -> None:
    status, _, _ = gateway.request("GET", "/api/x", headers=sent)
    assert status == 200
    got = {k.lower(): v for k, v in upstream.received[0].headers}
    assert absent not in got
    assert "connection" not in got and "upgrade" not in got
    if "X-Stockade-Principal" in sent:
        assert got["x-stockade-principal"] == "anonymous"
    if "x-STOCKADE-roles" in sent:
        assert "x-stockade-roles" not in got


@pytest.mark.parametrize(
    "name",
    [
        "X-Client-CNAME",
        "X-Client-Dns-Cache",
        "X-SSL-Protocol",
    ],
)
def test_names_that_only_begin_like_a_client_certificate_header_are_forwarded(
    gateway: TestGateway, upstream: TestUpstream, name: str
) -> None:
    """Client-certificate names are matched whole or before a `-`: `x-client-cn` took X-Client-CNAME too."""
    status, _, _ = gateway.request("GET", "/api/x", headers={name: "v"})
    assert status == 200
    got = {k.lower(): v for k, v in upstream.received[0].headers}
    assert got.get(name.lower()) == "v"


def test_underscore_names_the_gateway_does_not_own_are_forwarded(gateway: TestGateway, upstream: TestUpstream) -> None:
    status, _, _ = gateway.request("GET", "/api/x", headers={"X_Tenant_Id": "t1"})
    assert status == 200
    got = {k.lower(): v for k, v in upstream.received[0].headers}
    assert got["x_tenant_id"] == "t1"


def test_spoofed_x_forwarded_headers_from_untrusted_peer_are_replaced(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    spoof = {
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "bank.example",
        "X-Real-IP": "1.2.3.4",
        "Forwarded": "for=1.2.3.4",
    }
    gateway.request("GET", "/api/x", headers=spoof)
    got = upstream.received[0]
    assert got.header_all("x-forwarded-for") == ["127.0.0.1"]
    assert got.header("x-forwarded-proto") == "http"
    assert got.header("x-forwarded-host") == "localhost"
    assert got.header("x-real-ip") is None
    assert got.header("forwarded") is None


TRUSTED = """
trusted_proxies: ["127.0.0.0/8"]
routes:
  - id: api
    match: {path: "/api/**"}
    upstream: {upstream}
    stages:
      - use: ip_filter
        config: {deny: ["203.0.113.0/24"]}
      - use: anonymous
"""


@pytest.mark.parametrize(
    ("sent", "xfh", "forwarded"),
    [
        ({"X-Forwarded-Host": "WWW.example.com:443"}, "WWW.example.com:443", None),  # the same host: kept as sent
        ({"X-Forwarded-Host": "admin.example.com"}, "www.example.com", None),  # another host: the routed one
        ({"X-Forwarded-Host": "admin.example.com, www.example.com"}, "www.example.com", None),
        ({"Forwarded": "for=198.51.100.7;host=admin.example.com"}, "www.example.com", None),
        (
            {"Forwarded": 'for=198.51.100.7;Host="www.example.com"'},
            "www.example.com",
            'for=198.51.100.7;Host="www.example.com"',
        ),
        ({"Forwarded": "for=198.51.100.7;proto=https"}, "www.example.com", "for=198.51.100.7;proto=https"),
    ],
    ids=["same-host", "other-host", "list", "forwarded-other-host", "forwarded-same-host", "forwarded-no-host"],
)
def test_a_trusted_proxy_cannot_name_another_host_than_the_one_routed(
    make_gateway: GatewayFactory, upstream: TestUpstream, sent: dict[str, str], xfh: str, forwarded: str | None
) -> None:
    """A proxy that passes the client's X-Forwarded-Host through (an AWS ALB does) let it pick the virtual host a
    Django or Express app serves while the gateway applied the routes of the Host header's."""
    admin_host = (
        "  - id: admin\n    match: {path: /**, host: admin.example.com}\n    upstream: {upstream}\n"
        "    stages: [{use: ip_filter, config: {deny: [0.0.0.0/0]}}, {use: anonymous}]\n"
    )
    gw = make_gateway(TRUSTED + admin_host)
    assert gw.request("GET", "/api/x", headers={"Host": "www.example.com", **sent})[0] == 200
    got = upstream.received[-1]
    assert (got.header_all("x-forwarded-host"), got.header("forwarded")) == ([xfh], forwarded)


# What a proxy says about the client's address, scheme, port or prefix, in the spellings applications read: gunicorn
# takes X-Forwarded-Ssl / -Protocol from 127.0.0.1 (the gateway) as the scheme, Rack prefers X-Forwarded-Ssl: on to
# X-Forwarded-Proto, and many frameworks take the client's address from one of the *-IP names.
CLIENT_METADATA = [
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Protocol", "https"),
    ("X-Forwarded-Server", "admin.internal"),
    ("X-Forwarded-Uri", "/admin/x"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Forwarded-Anything-New", "1"),
    ("x-FORWARDED-ssl", "on"),
    ("Front-End-Https", "on"),
    ("X-Url-Scheme", "https"),
    ("X-Client-IP", "10.1.2.3"),
    ("True-Client-IP", "10.1.2.3"),
    ("CF-Connecting-IP", "10.1.2.3"),
    ("X-Cluster-Client-IP", "10.1.2.3"),
    ("Client-IP", "10.1.2.3"),
    ("X-Real-IP", "10.1.2.3"),
    ("Fastly-Client-IP", "10.1.2.3"),
    ("X-Original-Forwarded-For", "10.1.2.3"),
]


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-peer", "trusted-proxy"])
@pytest.mark.parametrize(("name", "value"), CLIENT_METADATA, ids=[n for n, _ in CLIENT_METADATA])
def test_client_address_and_scheme_headers_pass_only_from_a_trusted_proxy(
    make_gateway: GatewayFactory, upstream: TestUpstream, name: str, value: str, trusted: bool
) -> None:
    gw = make_gateway(TRUSTED if trusted else TRUSTED.replace('trusted_proxies: ["127.0.0.0/8"]', ""))
    assert gw.request("GET", "/api/x", headers={name: value})[0] == 200
    assert upstream.received[-1].header(name.lower()) == (value if trusted else None)


def test_client_certificate_headers_pass_from_a_trusted_proxy(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = make_gateway(TRUSTED)
    xfcc = 'Hash=abc;Subject="CN=alice"'
    assert (
        gw.request("GET", "/api/x", headers={"X-Forwarded-Client-Cert": xfcc, "X-SSL-Client-Verify": "SUCCESS"})[0]
        == 200
    )
    got = upstream.received[-1]
    assert (got.header("x-forwarded-client-cert"), got.header("x-ssl-client-verify")) == (xfcc, "SUCCESS")


def test_without_host_routes_a_trusted_proxys_forwarded_host_is_kept(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """nginx in front sends Host: its own upstream name and X-Forwarded-Host: the site's: with no host-specific
    route, the Host picks nothing, and the app needs the site's name for its absolute URLs."""
    gw = make_gateway(TRUSTED)
    sent = {"Host": "stockade:8080", "X-Forwarded-Host": "shop.example.com", "Forwarded": "for=1.2.3.4;host=shop"}
    assert gw.request("GET", "/api/x", headers=sent)[0] == 200
    got = upstream.received[-1]
    assert (got.header("x-forwarded-host"), got.header("forwarded")) == ("shop.example.com", "for=1.2.3.4;host=shop")


@pytest.mark.parametrize(
    ("xff", "status", "forwarded"),
    [
        ("198.51.100.7", 200, "198.51.100.7, 127.0.0.1"),
        ("203.0.113.9", 403, None),  # the real client, named by a trusted proxy, is denied
        ("203.0.113.9, 198.51.100.7", 200, "203.0.113.9, 198.51.100.7, 127.0.0.1"),  # spoofed leftmost is ignored
        ("198.51.100.7, 127.0.0.2", 200, "198.51.100.7, 127.0.0.2, 127.0.0.1"),  # trusted hops are skipped
        ("garbage", 200, "garbage, 127.0.0.1"),
    ],
)
def test_client_ip_comes_from_trusted_proxies_only(
    make_gateway: GatewayFactory, upstream: TestUpstream, xff: str, status: int, forwarded: str | None
) -> None:
    gw = make_gateway(TRUSTED)
    got_status, _, _ = gw.request("GET", "/api/x", headers={"X-Forwarded-For": xff, "X-Forwarded-Proto": "https"})
    assert got_status == status
    if forwarded is not None:
        assert upstream.received[-1].header("x-forwarded-for") == forwarded
        assert upstream.received[-1].header("x-forwarded-proto") == "https"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123", True), ("req.1:2_3", True), ("has space", False), ("x" * 129, False), ("bad\x7fchar", False)],
)
def test_request_id_is_propagated_only_when_well_formed(
    gateway: TestGateway, upstream: TestUpstream, sent: str, kept: bool
) -> None:
    raw = (
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Request-Id: " + sent.encode("latin-1") + b"\r\nConnection: close\r\n\r\n"
    )
    responses, _ = exchange(gateway, raw)
    if "\x7f" in sent:
        assert responses[0][0] == 400  # llhttp refuses DEL in a header value
        return
    got = upstream.received[0].header("x-request-id")
    assert (got == sent) is kept
    assert got


def test_content_length_body_is_forwarded(gateway: TestGateway, upstream: TestUpstream) -> None:
    status, _, _ = gateway.request("POST", "/api/x", body=b"hello world")
    assert status == 200
    assert upstream.received[0].body == b"hello world"
    assert upstream.received[0].header("content-length") == "11"


def test_chunked_body_is_reframed_without_extensions_or_trailers(gateway: TestGateway, upstream: TestUpstream) -> None:
    raw = (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b'5;ext="x"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    responses, _ = exchange(gateway, raw)
    assert responses[0][0] == 200
    got = upstream.received[0]
    assert got.body == b"hello world"
    assert got.header("transfer-encoding") == "chunked"
    assert got.header("content-length") is None
    assert got.header("x-trailer") is None


def test_large_body_is_streamed(gateway: TestGateway, upstream: TestUpstream) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    status, _, _ = gateway.request("POST", "/api/x", body=body)
    assert status == 200
    assert upstream.received[0].body == body


def test_large_response_is_streamed(gateway: TestGateway, upstream: TestUpstream) -> None:
    payload = bytes(range(256)) * 12000  # ~3 MiB, far above the transport's write buffer
    upstream.reply("/api/big", Reply(200, [("Content-Type", "application/octet-stream")], payload))
    status, headers, body = gateway.request("GET", "/api/big")
    assert status == 200
    assert int(headers["content-length"]) == len(payload)
    assert body == payload


def test_expect_100_continue_gets_interim_then_final(gateway: TestGateway, upstream: TestUpstream) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        responses = read_responses(sock, 1)
    assert responses[0][0] == 200
    assert upstream.received[0].body == b"hello"
    assert upstream.received[0].header("expect") is None


def test_expect_100_continue_denied_without_interim(gateway: TestGateway, upstream: TestUpstream) -> None:
    raw = b"POST /upload/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    responses, was_closed = exchange(gateway, raw)
    assert [r[0] for r in responses] == [413]
    assert was_closed
    assert upstream.received == []


def test_an_http10_clients_100_continue_is_ignored(gateway: TestGateway, upstream: TestUpstream) -> None:
    """RFC 9110 10.1.1 and 15.2: never a 1xx to an HTTP/1.0 client, which would take it for the final response
    (and, with no length in it, read to the close): three status lines for two requests."""
    raw = (
        b"POST /api/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\nhello"
        b"GET /api/second HTTP/1.0\r\nHost: a\r\n\r\n"
    )
    with gateway.connect() as sock:
        sock.sendall(raw)
        wire = b""
        while chunk := sock.recv(65536):  # the second request is HTTP/1.0 without keep-alive: it ends the connection
            wire += chunk
    assert re.findall(rb"HTTP/1\.[01] (\d{3}) ", wire) == [b"200", b"200"]  # (bodies end without a line break)
    assert [r.target for r in upstream.received] == ["/api/x", "/api/second"]
    assert upstream.received[0].body == b"hello"


def test_transfer_encoding_in_an_http10_request_closes_the_connection_after_it(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    """RFC 9112 6.1: faulty framing, closed after: an HTTP/1.0 hop in front, which knows no chunked, would have
    framed these bytes otherwise, so nothing after them is read as a request."""
    raw = (
        b"POST /api/x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"GET /api/second HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    )
    responses, was_closed = exchange(gateway, raw)
    assert [r[0] for r in responses] == [200]
    assert responses[0][1]["connection"] == "close"
    assert was_closed
    assert [(r.target, r.body) for r in upstream.received] == [("/api/x", b"abc")]


@pytest.mark.parametrize(
    ("version", "pooled"), [(b"HTTP/1.1", True), (b"HTTP/1.0", False)], ids=["http11-pooled", "http10-not-pooled"]
)
def test_an_http10_response_with_transfer_encoding_ends_its_upstream_connection(
    gateway: TestGateway, upstream: TestUpstream, version: bytes, pooled: bool
) -> None:
    """RFC 9112 6.1 on the response side: the body is delivered (re-framed), but the connection is not pooled."""
    upstream.reply(
        "/api/old",
        Reply(
            raw=version
            + b" 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
    )
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/old HTTP/1.1\r\nHost: a\r\n\r\n")
        first = read_responses(sock, 1)
        sock.sendall(b"GET /api/after HTTP/1.1\r\nHost: a\r\n\r\n")
        second = read_responses(sock, 1)
    assert (first[0][0], first[0][2], second[0][0]) == (200, b"abc", 200)
    assert upstream.connections == (1 if pooled else 2)


def test_head_response_has_no_body_and_the_client_connection_is_reused(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"HEAD /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        head = read_responses(sock, 1, head_request=True)
        assert head[0][0] == 200
        assert int(head[0][1]["content-length"]) > 0
        sock.sendall(b"GET /api/y HTTP/1.1\r\nHost: a\r\n\r\n")
        follow = read_responses(sock, 1)
    assert follow[0][0] == 200
    assert echo(follow[0])["target"] == "/api/y"
    # The upstream connection is not: body bytes it might still send for the HEAD would answer the next request.
    assert upstream.connections == 2


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses_keep_the_connection_usable(
    gateway: TestGateway, upstream: TestUpstream, status: int
) -> None:
    upstream.reply("/api/empty", Reply(status, [("ETag", '"x"')]))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/empty HTTP/1.1\r\nHost: a\r\n\r\nGET /api/after HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = read_responses(sock, 2)
    assert [r[0] for r in responses] == [status, 200]
    assert responses[0][2] == b""
    assert echo(responses[1])["target"] == "/api/after"


def test_interim_responses_from_upstream_are_not_forwarded(gateway: TestGateway, upstream: TestUpstream) -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    upstream.reply("/api/interim", Reply(raw=raw))
    status, headers, body = gateway.request("GET", "/api/interim")
    assert (status, body) == (200, b"ok")
    assert "link" not in headers


def test_response_hop_by_hop_headers_are_removed(gateway: TestGateway, upstream: TestUpstream) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTrailer: X-T\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    upstream.reply("/api/hop", Reply(raw=raw))
    status, headers, body = gateway.request("GET", "/api/hop")
    assert (status, body) == (200, b"ok")
    for name in ("x-internal", "keep-alive", "proxy-authenticate", "upgrade", "trailer"):
        assert name not in headers
    assert headers["x-kept"] == "yes"
    assert headers["connection"] == "close"  # our own, because the client asked to close


def test_chunked_upstream_response(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.reply(
        "/api/chunks", Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    )
    status, headers, body = gateway.request("GET", "/api/chunks")
    assert (status, body) == (200, b"abc")
    assert headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize(
    "extra",
    [
        b"",
        # llhttp keeps an HTTP/1.0 request alive on Proxy-Connection as on Connection: still a 1.0 client
        b"Proxy-Connection: keep-alive\r\n",
        b"PROXY-CONNECTION: Keep-Alive\r\n",
    ],
    ids=["plain", "proxy-connection", "proxy-connection-upper"],
)
def test_http10_client_gets_chunked_response_decoded(
    gateway: TestGateway, upstream: TestUpstream, extra: bytes
) -> None:
    upstream.reply(
        "/api/chunks",
        Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
    )
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/chunks HTTP/1.0\r\n" + extra + b"\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"abcde"


def test_http10_keep_alive_is_honoured(gateway: TestGateway) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = read_responses(sock, 1)
        assert first[0][1]["connection"] == "keep-alive"
        sock.sendall(b"GET /api/b HTTP/1.0\r\n\r\n")
        second = read_responses(sock, 1)
        assert second[0][0] == 200
        assert closed(sock)


def test_keep_alive_reuses_one_upstream_connection(gateway: TestGateway, upstream: TestUpstream) -> None:
    with gateway.connect() as sock:
        for i in range(5):
            sock.sendall(b"GET /api/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            assert read_responses(sock, 1)[0][0] == 200
    for i in range(3):
        assert gateway.request("GET", f"/api/new-conn-{i}")[0] == 200
    assert upstream.connections == 1


def test_pipelined_requests_are_answered_in_order(gateway: TestGateway, upstream: TestUpstream) -> None:
    raw = b"".join(b"GET /api/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(10))
    raw += (
        b"POST /api/body HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyzGET /api/last HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    with gateway.connect() as sock:
        sock.sendall(raw)
        responses = read_responses(sock, 12)
    targets = [echo(r)["target"] for r in responses]
    assert targets == [f"/api/{i}" for i in range(10)] + ["/api/body", "/api/last"]
    assert upstream.received[10].body == b"xyz"


def test_pipelined_requests_wait_for_a_slow_first_response(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.stall()
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        upstream.release()
        responses = read_responses(sock, 2)
    assert [r[0] for r in responses] == [200, 404]


def test_connection_close_from_client_is_honoured(gateway: TestGateway) -> None:
    responses, was_closed = exchange(gateway, b"GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert responses[0][0] == 200
    assert responses[0][1]["connection"] == "close"
    assert was_closed


def test_upstream_close_delimited_response_closes_client(gateway: TestGateway, upstream: TestUpstream) -> None:
    upstream.reply("/api/eof", Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", close=True))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/eof HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n")  # re-framed: the end is plain to see


class _CloseDelimited:
    """A raw upstream that answers one request with a body delimited by its close, then ends it: with a close
    (the whole body), a reset, or by stalling until the gateway's read timeout."""

    def __init__(self, end: str) -> None:
        self.end = end
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
        if self.end == "stall":
            self.done.wait(10)
        elif self.end == "reset":
            time.sleep(0.1)  # the body bytes go on first
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        self.server.close()


def _read_to_close(sock: socket.socket) -> tuple[bytes, str]:
    data = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    return data, "close"


@pytest.mark.parametrize(
    ("version", "end", "client_sees"),
    [
        ("1.1", "close", "last chunk"),
        ("1.1", "reset", "no last chunk"),
        ("1.1", "stall", "no last chunk"),
        ("1.0", "close", "close"),
        ("1.0", "reset", "reset"),
        ("1.0", "stall", "reset"),
    ],
)
def test_a_close_delimited_body_cut_by_the_upstream_is_not_passed_off_as_whole(
    make_gateway: GatewayFactory, version: str, end: str, client_sees: str
) -> None:
    """A body without Content-Length or chunked ends when the upstream closes. A reset or a read timeout looked
    like that end to the client (connection: close, the body so far, FIN). An HTTP/1.1 client now gets it
    re-framed as chunked, as nginx does, with the last chunk only after a clean close; an HTTP/1.0 client (which
    can only read to the close) gets a reset for a cut."""
    up = _CloseDelimited(end)
    gw = make_gateway(
        f"routes:\n  - id: r\n    match: {{path: /**}}\n    upstream: 'http://127.0.0.1:{up.port}'\n"
        "    stages: [{use: anonymous}]\n"
    )
    with gw.connect() as sock:
        sock.sendall(b"GET /eof HTTP/%b\r\nHost: a\r\n\r\n" % version.encode())
        if end == "stall":
            wait_for(lambda: any(c.queue and c.queue[0].resp_started for c in gw.server.connections))
            gw.advance(61.0)
        data, how = _read_to_close(sock)
        up.done.set()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    if version == "1.1":
        assert b"transfer-encoding: chunked" in head.lower()
        assert body.startswith(b"b\r\nuntil close\r\n")
        assert body.endswith(b"\r\n0\r\n\r\n") == (client_sees == "last chunk")
    else:
        assert b"transfer-encoding" not in head.lower()
        assert how == client_sees
        if how == "close":
            assert body == b"until close"


def test_denied_request_with_small_body_keeps_connection(gateway: TestGateway, upstream: TestUpstream) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        first = read_responses(sock, 1)
        sock.sendall(b"GET /api/after HTTP/1.1\r\nHost: a\r\n\r\n")
        second = read_responses(sock, 1)
    assert first[0][0] == 404
    assert second[0][0] == 200
    assert [r.target for r in upstream.received] == ["/api/after"]


def test_head_request_to_unknown_route_has_no_body(gateway: TestGateway) -> None:
    responses, _ = exchange(gateway, b"HEAD /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", head=True)
    assert responses[0][0] == 404
    assert responses[0][2] == b""
    assert int(responses[0][1]["content-length"]) > 0


def _chunked(body: bytes, parts: int = 3) -> bytes:
    step = max(1, len(body) // parts)
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("framing", "size", "first", "limits", "buffering", "early"),
    [
        ("length", 3000, 1000, "", True, False),  # fits the buffer: the upstream hears of it only when it is whole
        ("chunked", 3000, 1000, "", True, False),
        ("length", 4096, 4000, "", True, False),  # exactly buffer_bytes still fits
        ("length", 20000, 6000, "", True, False),  # more than the buffer: on into the spool, forwarded when whole
        ("chunked", 20000, 6000, "", True, False),
        ("length", 20000, 16000, "spool_bytes: 20000", True, False),  # exactly spool_bytes still fits
        ("length", 20000, 6000, "spool_bytes: 0", True, True),  # no spool: forwarded once the buffer is full
        ("chunked", 20000, 6000, "spool_bytes: 0", True, True),
        ("length", 20000, 6000, "spool_bytes: 19999", True, True),  # too large for the spool: streams
        ("chunked", 30000, 16000, "spool_bytes: 10000", True, True),  # outgrew it: what it holds, then the rest
        ("length", 20000, 6000, "spool_total_bytes: 19999", True, True),  # over the worker's spool budget
        ("length", 3000, 1000, "", False, True),  # request_buffering: false streams at once
        ("chunked", 3000, 1000, "", False, True),
        ("chunked", 20000, 6000, "", False, True),
    ],
)
def test_request_body_is_received_before_the_upstream_is_contacted(
    make_gateway: GatewayFactory,
    upstream: TestUpstream,
    framing: str,
    size: int,
    first: int,
    limits: str,
    buffering: bool,
    early: bool,
) -> None:
    gw = make_gateway(
        f"limits: {{buffer_bytes: 4096, {limits}}}\n"
        "routes:\n  - id: r\n    match: {path: /**}\n"
        f"    upstream: {{url: '{{upstream}}', request_buffering: {str(buffering).lower()}}}\n"
        "    stages: [{use: anonymous}]\n"
    )
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    if framing == "length":
        head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
        wire = body
    else:
        head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire = _chunked(body, parts=size // 1000)
    with gw.connect() as sock:
        sock.sendall(head + wire[:first])

        # Every body byte of what was sent has been parsed (the gateway may read it in several pieces; chunk
        # framing is under 1% of the chunked wire): only then is the state below settled.
        sent_body = first if framing == "length" else first * 99 // 100

        def receiving() -> list[Exchange]:
            return [
                c.parsing for c in gw.server.connections if c.parsing is not None and c.parsing.body_size >= sent_body
            ]

        wait_for(lambda: receiving() and (not early or upstream.connections == 1))
        # body_size is counted before the read is acted on (spooled or forwarded): let the loop finish that read.
        gw.bg.call(lambda: None)
        exchanges = receiving()
        assert len(exchanges) == 1
        assert (exchanges[0].pool is not None) is early  # the gateway asked its pool for a connection, or not yet
        spooled = exchanges[0].spool is not None
        sock.sendall(wire[first:])
        responses = read_responses(sock, 1)
    assert responses[0][0] == 200
    assert upstream.received[0].body == body
    assert spooled is (buffering and not early and first > 4096)
    gw.bg.call(lambda: None)  # the exchange's end (and its spool's) runs on the loop after the reply
    assert gw.server.spool_reserved == 0  # every spool closed, its reservation given back


def _spooling_gateway(make_gateway: GatewayFactory) -> TestGateway:
    return make_gateway(
        "limits: {buffer_bytes: 4096}\n"
        "routes:\n  - id: r\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages: [{use: anonymous}]\n"
    )


def test_a_client_gone_mid_spool_leaves_no_spool_and_never_reaches_the_upstream(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = _spooling_gateway(make_gateway)
    with gw.connect() as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n" + b"x" * 10000)
        wait_for(lambda: gw.server.spool_reserved == 20000)
    wait_for(lambda: not gw.server.connections)
    gw.bg.call(lambda: None)  # the exchange's end (and its spool's) runs on the loop after the reply
    assert gw.server.spool_reserved == 0
    assert upstream.connections == 0


def test_a_spool_that_cannot_be_created_streams_instead(
    make_gateway: GatewayFactory, upstream: TestUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # mkstemp fails: no such directory
    gw = _spooling_gateway(make_gateway)
    body = b"y" * 20000
    with gw.connect() as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n" + body[:10000])
        wait_for(lambda: upstream.connections == 1)  # forwarded once the memory buffer was full
        sock.sendall(body[10000:])
        assert read_responses(sock, 1)[0][0] == 200
    assert upstream.received[0].body == body
    gw.bg.call(lambda: None)  # the exchange's end (and its spool's) runs on the loop after the reply
    assert gw.server.spool_reserved == 0


def test_a_pipelined_request_after_a_spooled_one_is_answered_in_order(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = _spooling_gateway(make_gateway)
    body = b"z" * 30000
    with gw.connect() as sock:
        sock.sendall(
            b"POST /one HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 30000\r\n\r\n"
            + body
            + b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        responses = read_responses(sock, 2)  # after a 100 Continue (read_responses skips 1xx)
    assert [r[0] for r in responses] == [200, 200]
    assert [(r.target, r.body) for r in upstream.received] == [("/one", body), ("/two", b"")]


def test_a_failed_connect_after_a_chunked_body_outgrew_its_spool_keeps_the_connection_reading(
    make_gateway: GatewayFactory,
) -> None:
    """The client was paused on the upstream's behalf before any upstream existed; the failed connect dropped no
    upstream, so nothing resumed it: the keep-alive connection never read the next request."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe is closed
    gw = make_gateway(
        "limits: {buffer_bytes: 4096, spool_bytes: 10000}\n"
        f"routes:\n  - id: r\n    match: {{path: /**}}\n    upstream: 'http://127.0.0.1:{closed_port}'\n"
        "    stages: [{use: anonymous}]\n"
    )
    body = b"a" * 30000
    with gw.connect() as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, parts=30))
        first = read_responses(sock, 1)
        assert first[0][0] == 502 and first[0][1].get("connection") != "close"
        sock.sendall(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
        sock.settimeout(5)
        assert [r[0] for r in read_responses(sock, 1)] == [502]  # answered (the upstream is still down)
    gw.bg.call(lambda: None)  # the exchange's end (and its spool's) runs on the loop after the reply
    assert gw.server.spool_reserved == 0


def test_waiting_for_a_held_body_is_not_counted_as_gateway_overhead(
    make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    gw = make_gateway(
        "routes:\n  - id: r\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages: [{use: anonymous}]\n"
    )
    with gw.connect() as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        wait_for(lambda: any(c.parsing is not None and c.parsing.held for c in gw.server.connections))
        gw.advance(3.0)  # the client takes 3 s over the rest of its body
        sock.sendall(b"56789")
        assert read_responses(sock, 1)[0][0] == 200
    wait_for(lambda: "r" in gw.server.metrics.overhead)
    overhead = gw.server.metrics.overhead["r"]
    assert sum(overhead.counts) == 1
    assert overhead.sum < 1.0  # the fake clock moved 3 s, all of it the client's


@pytest.mark.parametrize("ending", ["body-timeout", "client-abort"])
def test_held_body_that_never_completes_is_not_counted_as_gateway_overhead(
    make_gateway: GatewayFactory, upstream: TestUpstream, ending: str
) -> None:
    """The exchange ends while the body is held (408, or the client goes): its wait is still the client's."""
    gw = make_gateway(
        "routes:\n  - id: r\n    match: {path: /**}\n    upstream: '{upstream}'\n    stages: [{use: anonymous}]\n"
    )
    with gw.connect() as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        wait_for(lambda: any(c.parsing is not None and c.parsing.held for c in gw.server.connections))
        if ending == "body-timeout":
            gw.advance(31.0)  # past body_timeout
            assert read_responses(sock, 1)[0][0] == 408
        else:
            gw.advance(20.0)
    wait_for(lambda: "r" in gw.server.metrics.overhead)
    overhead = gw.server.metrics.overhead["r"]
    assert sum(overhead.counts) == 1
    assert overhead.sum < 1.0  # the fake clock moved 20 or 31 s, all of it the client's


@pytest.mark.parametrize(
    "connection",
    ["content-length", "Content-Length", "keep-alive, content-length", "host", "transfer-encoding", "close, host"],
)
def test_connection_cannot_remove_the_request_framing_or_host(
    gateway: TestGateway, upstream: TestUpstream, connection: str
) -> None:
    """A Connection field naming Content-Length once made the gateway drop it and still send the body, which the
    upstream then read as the next request - the next client's request glued onto it (request smuggling)."""
    smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\nX-Swallow: "
    raw = b"POST /api/x HTTP/1.1\r\nHost: a\r\nConnection: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        connection.encode(),
        len(smuggled),
        smuggled,
    )
    with gateway.connect() as sock:
        sock.sendall(raw)
        assert read_responses(sock, 1)[0][0] == 200
    status, _, _ = gateway.request("GET", "/api/next")
    assert status == 200
    assert [r.target for r in upstream.received] == ["/api/x", "/api/next"]
    assert upstream.received[0].body == smuggled
    assert upstream.received[0].header("content-length") == str(len(smuggled))
    assert upstream.received[0].header("host") is not None


@pytest.mark.parametrize("named", ["content-length", "transfer-encoding", "keep-alive, Content-Length"])
def test_upstream_connection_field_cannot_remove_the_response_framing(
    gateway: TestGateway, upstream: TestUpstream, named: str
) -> None:
    """The client must still be able to find where the response ends, or the next pipelined one is its body."""
    if "transfer" in named:
        raw = b"HTTP/1.1 200 OK\r\nConnection: %s\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    else:
        raw = b"HTTP/1.1 200 OK\r\nConnection: %s\r\nContent-Length: 2\r\n\r\nok"
    upstream.reply("/api/framed", Reply(raw=raw % named.encode()))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/framed HTTP/1.1\r\nHost: a\r\n\r\nGET /api/after HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = read_responses(sock, 2)
    assert [r[0] for r in responses] == [200, 200]
    assert responses[0][2] == b"ok"
    assert echo(responses[1])["target"] == "/api/after"


HOSTILE_RESPONSES = [
    # llhttp skips empty lines before a status line; the head search took `\r\n\r\n` for the head and forwarded the
    # real one as body, verbatim: Server and hop-by-hop headers reached the client behind a head with no status
    (
        "blank-lines-before-status",
        b"\r\n\r\nHTTP/1.1 200 OK\r\nServer: leaky/1.0\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
    ),
    (
        "blank-line-after-interim",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
    ),
    # a final coding other than chunked means "until close": forwarded as Transfer-Encoding, a client reads chunked
    ("coding-after-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc", 502, None),
    ("coding-only-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", 502, None),
    # a coding before the chunked would reach the client still applied, announced as chunked alone
    (
        "chunked-twice",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n8\r\n3\r\nabc\r\n\r\n0\r\n\r\n",
        502,
        None,
    ),
    (
        "chunked-in-two-fields",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        502,
        None,
    ),
    (
        "coding-before-chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        502,
        None,
    ),
    # status lines llhttp takes but a client may not: the gateway writes its own
    ("rtsp-status-line", b"RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    ("http-2-status-line", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    ("reason-with-bytes", b"HTTP/1.1 200 O\xffK\x01\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
    ("status-below-100", b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok", 502, None),
]


@pytest.mark.parametrize(
    ("raw", "status", "body"), [c[1:] for c in HOSTILE_RESPONSES], ids=[c[0] for c in HOSTILE_RESPONSES]
)
def test_hostile_upstream_responses_reach_the_client_well_formed_or_not_at_all(
    gateway: TestGateway, upstream: TestUpstream, raw: bytes, status: int, body: bytes | None
) -> None:
    upstream.reply("/api/hostile", Reply(raw=raw, close=True))
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/hostile HTTP/1.1\r\nHost: a\r\n\r\n")
        sock.settimeout(5)
        wire = b""
        while b"\r\n\r\n" not in wire:
            wire += sock.recv(65536)
    assert wire.startswith(b"HTTP/1.1 %d " % status)  # a real status line first, nothing before it
    head = wire.split(b"\r\n\r\n", 1)[0].lower()
    assert b"keep-alive: timeout" not in head  # hop-by-hop: removed, so the real head was parsed as a head
    with gateway.connect() as sock:
        sock.sendall(b"GET /api/hostile HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        (got,) = read_responses(sock, 1)
    assert got[0] == status
    if body is not None:
        assert got[2] == body


def test_a_204_announcing_a_body_leaves_its_upstream_connection_unused(
    gateway: TestGateway, upstream: TestUpstream
) -> None:
    """A 204 may not have a body; one that announces one anyway, and sends it late, would answer the next client's
    request on the pooled connection."""
    upstream.reply("/api/nocontent", Reply(raw=b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"))
    upstream.reply("/api/next", Reply(200, body=b"fine"))
    assert gateway.request("GET", "/api/nocontent")[0] == 204
    assert gateway.request("GET", "/api/next")[2] == b"fine"
    assert upstream.connections == 2  # the 204's connection was not reused


def test_a_method_override_parameter_never_reaches_the_upstream(gateway: TestGateway, upstream: TestUpstream) -> None:
    """Express's methodOverride('_method') would run this POST as the DELETE a route may refuse (paths.py)."""
    status, _, _ = gateway.request("POST", "/api/items/1?a=1&_method=DELETE&b=2", body=b"x")
    assert status == 200
    assert (upstream.received[0].method, upstream.received[0].target) == ("POST", "/api/items/1?a=1&b=2")
    status, _, _ = gateway.request("POST", "/api/items/1?_method=DELETE", body=b"x")
    assert (upstream.received[1].method, upstream.received[1].target) == ("POST", "/api/items/1")

"""ip_filter: allow and deny lists over the client address."""

from __future__ import annotations

import pytest

from stockade.pipeline.verdict import Deny
from stockade.stages.preauth.ip_filter import IpFilter, IpFilterConfig
from stockade.testing import make_context, run_stage
from tests.conftest import GatewayFactory

CASES = [
    ("allowed-in-list", {"allow": ["10.0.0.0/8"]}, "10.1.1.1", None),
    ("outside-allow", {"allow": ["10.0.0.0/8"]}, "192.0.2.1", "ip.denied"),
    ("in-deny", {"deny": ["192.0.2.0/24"]}, "192.0.2.1", "ip.denied"),
    ("outside-deny", {"deny": ["192.0.2.0/24"]}, "198.51.100.1", None),
    ("deny-beats-allow", {"allow": ["0.0.0.0/0"], "deny": ["192.0.2.0/24"]}, "192.0.2.1", "ip.denied"),
    ("mapped-ipv4-denied", {"deny": ["192.0.2.0/24"]}, "::ffff:192.0.2.1", "ip.denied"),
    ("ipv6-allow", {"allow": ["2001:db8::/32"]}, "2001:db8::5", None),
    ("ipv6-not-in-v4-allow", {"allow": ["10.0.0.0/8"]}, "2001:db8::5", "ip.denied"),
    ("unparsable-client", {"allow": ["10.0.0.0/8"]}, "unix", "ip.denied"),
]


@pytest.mark.parametrize(("cfg", "ip", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ip_filter(cfg: dict[str, list[str]], ip: str, code: str | None) -> None:
    stage = IpFilter(IpFilterConfig.model_validate(cfg), None)  # type: ignore[arg-type]
    verdict = run_stage(stage, make_context(client_ip=ip))
    if code is None:
        assert not isinstance(verdict, Deny)
    else:
        assert isinstance(verdict, Deny) and (verdict.status, verdict.reason) == (403, code)
        assert ip in verdict.detail  # the log says which address; the client only sees the code


def test_ip_filter_in_front_of_a_real_upstream(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(
        "routes:\n  - id: r\n    match: {path: /**}\n    upstream: {upstream}\n"
        "    stages: [{use: ip_filter, config: {allow: [10.0.0.0/8]}}, {use: anonymous}]\n"
    )
    status, _, body = gw.request("GET", "/x")
    assert status == 403
    assert b'"reason":"ip.denied"' in body
    assert b"127.0.0.1" not in body

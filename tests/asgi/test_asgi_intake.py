"""What the middleware refuses before routing, as the proxy's parser (llhttp) would: methods it cannot parse."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stockade.asgi import StockadeMiddleware
from stockade.clock import FakeClock
from stockade.config.models import HTTP_METHODS
from stockade.observability.decision_log import DecisionLog
from tests.asgi.asgi_support import call_direct, direct_scope, problem

CONFIG = """
routes:
  - id: any
    match: {path: "/**"}
    stages: [{use: anonymous}]
"""


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app:" + scope["method"].encode()})


def mw() -> StockadeMiddleware:
    return StockadeMiddleware(app, config_text=CONFIG, decision_log=DecisionLog("off", FakeClock()))


REFUSED = [
    pytest.param("post", 400, id="lower-case"),  # uvicorn's h11 and daphne pass it; Starlette and Django serve POST
    pytest.param("Delete", 400, id="mixed-case"),
    pytest.param("FOO", 400, id="unknown"),
    pytest.param("DESCRIBE", 400, id="rtsp"),  # llhttp parses RTSP methods only on RTSP messages
    pytest.param("PRI", 400, id="h2-preface"),
    pytest.param("GET\t", 400, id="control-character"),
    pytest.param("G\u00c9T", 400, id="not-ascii"),
    pytest.param("", 400, id="empty"),
    pytest.param("CONNECT", 405, id="connect"),  # parsed, then refused as on the proxy
]
PARSED = [pytest.param(m, 200, id=m) for m in sorted(HTTP_METHODS)]


@pytest.mark.parametrize(("method", "status"), REFUSED + PARSED)
def test_methods_as_the_proxys_parser_takes_them(method: str, status: int) -> None:
    """Per-method route rules and rate-limit costs are written for the method's token: `post` was judged as an
    unknown method while the app served it as POST. What llhttp refuses is 400 here too."""
    sent = call_direct(mw(), direct_scope("http", "/items", method=method))
    assert sent.status == status
    if status == 400:
        assert problem(sent.body)["reason"] == "http.bad_request"
        assert (b"connection", b"close") in sent.headers  # as the proxy does after a request it could not parse
    elif status == 405:
        assert orjson.loads(sent.body)["reason"] == "http.method_not_allowed"
    elif method != "HEAD":
        assert sent.body == b"app:" + method.encode()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"host", b"localhost"), (b"x-a", b"1")], id="tuples"),
        pytest.param([[b"host", b"localhost"], [b"x-a", b"1"]], id="lists"),  # ASGI: Iterable[[bytes, bytes]]
        pytest.param(((b"host", b"localhost"), (b"x-a", b"1")), id="tuple-of-pairs"),
        pytest.param([(b"host", bytearray(b"localhost")), (bytearray(b"x-a"), b"1")], id="bytearrays"),
    ],
)
def test_any_shape_of_header_pairs_the_asgi_spec_allows(headers: Any) -> None:
    """The compiled pipeline takes exactly `list[tuple[bytes, bytes]]`: a server's `[name, value]` lists were a
    TypeError there (a 500) while the pure-Python modules served them. The middleware's snapshot normalises."""
    seen: list[Any] = []

    async def recording_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["headers"])
        await app(scope, receive, send)

    gateway = StockadeMiddleware(recording_app, config_text=CONFIG, decision_log=DecisionLog("off", FakeClock()))
    sent = call_direct(gateway, direct_scope("http", "/items", headers=headers))
    assert sent.status == 200 and sent.body == b"app:GET"
    assert (b"x-a", b"1") in seen[0]

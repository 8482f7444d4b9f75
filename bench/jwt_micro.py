"""In-process cost of the JWT path: CPU per request of a route's pipeline with a cached JWT, an uncached one,
and the bare route (anonymous), measured with process_time over many runs.

    .venv/bin/python bench/jwt_micro.py [iterations]

The end-to-end `jwt-cached` profile for `make bench` is described in docs/tokens.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from stockade.clock import FakeClock
from stockade.pipeline.phase import Phase
from stockade.pipeline.runner import Pipeline, StageSlot
from stockade.pipeline.stage import Services, StageEnv
from stockade.security import jose
from stockade.security.jwk import public_jwk
from stockade.stages.authn.anonymous import AnonymousAuthenticator
from stockade.stages.authn.anonymous_config import AnonymousConfig
from stockade.stages.authn.jwt import JwtAuthenticator
from stockade.stages.authn.jwt_config import JwtConfig
from stockade.stages.authz.scopes import ScopesAuthorizer, ScopesConfig
from stockade.testing import make_context

HEADERS = [("Host", "api.example"), ("User-Agent", "wrk"), ("Accept", "application/json"), ("X-Request-Id", "abc")]


def build(clock: FakeClock, cache_size: int) -> tuple[Pipeline, Pipeline, Pipeline, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    env = StageEnv("r", Path("."), Services(clock=clock))
    cfg = {
        "issuers": [
            {
                "issuer": "https://idp",
                "audiences": ["api"],
                "algorithms": ["ES256"],
                "keys": [public_jwk(key.public_key(), "k1", "ES256")],
            }
        ],
        "cache_size": cache_size,
    }
    jwt = JwtAuthenticator(JwtConfig.model_validate(cfg), env)
    scopes = ScopesAuthorizer(ScopesConfig.model_validate({"require": ["books:read"]}), env)
    anon = AnonymousAuthenticator(AnonymousConfig(), env)
    now = int(clock.time())
    claims = {"iss": "https://idp", "sub": "u", "aud": "api", "iat": now, "exp": now + 3600, "scope": "books:read"}
    token = jose.sign(claims, key, "ES256", kid="k1")
    bare = Pipeline("r", [StageSlot(anon, "anonymous", Phase.AUTHENTICATE)], body_limit=1 << 20)
    with_jwt = Pipeline("r", [StageSlot(jwt, "jwt", Phase.AUTHENTICATE)], body_limit=1 << 20)
    with_scopes = Pipeline(
        "r",
        [StageSlot(jwt, "jwt", Phase.AUTHENTICATE), StageSlot(scopes, "scopes", Phase.AUTHORIZE)],
        body_limit=1 << 20,
    )
    return bare, with_jwt, with_scopes, token


def per_request(pipeline: Pipeline, headers: list[tuple[str, str]], clock: FakeClock, n: int) -> float:
    """CPU us per request of `pipeline.run`, net of building the context (done in both timed loops)."""
    start = time.process_time()
    for _ in range(n):
        make_context(headers=headers, clock=clock)
    building = time.process_time() - start
    start = time.process_time()
    for _ in range(n):
        result = pipeline.run(make_context(headers=headers, clock=clock))
        if result is not None:
            raise SystemExit(f"pipeline did not allow the request: {result!r}")
    return (time.process_time() - start - building) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    clock = FakeClock()
    bare, with_jwt, with_scopes, token = build(clock, 10_000)
    auth = [*HEADERS, ("Authorization", f"Bearer {token}")]
    per_request(with_jwt, auth, clock, 1000)  # warm: the first request verifies and fills the cache
    rows = [
        ("bare (anonymous)", per_request(bare, HEADERS, clock, n)),
        ("jwt, cached", per_request(with_jwt, auth, clock, n)),
        ("jwt, cached + scopes", per_request(with_scopes, auth, clock, n)),
    ]
    _, uncached, _, token2 = build(clock, 0)
    rows.append(
        (
            "jwt, verified every time (ES256)",
            per_request(uncached, [*HEADERS, ("Authorization", f"Bearer {token2}")], clock, n // 50),
        )
    )
    base = rows[0][1]
    for name, us in rows:
        print(f"{name:36} {us:7.2f} us/request   (+{us - base:.2f} over bare)")


if __name__ == "__main__":
    main()

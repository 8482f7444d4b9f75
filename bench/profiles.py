"""The benchmark profiles: one row per thing we measure. Later features add rows here (API key, JWT, limits...)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["direct", "nginx", "floor", "stockade"]


@dataclass(frozen=True)
class SetupEnv:
    """What a setup hook gets: the profile's own scratch directory and the stockade config written into it."""

    workdir: Path
    config: Path
    python: str  # an interpreter with stockade installed: run `[python, "-m", "stockade", ...]`


# Runs before the proxy starts (so it can fill the store, e.g. create an API key); returns extra request headers.
Setup = Callable[[SetupEnv], Mapping[str, str]]


@dataclass(frozen=True)
class Profile:
    """One row of the comparison.

    `kind` says what is started: `direct` (nothing, the load hits the upstream), `nginx` (nginx `proxy_pass`),
    `floor` (bench/floor_proxy.py: the design's bare minimum in Python, no pipeline) or
    `stockade` (`stockade serve`, one route `/**` to the upstream with `stages`). `gateway` adds top-level
    stockade settings (e.g. `limits_storage`). `expect_headers` is checked on a probe request before loading,
    proving the stages really ran (None = the header must be absent).
    """

    name: str
    kind: Kind
    measures: str
    stages: tuple[Mapping[str, Any], ...] = ()
    decision_log: bool = True  # stockade writes its decision log to a file in the profile's directory
    gateway: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    setup: Setup | None = None
    expect_headers: Mapping[str, str | None] = field(default_factory=dict)


ANONYMOUS = {"use": "anonymous"}
# A limit the load never reaches (a refused request would be an error in the run): what is measured is the
# check itself, the counter update, and the RateLimit fields written into every response head.
RATE_LIMIT = {"use": "rate_limit", "config": {"limits": [{"rate": "1000000/second", "key": "ip"}]}}
RATE_POLICY = '"ip-1000000-per-1s";q=1000000;w=1'


def _api_key_setup(env: SetupEnv) -> Mapping[str, str]:
    """Create a consumer and key in the profile's own store with the CLI; the load presents the key."""
    import subprocess

    out = subprocess.run(
        [env.python, "-m", "stockade", "--config", str(env.config), "keys", "create", "--consumer", "bench"],
        check=True,
        capture_output=True,
        text=True,
    )
    return {"X-API-Key": out.stdout.strip().splitlines()[-1]}


def _jwt_material() -> tuple[dict[str, Any], str]:
    """A signing key made for this run: the route trusts its public half; the load presents one long-lived token."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.clock import SYSTEM_CLOCK
    from stockade.security import jose
    from stockade.security.jwk import public_jwk

    key = ec.generate_private_key(ec.SECP256R1())
    issuer = {
        "issuer": "https://idp.bench",
        "audiences": ["api"],
        "algorithms": ["ES256"],
        "keys": [public_jwk(key.public_key(), "bench-1", "ES256")],
        "max_lifetime": 31 * 86400,
    }
    now = int(SYSTEM_CLOCK.time())
    claims = {"iss": "https://idp.bench", "sub": "bench", "aud": "api", "iat": now, "exp": now + 30 * 86400}
    claims["scope"] = "books:read"
    return {"use": "jwt", "config": {"issuers": [issuer]}}, jose.sign(claims, key, "ES256", kid="bench-1")


_JWT_STAGE, _JWT_TOKEN = _jwt_material()


def _openapi_spec(env: SetupEnv) -> Mapping[str, str]:
    """Write the spec the `openapi` profiles enforce: 200 operations, the probed one among them, with a
    typed path parameter, a header parameter and a response schema for the upstream's JSON body."""
    item = {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                                              "ok": {"type": "boolean"}}, "required": ["id", "name"]}  # fmt: skip
    ok = {"200": {"description": "ok", "content": {"application/json": {"schema": item}}}}
    paths: dict[str, Any] = {}
    for i in range(50):
        paths[f"/api/r{i}"] = {"get": {"responses": ok}, "post": {"responses": ok}}
        paths[f"/api/r{i}/{{id}}"] = {"get": {"responses": ok}, "delete": {"responses": ok}}
    paths["/api/items/{id}"] = {
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}},
            {"name": "X-Client", "in": "header", "schema": {"type": "string", "pattern": "^[a-z]{1,16}$"}},
        ],
        "get": {"responses": ok},
    }
    spec = {"openapi": "3.1.0", "info": {"title": "bench", "version": "1"}, "paths": paths}
    (env.workdir / "openapi.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return {"X-Client": "bench"}


PROFILES: tuple[Profile, ...] = (
    Profile("direct", "direct", "the load side alone: wrk straight to the upstream (the ceiling of the load core)"),
    Profile("nginx", "nginx", "the reference: nginx proxy_pass, upstream keep-alive, one worker"),
    Profile(
        "python-floor",
        "floor",
        "the design alone: uvloop + httptools, pooled upstream, head rebuilt, no pipeline/log/metrics (not a gateway)",
    ),
    Profile(
        "stockade-bare",
        "stockade",
        "the data plane: one route, anonymous, decision log to a file",
        stages=(ANONYMOUS,),
    ),
    Profile(
        "stockade-bare-nolog",
        "stockade",
        "the same without the decision log (the difference is the log's cost)",
        stages=(ANONYMOUS,),
        decision_log=False,
    ),
    Profile(
        "stockade-headers",
        "stockade",
        "bare + security_headers: the response head is rewritten instead of forwarded verbatim",
        stages=(ANONYMOUS, {"use": "security_headers"}),
        expect_headers={"x-content-type-options": "nosniff", "cache-control": "no-store"},
    ),
    Profile(
        "api-key",
        "stockade",
        "bare + api_key: a key created with the CLI, found in the in-memory cache (header stripped upstream)",
        stages=({"use": "api_key"},),
        setup=_api_key_setup,
    ),
    Profile(
        "jwt-cached",
        "stockade",
        "bare + jwt: an ES256 token verified once, then served from the verified-token cache",
        stages=(_JWT_STAGE,),
        headers={"Authorization": f"Bearer {_JWT_TOKEN}"},
    ),
    Profile(
        "stockade-openapi",
        "stockade",
        "bare + openapi: the operation matched in a 200-operation spec, path and header parameters validated",
        stages=(ANONYMOUS, {"use": "openapi", "config": {"spec": "openapi.yaml"}}),
        setup=_openapi_spec,
    ),
    Profile(
        "stockade-openapi-responses",
        "stockade",
        "openapi with `responses: enforce`: the upstream's JSON body buffered and checked against its schema",
        stages=(ANONYMOUS, {"use": "openapi", "config": {"spec": "openapi.yaml", "responses": "enforce"}}),
        setup=_openapi_spec,
    ),
    Profile(
        "ratelimit-memory",
        "stockade",
        "bare + rate_limit (GCRA per client IP) on memory://, RateLimit fields on every response",
        stages=(ANONYMOUS, RATE_LIMIT),
        expect_headers={"ratelimit-policy": RATE_POLICY},
    ),
    Profile(
        "ratelimit-redis",
        "stockade",
        "the same limit on Redis (127.0.0.1:6379): one EVALSHA round trip per request",
        stages=(ANONYMOUS, RATE_LIMIT),
        gateway={"limits_storage": "redis://127.0.0.1:6379/0?prefix=stockade-bench:"},
        expect_headers={"ratelimit-policy": RATE_POLICY},
    ),
)


def select(names: str | None) -> list[Profile]:
    """The profiles named in a comma-separated list (in table order), or all of them. `nginx` is added when
    another profile is chosen, because every ratio is relative to it."""
    if not names:
        return list(PROFILES)
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - {p.name for p in PROFILES}
    if unknown:
        raise ValueError(f"unknown profile(s) {sorted(unknown)}; known: {[p.name for p in PROFILES]}")
    wanted.add("nginx")
    return [p for p in PROFILES if p.name in wanted]

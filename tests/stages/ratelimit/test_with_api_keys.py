"""The limiter and brute-force protection with the real api_key authenticator and consumer plans."""

from __future__ import annotations

from pathlib import Path

import orjson

from stockade.security import keys
from tests.identity.support import keyed_gateway
from tests.stages.ratelimit.sfv import parse_list

STAGES = """
- use: brute_force
  config:
    per_ip: {free_failures: 2, lockout_after: 3, lockout_seconds: 120}
- use: api_key
- use: rate_limit
  config:
    limits: [{name: standard, rate: "2/hour", key: consumer}]
    plans:
      gold: [{name: gold, rate: "4/hour", key: consumer}, {name: gold-keys, rate: "3/hour", key: api_key}]
"""


def test_consumer_plan_selects_limits_and_api_key_is_a_key(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path, STAGES) as env:
        first, second = env.issue(), env.issue()  # alice, plan gold (see tests/identity/support.py)
        statuses = [env.get(X_API_Key=first.secret)[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]  # this key's 3/hour
        status, headers, _ = env.get(X_API_Key=second.secret)
        assert status == 200 and parse_list(headers["ratelimit"])["gold"]["r"] == 0  # the consumer's 4th of 4
        assert list(parse_list(headers["ratelimit-policy"])) == ["gold", "gold-keys"]
        status, headers, body = env.get(X_API_Key=second.secret)
        assert status == 429 and orjson.loads(body)["reason"] == "rate_limit.exceeded"


def test_guessing_keys_locks_the_client_ip_out(tmp_path: Path) -> None:
    with keyed_gateway(tmp_path, STAGES) as env:
        issued = env.issue()
        guesses = [env.get(X_API_Key=keys.generate())[0] for _ in range(3)]  # well-formed, unknown keys
        assert guesses == [401, 401, 401]
        status, headers, body = env.get(X_API_Key=issued.secret)  # even a valid key, from this address
        assert (status, headers["retry-after"], orjson.loads(body)["reason"]) == (429, "120", "auth.locked_out")
        env.gw.advance(120)
        assert env.get(X_API_Key=issued.secret)[0] == 200

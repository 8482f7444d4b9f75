"""Pools by upstream: the same pool for the same config object, a new one once a reload has closed it."""

from __future__ import annotations

import pytest

from stockade.clock import FakeClock
from stockade.config.models import Upstream
from stockade.proxy.upstream import PoolManager


@pytest.mark.parametrize(
    "order",
    [["a", "a", "b", "a"], ["b", "a", "b", "b", "a"], ["a", "a2", "a"]],
    ids=["switch-back", "alternate", "equal-config-another-object"],
)
def test_each_spec_gets_its_own_pool_whatever_was_asked_last(order: list[str]) -> None:
    specs = {
        "a": Upstream(url="http://127.0.0.1:9001"),
        "a2": Upstream(url="http://127.0.0.1:9001"),  # equal settings: the same pool, by key
        "b": Upstream(url="http://127.0.0.1:9002/base"),
    }
    pools = PoolManager(FakeClock())
    got = [pools.get(specs[name]) for name in order]
    for name, pool in zip(order, got, strict=True):
        assert pool.port == (9002 if name == "b" else 9001)
        assert pool is pools.get(specs[name])
    assert len(pools.pools) == len({specs[n].url for n in order})


def test_a_pool_closed_by_a_reload_is_never_handed_out_again() -> None:
    spec = Upstream(url="http://127.0.0.1:9001")
    pools = PoolManager(FakeClock())
    first = pools.get(spec)
    pools.retain([])  # a reload whose routes no longer use it
    assert first.closed
    second = pools.get(spec)  # a request of the old runtime, still under way, asks again
    assert second is not first and not second.closed
    assert pools.get(spec) is second

"""The request path reads limits from a slotted copy of the config model: it must carry every field."""

from __future__ import annotations

from dataclasses import fields

from stockade.config.models import Limits
from stockade.proxy.common import HotLimits


def test_hot_limits_has_every_limit_with_its_value() -> None:
    assert {f.name for f in fields(HotLimits)} == set(Limits.model_fields)
    limits = Limits(max_headers=50, header_timeout=3.5, buffer_bytes=8192)
    hot = HotLimits.of(limits)
    assert all(getattr(hot, name) == getattr(limits, name) for name in Limits.model_fields)

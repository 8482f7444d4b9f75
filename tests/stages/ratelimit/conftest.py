"""The test authenticator is registered for these tests only (the registry is explicit, never self-filled)."""

from __future__ import annotations

import pytest

from stockade.stages import BUILTIN_STAGES
from tests.stages.ratelimit.fakeauth import REGISTRY_ENTRY


@pytest.fixture(autouse=True)
def _test_authenticator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN_STAGES, *REGISTRY_ENTRY)

"""One demo (run.py with the API and the gateway) shared by the demo tests of a session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .demo_support import Demo, start_demo, stop_demo


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    d = start_demo(tmp_path_factory.mktemp("demo"))
    yield d
    stop_demo(d)

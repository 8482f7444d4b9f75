"""Operational logging: its level follows the config, at start and on every reload."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from stockade.observability.logs import setup_logging
from stockade.testing import TestUpstream
from tests.conftest import BASIC, GatewayFactory


@pytest.fixture
def stockade_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("stockade")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_a_reload_applies_a_changed_log_level(
    stockade_logger: logging.Logger, make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """SIGHUP said "configuration reloaded" and kept the old level."""
    text = BASIC.replace("{upstream}", upstream.url)
    gw = make_gateway(text)
    setup_logging("info")
    gw.reload(text + "log: {level: debug}\n")
    assert stockade_logger.level == logging.DEBUG
    gw.reload(text + "log: {level: error}\n")
    assert stockade_logger.level == logging.ERROR


def test_a_reload_leaves_logging_it_did_not_set_up_alone(
    stockade_logger: logging.Logger, make_gateway: GatewayFactory, upstream: TestUpstream
) -> None:
    """Embedded (tests, a host application's logging): the level is the host's to set."""
    stockade_logger.handlers[:] = []
    stockade_logger.setLevel(logging.NOTSET)
    text = BASIC.replace("{upstream}", upstream.url)
    gw = make_gateway(text)
    gw.reload(text + "log: {level: error}\n")
    assert stockade_logger.level == logging.NOTSET

"""The profile table (bench/profiles.py) and the gateway configs generated from it (bench/servers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bench.profiles import PROFILES, Profile, select
from bench.servers import stockade_config

from stockade.config.loader import load_config_text
from stockade.testing import TestGateway, TestUpstream


def test_select_everything_by_default() -> None:
    assert select(None) == list(PROFILES)


def test_select_always_adds_the_nginx_reference_in_table_order() -> None:
    assert [p.name for p in select("stockade-headers, direct")] == ["direct", "nginx", "stockade-headers"]


def test_select_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        select("stockade-bare,nope")


def test_profile_names_are_unique() -> None:
    names = [p.name for p in PROFILES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("profile", [p for p in PROFILES if p.kind == "stockade"], ids=lambda p: p.name)
def test_generated_config_is_accepted_by_the_loader(profile: Profile, tmp_path: Path) -> None:
    config = stockade_config(profile, 8080, 9090, tmp_path)
    loaded = load_config_text(yaml.safe_dump(config), source=str(tmp_path / "stockade.yaml"), base_dir=tmp_path, env={})
    assert loaded.config.workers == 1
    assert loaded.config.admin.enabled is False
    want_log = str(tmp_path / "decisions.log") if profile.decision_log else "off"
    assert loaded.config.log.decisions == want_log
    assert [s.use for s in loaded.config.routes[0].stages] == [s["use"] for s in profile.stages]


@pytest.mark.parametrize(
    "profile", [p for p in PROFILES if p.kind == "stockade" and p.expect_headers], ids=lambda p: p.name
)
def test_expected_headers_are_what_the_gateway_sends(profile: Profile, tmp_path: Path) -> None:
    """The probe's expectations must hold for a real gateway, or `make bench` would refuse to start."""
    with TestUpstream() as up:
        config = stockade_config(profile, 0, up.port, tmp_path)
        config["log"] = {"decisions": "off"}
        with TestGateway(yaml.safe_dump(config)) as gw:
            status, headers, _ = gw.request("GET", "/api/items/42")
    assert status == 200
    for name, want in profile.expect_headers.items():
        assert headers.get(name) == want, name

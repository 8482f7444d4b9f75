"""Pepper and KEK loading: zero-setup generation (0600), environment precedence, validation."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from stockade.config.models import Secrets as SecretsConfig
from stockade.security.secrets import SecretsError, load_secrets

B64_32 = base64.b64encode(b"\x07" * 32).decode()


def test_defaults_are_generated_once_private_and_stable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = load_secrets(SecretsConfig(), tmp_path, env={})
    second = load_secrets(SecretsConfig(), tmp_path, env={})
    assert first.pepper == second.pepper and len(first.pepper) == 32
    assert first.keyring.ids == ("k1",)
    for name in ("pepper", "kek"):
        assert stat.S_IMODE((tmp_path / ".stockade" / name).stat().st_mode) == 0o600
    assert "generated pepper" in caplog.text
    assert first.pepper.hex() not in caplog.text and base64.b64encode(first.pepper).decode() not in caplog.text
    assert "Secrets(keyring=('k1',))" == repr(first)


def test_environment_wins_over_files(tmp_path: Path) -> None:
    env = {"STOCKADE_PEPPER": B64_32, "STOCKADE_KEK": f"new:{B64_32},old:{base64.b64encode(b'x' * 32).decode()}"}
    loaded = load_secrets(SecretsConfig(pepper_file="nope", kek_file="nope"), tmp_path, env=env)
    assert loaded.pepper == b"\x07" * 32
    assert loaded.keyring.ids == ("new", "old") and loaded.keyring.active == "new"
    assert not (tmp_path / ".stockade").exists()


def test_configured_files_are_read_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "p").write_text(B64_32 + "\n")
    (tmp_path / "k").write_text(f"# rotated 2024\nk2:{B64_32}\n")
    loaded = load_secrets(SecretsConfig(pepper_file="p", kek_file="k"), tmp_path, env={})
    assert loaded.pepper == b"\x07" * 32 and loaded.keyring.active == "k2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STOCKADE_PEPPER": base64.b64encode(b"short").decode()}, "at least 32"),
        ({"STOCKADE_PEPPER": "!!not base64!!"}, "not valid base64"),
        ({"STOCKADE_KEK": "no-colon"}, "id:base64key"),
        ({"STOCKADE_KEK": f"k1:{base64.b64encode(b'x' * 16).decode()}"}, "32 bytes"),
        ({"STOCKADE_KEK": f"k1:{B64_32},k1:{B64_32}"}, "twice"),
    ],
    ids=["short-pepper", "bad-base64", "kek-format", "kek-short", "kek-duplicate"],
)
def test_bad_material_is_refused_without_echoing_it(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(SecretsError, match=message) as info:
        load_secrets(SecretsConfig(), tmp_path, env={"STOCKADE_PEPPER": B64_32, "STOCKADE_KEK": f"k:{B64_32}", **env})
    for value in env.values():
        assert value.split(":")[-1] not in str(info.value) or len(value) < 8


@pytest.mark.parametrize("config", [SecretsConfig(pepper_file="missing"), SecretsConfig(generate=False)])
def test_missing_files_are_errors_when_not_generated(tmp_path: Path, config: SecretsConfig) -> None:
    with pytest.raises(SecretsError, match="does not exist"):
        load_secrets(config, tmp_path, env={})

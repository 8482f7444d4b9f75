"""`stockade secrets reseal`: its report, its audit trail, and its refusals with the exit codes of the other groups."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.security.crypto import Keyring, kek_id
from stockade.security.envelopes import ResealReport
from stockade.storage import storage_from_url
from stockade.storage.base import Store
from stockade.storage.records import AdminChange, SigningKey
from tests.ratelimit.redisutil import free_port

T0 = 1_700_000_000.0
KEYS = {"k0": b"\x00" * 32, "k1": b"\x01" * 32, "k2": b"\x02" * 32}


def entry(kid: str) -> str:
    return f"{kid}:{base64.b64encode(KEYS[kid]).decode()}"


def setup(tmp: Path, *keks: str, storage: str = "sqlite:///stockade.db", kek_file: bool = True) -> str:
    (tmp / "pepper").write_text(base64.b64encode(b"p" * 32).decode())
    if kek_file:
        (tmp / "kek").write_text(",".join(entry(k) for k in keks))
    path = tmp / "stockade.yaml"
    path.write_text(f'storage: "{storage}"\nsecrets: {{pepper_file: pepper, kek_file: kek}}\nroutes: []\n')
    return str(path)


def with_store(tmp: Path, op: object) -> object:
    store = storage_from_url("sqlite:///stockade.db", base_dir=tmp)

    async def go() -> object:
        try:
            return await op(store)  # type: ignore[operator]
        finally:
            await store.close()

    return asyncio.run(go())


def add_keys(tmp: Path, **sealed_under: str) -> None:
    async def add(store: Store) -> None:
        for kid, kek in sealed_under.items():
            envelope = Keyring({kek: KEYS[kek]}, kek).seal(b"pem", aad=kid.encode())
            await store.add_signing_key(SigningKey(kid, "ES256", {}, envelope, "next", T0), actor="test", at=T0)

    with_store(tmp, add)


def invoke(config: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["secrets", "reseal", "--config", config])
    return result.exit_code, result.output


def test_reseal_reports_each_kind_and_kek_and_records_who(tmp_path: Path) -> None:
    config = setup(tmp_path, "k1")
    add_keys(tmp_path, sig_a="k1", sig_b="k1")
    assert invoke(config)[1].splitlines() == [
        "signing_key: 0 re-sealed under KEK 'k1', 2 already were",
        "KEK ids in use: k1 (2)",
    ]
    setup(tmp_path, "k2", "k1")
    code, out = invoke(config)
    assert code == 0, out
    assert out.splitlines() == [
        "signing_key: 2 re-sealed under KEK 'k2', 0 already were",
        "KEK ids in use: k2 (2)",
        "loaded but sealing nothing: k1 (drop from every node's keyring, then restart)",
    ]
    changes: list[AdminChange] = with_store(tmp_path, lambda s: s.list_admin_changes(limit=2))  # type: ignore[assignment]
    assert {(c.action, c.actor.startswith("cli:"), dict(c.detail)["to_kek"]) for c in changes} == {
        ("signing_key.reseal", True, "k2")
    }
    keys: list[SigningKey] = with_store(tmp_path, lambda s: s.list_signing_keys())  # type: ignore[assignment]
    assert {kek_id(k.private_key) for k in keys} == {"k2"}


def test_reseal_of_an_empty_store_says_so(tmp_path: Path) -> None:
    assert invoke(setup(tmp_path, "k1")) == (
        0,
        "signing_key: 0 re-sealed under KEK 'k1', 0 already were\nKEK ids in use: none\n",
    )


@pytest.mark.parametrize(
    ("keks", "storage", "kek_file", "code", "message"),
    [
        (("k2",), None, True, 2, "signing_key sig_a is sealed under KEK 'k1', which is not loaded: load 'k1' again"),
        (("k2", "k1"), None, False, 2, "kek does not exist"),  # never generated: a made-up KEK would lose the keys
        (("k1",), "postgresql://postgres@127.0.0.1:{port}/none", True, 3, "storage:"),
    ],
    ids=["kek-not-loaded", "no-kek-file", "store-unreachable"],
)
def test_reseal_refusals(
    tmp_path: Path, keks: tuple[str, ...], storage: str | None, kek_file: bool, code: int, message: str
) -> None:
    add_keys(tmp_path, sig_a="k1")
    url = (storage or "sqlite:///stockade.db").format(port=free_port())
    result = invoke(setup(tmp_path, *keks, storage=url, kek_file=kek_file))
    assert result[0] == code and message in result[1], result
    assert "Traceback" not in result[1]
    keys: list[SigningKey] = with_store(tmp_path, lambda s: s.list_signing_keys())  # type: ignore[assignment]
    assert kek_id(keys[0].private_key) == "k1"  # nothing written
    assert not (tmp_path / ".stockade").exists()


def test_reseal_that_could_not_finish_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def stuck(*_: object, **__: object) -> ResealReport:
        return ResealReport("k2", Counter(), Counter(), Counter({"k1": 1, "k2": 3}))

    monkeypatch.setattr("stockade.cli.secrets.reseal", stuck)
    code, out = invoke(setup(tmp_path, "k2", "k1"))
    assert code == 1 and "KEK ids in use: k1 (1), k2 (3)" in out and "run `stockade secrets reseal` again" in out


def test_reseal_help_tells_the_rotation_steps() -> None:
    out = CliRunner().invoke(cli, ["secrets", "reseal", "--help"]).output
    assert "new KEK first" in out and "stockade secrets reseal" in out and "drop it" in out
    assert "secrets  " in CliRunner().invoke(cli, ["--help"]).output


# -- a KEK that is lost -------------------------------------------------------------------------------------------


def signing_keys(tmp: Path) -> dict[str, tuple[str, float | None]]:
    keys: list[SigningKey] = with_store(tmp, lambda s: s.list_signing_keys())  # type: ignore[assignment]
    return {k.kid: (k.state, k.not_after) for k in keys}


def test_a_lost_kek_is_forgotten_only_when_asked_and_only_its_keys(tmp_path: Path) -> None:
    """With k1 gone for good, start-up refused (a live envelope needs k1) and nothing could end that: the keys
    sealed under it are retired, so no node needs to open them and rotation makes a new one."""
    config = setup(tmp_path, "k2")
    add_keys(tmp_path, lost_a="k1", lost_b="k1", kept="k2")
    dry = CliRunner().invoke(cli, ["secrets", "forget-kek", "k1", "--config", config])
    assert dry.exit_code == 1 and "lost_a" in dry.output and "--yes" in dry.output
    assert {kid: state for kid, (state, _) in signing_keys(tmp_path).items()} == {
        "lost_a": "next",
        "lost_b": "next",
        "kept": "next",
    }
    done = CliRunner().invoke(cli, ["secrets", "forget-kek", "k1", "--yes", "--config", config])
    assert done.exit_code == 0, done.output
    assert "signing_key: 2 retired" in done.output
    after = signing_keys(tmp_path)
    assert after["kept"] == ("next", None)
    assert after["lost_a"][0] == after["lost_b"][0] == "retired"
    assert invoke(config) == (0, "signing_key: 0 re-sealed under KEK 'k2', 1 already were\nKEK ids in use: k2 (1)\n")


@pytest.mark.parametrize(
    ("keks", "kek", "code", "says"),
    [
        (("k2", "k1"), "k1", 2, "is loaded"),  # not lost: re-seal it instead
        (("k2",), "k9", 1, "nothing is sealed under KEK 'k9'"),
    ],
    ids=["loaded", "unknown"],
)
def test_forget_kek_refuses_what_is_not_lost(
    tmp_path: Path, keks: tuple[str, ...], kek: str, code: int, says: str
) -> None:
    config = setup(tmp_path, *keks)
    add_keys(tmp_path, sig="k1")
    result = CliRunner().invoke(cli, ["secrets", "forget-kek", kek, "--yes", "--config", config])
    assert result.exit_code == code and says in result.output
    assert signing_keys(tmp_path)["sig"][0] == "next"

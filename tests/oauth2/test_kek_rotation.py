"""KEK rotation as docs/identity.md tells it, end to end: new KEK first, `stockade secrets reseal`, old KEK dropped;
and what happens when the old KEK is dropped without the reseal."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stockade.cli import cli
from stockade.clock import FakeClock
from stockade.config.loader import load_config
from stockade.errors import ConfigError
from stockade.pipeline.stage import Services
from stockade.runtime import build_runtime
from stockade.security import jose
from stockade.security.secrets import verify_store_secrets
from tests.oauth2.flow import CONFIG, basic, call_books, create_client, get_token, oauth_gateway, post_form

SECRETS = "secrets: {pepper_file: pepper, kek_file: kek, generate: false}\n"
K1 = f"k1:{base64.b64encode(b'1' * 32).decode()}"
K2 = f"k2:{base64.b64encode(b'2' * 32).decode()}"


def keks(tmp: Path, *entries: str) -> None:
    (tmp / "kek").write_text("\n".join(entries) + "\n")


def start_up_check(tmp: Path) -> None:
    """What `stockade serve` does before it listens: build the runtime, then check the secrets against the store."""
    services = Services(clock=FakeClock())
    build_runtime(load_config(tmp / "stockade.yaml", env={}), services)

    async def check() -> None:
        try:
            await verify_store_secrets(services)
        finally:
            await services.close()

    asyncio.run(check())


def reseal(tmp: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(tmp / "stockade.yaml"), "secrets", "reseal"])
    return result.exit_code, result.output


@pytest.fixture
def issued(tmp_path: Path) -> tuple[str, str, str]:
    """A store whose signing key was sealed under k1: (client id, secret, a token signed with that key)."""
    (tmp_path / "pepper").write_text(base64.b64encode(b"p" * 32).decode())
    keks(tmp_path, K1)
    with oauth_gateway(tmp_path, SECRETS + CONFIG) as (gw, _up, config):
        client_id, secret = create_client(config, "--name", "rot", "--scopes", "books:read")
        assert secret is not None
        token = get_token(gw, client_id, secret)
        assert call_books(gw, token)[0] == 200
    return client_id, secret, token


def test_the_documented_kek_rotation_keeps_tokens_issued_and_verified(
    tmp_path: Path, issued: tuple[str, str, str]
) -> None:
    client_id, secret, first = issued
    keks(tmp_path, K2, K1)  # 1. the new KEK first, the old one after it, on every node
    start_up_check(tmp_path)
    with oauth_gateway(tmp_path, SECRETS + CONFIG) as (gw, _up, _config):
        assert call_books(gw, get_token(gw, client_id, secret))[0] == 200
    code, out = reseal(tmp_path)  # 2. re-seal
    assert code == 0, out
    assert out.splitlines() == [
        "signing_key: 1 re-sealed under KEK 'k2', 0 already were",
        "KEK ids in use: k2 (1)",
        "loaded but sealing nothing: k1 (drop from every node's keyring, then restart)",
    ]
    assert reseal(tmp_path)[1].splitlines()[0] == "signing_key: 0 re-sealed under KEK 'k2', 1 already were"
    keks(tmp_path, K2)  # 3. drop the old KEK
    start_up_check(tmp_path)
    with oauth_gateway(tmp_path, SECRETS + CONFIG) as (gw, _up, _config):
        fresh = get_token(gw, client_id, secret)
        assert jose.parse(fresh).header["kid"] == jose.parse(first).header["kid"]  # the same key, sealed anew
        assert call_books(gw, fresh)[0] == 200
        assert call_books(gw, first)[0] == 200  # tokens issued before the rotation still verify


def test_dropping_the_old_kek_without_reseal_is_refused_at_start_up(
    tmp_path: Path, issued: tuple[str, str, str]
) -> None:
    """It started cleanly and /readyz said ready; the first token request was a 500, every later one a 503 `no
    signing key`, until the key's rotation a month later."""
    keks(tmp_path, K2, K1)
    start_up_check(tmp_path)
    keks(tmp_path, K2)
    with pytest.raises(ConfigError) as info:
        start_up_check(tmp_path)
    [problem] = info.value.problems
    assert problem.startswith("secrets: signing_key sig_") and "sealed under KEK 'k1', which is not loaded" in problem
    assert "'k1' again after the active KEK" in problem and "stockade secrets reseal" in problem


def test_a_signing_key_this_node_cannot_open_is_a_503_and_an_error_log(
    tmp_path: Path, issued: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Past start-up (a store unreachable then, or a key sealed by a node with another keyring), the CryptoError
    escaped the key reload: a 500 `handler.error` with a traceback, then 503s that said nothing of why."""
    client_id, secret, first = issued
    keks(tmp_path, K2)
    with oauth_gateway(tmp_path, SECRETS + CONFIG) as (gw, _up, _config):
        for _ in range(2):
            status, _, doc = post_form(
                gw, "/oauth2/token", {"grant_type": "client_credentials"}, basic(client_id, secret)
            )
            assert (status, doc.get("error")) == (503, "temporarily_unavailable")
        assert call_books(gw, first)[0] == 200  # verification needs only the public key
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot be opened" in errors[0] and "'k1'" in errors[0], errors
    assert "stockade secrets reseal" in errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["single", "supervisor"])
def test_serve_refuses_to_start_naming_the_missing_kek(
    tmp_path: Path, issued: tuple[str, str, str], workers: int
) -> None:
    keks(tmp_path, K2)
    port = free_port()
    served = tmp_path / "serve.yaml"
    listen = f"listen: {{host: 127.0.0.1, port: {port}}}\nadmin: {{host: 127.0.0.1, port: {port + 1}}}\n"
    listen += f"workers: {workers}\n"
    served.write_text(listen + (tmp_path / "stockade.yaml").read_text())
    stockade = str(Path(sys.executable).parent / "stockade")
    result = subprocess.run([stockade, "serve", "--config", str(served)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "sealed under KEK 'k1', which is not loaded" in result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    """A port in 25000-25998 with nothing on it or the next one (the gateway must refuse before it listens)."""
    for port in range(25000 + secrets.randbelow(900), 25999):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")

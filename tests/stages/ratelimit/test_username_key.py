"""The key login usernames are counted under."""

from __future__ import annotations

from pathlib import Path

from stockade.testing import Reply, gateway_with_upstream
from tests.stages.ratelimit.test_brute_force import LOGIN, login


def test_memory_backends_need_no_pepper_and_keep_their_key_across_reloads(tmp_path: Path) -> None:
    """A read-only config directory or `generate: false` without a pepper refused a login route (exit 2) once
    usernames were keyed with the pepper - which a memory:// backend, living and dying with the process, never
    needed."""
    (tmp_path / ".stockade").write_text("a file where the secrets directory would go: nothing can be generated")
    text = "secrets: {generate: false}\n" + LOGIN
    with gateway_with_upstream(text, base_dir=tmp_path) as (gw, up):
        up.reply("/login", Reply(401))
        assert [login(gw, "ceo@example.com")[0] for _ in range(3)] == [401, 401, 429]
        gw.reload(text.replace("{upstream}", up.url))
        assert login(gw, "ceo@example.com")[0] == 429

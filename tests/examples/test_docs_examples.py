"""Code the documentation shows is run, so it cannot drift from what the package does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def python_block(doc: Path, heading: str) -> str:
    """The first ```python block under a Markdown heading."""
    text = doc.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    found = re.search(r"\n```python\n(.*?)\n```\n", section, re.DOTALL)
    assert found is not None, f"no python block under {heading!r} in {doc}"
    return found.group(1)


def test_the_policy_test_in_docs_asgi_runs_and_passes() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(python_block(ROOT / "docs" / "asgi.md", "## Testing your policy"), "docs/asgi.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_") and callable(fn)]
    assert len(tests) == 1
    for test in tests:
        test()

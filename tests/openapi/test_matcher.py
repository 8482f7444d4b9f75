"""Path matching: literal before templated, partly templated segments, backtracking, cost bounded by depth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stockade.openapi import matcher
from stockade.openapi.matcher import PathTrie, TemplateError
from stockade.openapi.spec import Options, Spec


def _trie(*templates: str) -> PathTrie[str]:
    trie: PathTrie[str] = PathTrie()
    for t in templates:
        trie.add(t, "get", t)
    return trie


@pytest.mark.parametrize(
    ("path", "template", "params"),
    [
        ("/pets/mine", "/pets/mine", {}),
        ("/pets/7", "/pets/{id}", {"id": "7"}),
        ("/pets/7/toys", "/pets/{id}/toys", {"id": "7"}),
        ("/files/report.final.pdf", "/files/{name}.{ext}", {"name": "report", "ext": "final.pdf"}),
        ("/files/readme", "/files/{path}", {"path": "readme"}),
        ("/a/b/c", "/a/{x}/c", {"x": "b"}),  # /a/b/{y} exists but needs a 4th segment: backtrack
        ("/v2.1/x", "/v{major}.{minor}/x", {"major": "2", "minor": "1"}),
    ],
)
def test_match_picks_the_most_specific_template(path: str, template: str, params: dict[str, str]) -> None:
    trie = _trie(
        "/pets/mine", "/pets/{id}", "/pets/{id}/toys", "/files/{name}.{ext}", "/files/{path}", "/a/{x}/c",
        "/a/b/{y}/d", "/v{major}.{minor}/x",
    )  # fmt: skip
    assert trie.match(path, "get") == (template, params)


@pytest.mark.parametrize("path", ["/pets", "/pets/", "/pets/7/toys/1", "/nope", "/files/", "/a/b/c/e"])
def test_no_match(path: str) -> None:
    assert _trie("/pets/{id}", "/pets/{id}/toys", "/files/{f}", "/a/{x}/c").match(path, "get") is None


def test_head_falls_back_to_get_only() -> None:
    trie = _trie("/x")
    assert trie.match("/x", "head") is not None
    assert trie.match("/x", "post") is None


@pytest.mark.parametrize("template", ["/a/{x", "/a/{}.json", "x/y"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        _trie(template)


def _big_spec(tmp_path: Path, n: int) -> Path:
    paths = []
    for i in range(n // 4):
        base = f"/r{i}"
        paths.append(f"  {base}:\n    get: {{}}\n    post: {{}}\n")
        paths.append(f"  {base}/{{id}}:\n    get: {{}}\n    delete: {{}}\n")
    path = tmp_path / f"spec{n}.yaml"
    path.write_text("openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n" + "".join(paths))
    return path


def test_matching_cost_does_not_grow_with_the_operation_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted in trie nodes visited, not time: the same path costs the same in a 20- and a 200-operation spec."""
    visits: list[int] = []
    walk = matcher._walk

    def counting(*args: Any) -> Any:
        visits.append(1)
        return walk(*args)

    monkeypatch.setattr(matcher, "_walk", counting)
    costs = {}
    for n in (20, 200):
        spec = Spec(_big_spec(tmp_path, n), Options())
        assert len(spec.operations) == n
        visits.clear()
        assert spec.match("/r3/42", "DELETE") is not None
        assert spec.match("/r3/42/x", "GET") is None
        costs[n] = len(visits)
    assert costs[20] == costs[200] <= 8

"""Loading specs: a broken spec is a config error naming the spec file and the JSON pointer of the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stockade.errors import ConfigError
from stockade.openapi.loader import SpecError
from stockade.openapi.spec import SHARED_KEY, Options, Spec, load_spec
from stockade.testing import TestGateway

HEAD = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\n"


def _spec(tmp_path: Path, body: str, name: str = "api.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "pointer", "words"),
    [
        (
            "paths: {/a: {post: {requestBody: {content: {application/json: "
            "{schema: {type: string, pattern: '(?=x)'}}}}}}}",
            "#/paths/~1a/post/requestBody/content/application~1json/schema/pattern",
            "linear-time",
        ),
        (
            "paths: {/a: {get: {parameters: [{$ref: '#/components/parameters/nope'}]}}}",
            "#/paths/~1a/get/parameters/0/$ref",
            "does not resolve",
        ),
        (
            "paths: {/a: {get: {parameters: [{$ref: 'https://evil.example/p.yaml'}]}}}",
            "#/paths/~1a/get/parameters/0/$ref",
            "remote reference",
        ),
        ("paths: {/a: {get: {parameters: [{name: x, in: body}]}}}", "#/paths/~1a/get/parameters/0/in", "location"),
        (
            "paths: {/a: {get: {parameters: [{name: x, in: query, style: matrix}]}}}",
            "#/paths/~1a/get/parameters/0/style",
            "not allowed",
        ),
        (
            "paths: {'/a/{x}': {get: {}}, '/a/{y}': {get: {}}}",
            "#/paths/~1a~1{y}",
            "same operation",
        ),
        (
            "components: {parameters: {p: {$ref: '#/components/parameters/p'}}}\n"
            "paths: {/a: {get: {parameters: [{$ref: '#/components/parameters/p'}]}}}",
            "#/components/parameters/p",
            "circular",
        ),
        (
            "paths: {/a: {post: {requestBody: {content: {application/json: {schema: {$ref: 'missing.yaml#/X'}}}}}}}",
            "#/paths/~1a/post/requestBody/content/application~1json/schema/$ref",
            "cannot load",
        ),
        (
            "paths: {/a: {post: {requestBody: {content: "
            "{application/json: {}, 'Application/JSON; charset=utf-8': {}}}}}}",
            "#/paths/~1a/post/requestBody/content/Application~1JSON; charset=utf-8",
            "declared twice",  # one key by essence: which schema applies would be a guess
        ),
        ("paths: {/a: {post: {requestBody: {content: {json: {}}}}}}", "#/paths/~1a/post/requestBody/content", "json"),
    ],
    ids=[
        "lookahead-pattern",
        "dangling-ref",
        "remote-ref",
        "bad-location",
        "bad-style",
        "duplicate-template",
        "circular-ref",
        "missing-file",
        "media-type-twice",
        "not-a-media-type",
    ],
)
def test_broken_spec_names_file_and_pointer(tmp_path: Path, body: str, pointer: str, words: str) -> None:
    path = _spec(tmp_path, body)
    with pytest.raises(SpecError) as info:
        Spec(path, Options())
    message = str(info.value)
    assert str(path.resolve()) + pointer in message
    assert words in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("swagger: '2.0'\n", "Swagger 2.0"),
        ("openapi: 4.0.0\n", "unsupported OpenAPI version"),
        ("openapi: 3.1.0\npaths: [\n", "YAML syntax error at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_unsupported_documents_are_refused(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=words):
        Spec(path, Options())


def test_external_file_errors_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "common.yaml").write_text("Bad: {type: string, pattern: '(a)\\1'}\n")
    path = _spec(
        tmp_path,
        "paths: {/a: {post: {requestBody: {content: {application/json: {schema: {$ref: 'common.yaml#/Bad'}}}}}}}",
    )
    with pytest.raises(SpecError) as info:
        Spec(path, Options())
    assert f"{(tmp_path / 'common.yaml').resolve()}#/Bad/pattern" in str(info.value)


def test_json_specs_load_too(tmp_path: Path) -> None:
    path = tmp_path / "api.json"
    path.write_text('{"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"get": {}}}}')
    assert Spec(path, Options()).match("/a", "GET") is not None


def test_config_error_names_route_stage_spec_and_pointer(tmp_path: Path) -> None:
    _spec(tmp_path, "paths: {/a: {get: {parameters: [{name: x, in: query, schema: {pattern: '(?<=a)b'}}]}}}")
    config = """
routes:
  - id: api
    match: {path: "/**"}
    upstream: http://127.0.0.1:9
    stages:
      - use: anonymous
      - use: openapi
        config: {spec: api.yaml}
"""
    with pytest.raises(ConfigError) as info:
        TestGateway(config, base_dir=tmp_path)
    problem = info.value.problems[0]
    assert "route 'api'" in problem and "stage 'openapi'" in problem
    assert "api.yaml#/paths/~1a/get/parameters/0/schema/pattern" in problem


def test_compiled_spec_is_shared_and_recompiled_when_the_file_changes(tmp_path: Path) -> None:
    path = _spec(tmp_path, "paths: {/a: {get: {}}}")
    shared: dict[str, object] = {}
    first = load_spec(path, Options(), shared)
    assert load_spec(tmp_path / "." / "api.yaml", Options(), shared) is first
    assert load_spec(path, Options(strict=True), shared) is not first  # options are part of the key
    path.write_text(HEAD + "paths: {/b: {get: {}}}\n")
    import os

    os.utime(path, ns=(1, 1))
    second = load_spec(path, Options(), shared)
    assert second is not first and second.match("/b", "GET") is not None
    assert SHARED_KEY in shared


def test_unused_component_schemas_are_checked_too(tmp_path: Path) -> None:
    path = _spec(tmp_path, "paths: {}\ncomponents: {schemas: {Unused: {type: string, pattern: '(?<=a)b'}}}\n")
    with pytest.raises(SpecError, match="components/schemas/Unused/pattern"):
        Spec(path, Options())

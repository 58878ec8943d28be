"""Every example of docs/spec.md is a whole spec: each validates, runs on the fake server and
replays from the cache alone, so the reference cannot drift from the language."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from codeclm.programs.engine.run import RunOptions, run_spec
from codeclm.programs.lang.spec import load_spec
from conftest import REPO
from fake_openai_server import FakeOpenAIServer

EXAMPLES = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "spec.md").read_text(), re.DOTALL)


def test_the_reference_has_an_example_for_every_node_type_and_parser():
    from codeclm.programs.lang.nodes import NODE_KEYS
    from codeclm.programs.lang.parsing import PARSERS

    text = "\n".join(EXAMPLES)
    for kind in NODE_KEYS:
        assert re.search(rf"type: {kind}\b", text), f"no example of a {kind} node"
    for parser in PARSERS:
        if parser != "text":  # the default
            assert re.search(rf"parse: (\{{name: )?{parser}\b", text), f"no example of parse: {parser}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A copy of the layout the examples assume: specs/ beside prompts/ and seeds/."""
    root = tmp_path_factory.mktemp("reference")
    for name in ("prompts", "seeds"):
        (root / name).symlink_to(REPO / name)
    (root / "specs").mkdir()
    return root


@pytest.mark.parametrize("text", EXAMPLES, ids=[yaml.safe_load(t)["name"] for t in EXAMPLES])
def test_example_validates_runs_and_replays(folder, text):
    data = yaml.safe_load(text)
    path = folder / "specs" / f"{data['name']}.yaml"
    path.write_text(text)
    load_spec(path)  # valid as written
    with FakeOpenAIServer() as server:
        sets = [f"models.{role}.{key}" for role in data.get("models", {})
                for key in (f"model=hosted_vllm/{role}", f"api_base={server.url}")]
        result = run_spec(load_spec(path, sets), RunOptions(out=folder / data["name"], overrides=sets,
                                                           cache_dir=folder / f"{data['name']}-cache"))
    for output in data["outputs"]:
        assert (result.out / f"{output}.jsonl").is_file()
    replay = run_spec(load_spec(path, sets), RunOptions(out=folder / f"{data['name']}-replay", overrides=sets,
                                                        cache_dir=folder / f"{data['name']}-cache",
                                                        cache_mode="replay"))
    assert replay.manifest["totals"]["calls"] == 0
    for output in data["outputs"]:
        assert (replay.out / f"{output}.jsonl").read_bytes() == (result.out / f"{output}.jsonl").read_bytes()


def test_the_template_example_is_the_shipped_template():
    """The reference's template example is prompts/respond.jinja as shipped: it cannot drift."""
    (example,) = re.findall(r"```jinja\n(.*?)```", (REPO / "docs" / "spec.md").read_text(), re.DOTALL)
    assert example == (REPO / "prompts" / "respond.jinja").read_text()

"""The shipped specs reproduce their golden outputs byte for byte (tests/golden/record.py made
them, on the fake server, before the spec language replaced the CodecLM-specific engine), and a
cache filled by that older code replays specs/codeclm.yaml with no model call at all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

from record import ARTIFACTS, BUNDLE, PARAMS, golden_run  # noqa: E402


def assert_same_artifacts(spec: str, out: Path) -> None:
    for name in ARTIFACTS:
        golden = GOLDEN / spec / name
        expected = golden.read_bytes() if golden.is_file() else b""
        made = (out / name).read_bytes() if (out / name).is_file() else b""
        assert made == expected, f"{spec}/{name} differs from its golden file"


@pytest.mark.parametrize("spec", sorted(PARAMS))
def test_shipped_spec_reproduces_its_golden_files(tmp_path, spec):
    with FakeOpenAIServer() as server:
        golden_run(spec, tmp_path / "run", tmp_path / "cache", server.url)
    assert_same_artifacts(spec, tmp_path / "run")


def test_a_cache_filled_by_the_old_engine_replays_codeclm_with_no_model_call(tmp_path):
    from codeclm.programs.artifacts.bundle import import_bundle

    import_bundle(BUNDLE, tmp_path / "cache")
    result = golden_run("codeclm", tmp_path / "run", tmp_path / "cache", "http://127.0.0.1:9/v1", mode="replay")
    assert result.manifest["totals"]["calls"] == 0
    assert_same_artifacts("codeclm", tmp_path / "run")

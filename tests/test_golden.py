"""The shipped specs reproduce their golden outputs byte for byte (tests/golden/record.py made
them, on the fake server, before the spec language replaced the CodecLM-specific engine), and a
cache filled by that older code replays specs/codeclm.yaml with no model call at all."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

from record import ARTIFACTS, BUNDLE, PARAMS, golden_run  # noqa: E402


def in_todays_encoding(golden: Path) -> bytes:
    """A golden file's lines as today's line encoder writes them: the goldens were written with json's
    spaced separators, lines are now compact (orjson: golden/README.md); the same values, keys and order."""
    from codeclm.programs.artifacts.store import dumps

    lines = golden.read_text(encoding="utf-8").splitlines()
    return "".join(dumps(json.loads(line)) + "\n" for line in lines).encode("utf-8")


def assert_same_artifacts(spec: str, out: Path) -> None:
    for name in ARTIFACTS:
        golden = GOLDEN / spec / name
        expected = in_todays_encoding(golden) if golden.is_file() else b""
        made = (out / name).read_bytes() if (out / name).is_file() else b""
        assert made == expected, f"{spec}/{name} differs from its golden file"


def test_only_spaces_change_when_a_golden_file_is_encoded_as_today():
    """What the re-encoding above changes: the spaces after `,` and `:`, nothing else (the goldens hold
    no float written with an exponent, where orjson writes `1e16` for json's `1e+16`)."""
    for golden in sorted(GOLDEN.glob("*/*.jsonl")):
        before, after = golden.read_bytes(), in_todays_encoding(golden)
        assert len(after) <= len(before) and after.replace(b" ", b"") == before.replace(b" ", b""), golden


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


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_either_event_loop_writes_the_same_bytes(tmp_path, monkeypatch, loop):
    """A run's bytes do not depend on the event loop under it (programs/engine/event_loop.py)."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv("CODECLM_EVENT_LOOP", loop)
    with FakeOpenAIServer() as server:
        golden_run("codeclm", tmp_path / "run", tmp_path / "cache", server.url)
    assert_same_artifacts("codeclm", tmp_path / "run")

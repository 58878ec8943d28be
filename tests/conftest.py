"""Shared test helpers: a scripted in-process backend, tiny specs, and runs against them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from codeclm.programs.engine.run import RunOptions, RunResult, run_spec  # noqa: E402
from codeclm.programs.lang.spec import Spec, load_spec  # noqa: E402
from codeclm.programs.models.backends import CallParams, Completion  # noqa: E402
from codeclm.programs.models.cache import CallCache  # noqa: E402
from codeclm.programs.models.hub import ModelHub  # noqa: E402
from fake_openai_server import answer_text  # noqa: E402

SEEDS = [
    "Write a polite reply to a customer whose parcel arrived damaged.",
    "Write a Python function that removes duplicate lines from a file.",
    "Explain why the sky is blue to a ten-year-old.",
    "Plan a three-day trip to Lisbon for someone who likes food.",
]


class ScriptedBackend:
    """A backend answering from a function of the messages; counts and records every call."""

    retry_empty = True

    def __init__(self, name: str, answer=None, delay: float = 0.0):
        self.name = name
        self.answer = answer or (lambda messages: answer_text(messages, name))
        self.delay = delay
        self.calls: list[list[dict[str, str]]] = []

    async def complete(self, messages: list[dict[str, str]], params: CallParams) -> Completion:
        self.calls.append(messages)
        if self.delay:
            await asyncio.sleep(self.delay)
        text = self.answer(messages)
        return Completion(text, "stop", sum(len(m["content"].split()) for m in messages), len(text.split()))

    async def aclose(self) -> None:
        return None


def base_spec(seeds_path: Path, **params: Any) -> dict[str, Any]:
    """specs/codeclm.yaml, small: 4 seeds, a pool of 3, 2 instructions per entry (dataset_size 6)."""
    data = yaml.safe_load((REPO / "specs" / "codeclm.yaml").read_text())
    data.update(name="tiny", prompts=str(REPO / "prompts"))
    data["models"] = {"strong": {"model": "local", "temperature": 0.7, "max_tokens": 64},
                      "target": {"model": "local", "temperature": 0.7, "max_tokens": 32}}
    data["nodes"]["seeds"]["path"] = str(seeds_path)
    data["params"].update({"pool_size": 3, "dataset_size": 6, "max_iterations": 4, "threshold": 3, **params})
    return data


def hand_written(data: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec with its seeds and encoder replaced by hand-written metadata records (no-seed mode)."""
    del data["nodes"]["encode"], data["outputs"]["metadata"]
    data["nodes"]["seeds"] = {"type": "source", "records": records}
    data["nodes"]["augment"]["from"] = "seeds"
    data["nodes"]["augment"]["fields"] = {"use_case": {"choice": "seeds.use_case"},
                                          "skills": {"sample": "seeds.skills", "flatten": True, "unique": True,
                                                     "k": "params.skills_per_entry"}}
    return data


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a codeclm child process: this checkout's folder first (`import cli`), then the
    caller's PYTHONPATH, which names the checkout whose `codeclm` the tests import (a git worktree's, not
    the installed one: with PYTHONPATH set to the checkout alone, a worktree's children ran the installed code)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.fixture
def seeds_file(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}", "instruction": s}) + "\n" for i, s in enumerate(SEEDS)))
    return path


def write_spec(folder: Path, data: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class ScriptedRun:
    """Runs specs against scripted backends that live across runs (so a test can count calls)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.cache_dir = tmp_path / "cache"
        self.backends = {"strong": ScriptedBackend("scripted/strong"), "target": ScriptedBackend("scripted/target")}

    def calls(self) -> int:
        return sum(len(b.calls) for b in self.backends.values())

    def __call__(self, spec: Spec | Path, out: str = "run", mode: str = "live", overrides: list[str] | None = None,
                 concurrency: int | None = None, recorded_run: Path | None = None) -> RunResult:
        if not isinstance(spec, Spec):
            spec = load_spec(spec, overrides or [])
        cache = CallCache(self.cache_dir, mode)
        hub = ModelHub(spec.models, cache, backends=self.backends, concurrency=concurrency)
        hub.backoff_base = 0.01
        options = RunOptions(out=self.tmp_path / out, cache_dir=self.cache_dir, cache_mode=mode,
                             overrides=overrides or [], recorded_run=recorded_run)
        try:
            return run_spec(spec, options, hub)
        finally:
            cache.close()


@pytest.fixture
def scripted(tmp_path: Path) -> ScriptedRun:
    return ScriptedRun(tmp_path)

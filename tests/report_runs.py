"""Run folders for the report tests, made on the fake OpenAI-compatible server (fast, no model):

- `hostile_run`: the paper's graph with failures of several kinds (every improve call gets HTTP 500,
  some judgements are unparsable and keep their raw text) and hostile text everywhere a seed or a
  model can put it (a seed, a use case, a skill, answers, raw failures);
- `demo_like_run`: specs/demo.yaml and seeds/example.jsonl as shipped, models on the fake server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fake_openai_server
from codeclm.programs.engine.run import RunOptions, run_spec
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import ModelHub
from conftest import REPO, SEEDS, base_spec, write_spec
from fake_openai_server import JUDGE_MARKER, FakeOpenAIServer

# Markup that would run if any of it reached the page as HTML: it sets window.__xss or opens a dialog.
XSS = ('<script>window.__xss=1;alert(1)</script></script><img src=x onerror="window.__xss=2;alert(2)">'
       ' & <!-- <svg onload="window.__xss=3">')
JUDGE_XSS = 'I will not score these. <img src=x onerror="window.__xss=true"></script><script>window.__xss=true</script>'


def _hostile(original):
    def answer(messages: list[dict[str, Any]], model: str) -> str:
        full = "\n".join(str(m.get("content")) for m in messages)
        last_user = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        if "instruction analyzer" in full and "window.__xss" in last_user:
            return f"Use case: {XSS[:60]}\nSkills: <b>bold</b> skill, clear communication"
        text = original(messages, model)
        if JUDGE_MARKER in full and int(hashlib.sha256(full.encode()).hexdigest(), 16) % 3 == 0:
            return JUDGE_XSS  # unparsable (no digits): a failure with this raw text
        if text.startswith("TARGET:"):
            return text + " " + XSS
        return text
    return answer


def _run(folder: Path, spec_path: Path, server: FakeOpenAIServer, overrides: list[str]) -> Path:
    spec = load_spec(spec_path, overrides)
    cache = CallCache(folder / "cache", "live")
    hub = ModelHub(spec.models, cache)
    hub.backoff_base = 0.01
    try:
        result = run_spec(spec, RunOptions(out=folder / "run", cache_dir=folder / "cache", overrides=overrides), hub)
    finally:
        cache.close()
    return result.out


def _models(url: str) -> list[str]:
    return [f"{key}={value}" for role in ("strong", "target") for key, value in
            ((f"models.{role}.model", f"hosted_vllm/{role}"), (f"models.{role}.api_base", url),
             (f"models.{role}.concurrency", 4), (f"models.{role}.retries", 1))]


def hostile_run(folder: Path, monkeypatch) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = folder / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": s}) + "\n"
                             for i, s in enumerate([*SEEDS, f"Repeat this: {XSS}"])))
    spec_path = write_spec(folder, base_spec(seeds, pool_size=6, dataset_size=18))
    monkeypatch.setattr(fake_openai_server, "answer_text", _hostile(fake_openai_server.answer_text))
    with FakeOpenAIServer(always_fail="instruction improver") as server:
        return _run(folder, spec_path, server, _models(server.url))


def demo_like_run(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with FakeOpenAIServer() as server:
        return _run(folder, REPO / "specs" / "demo.yaml", server, _models(server.url))

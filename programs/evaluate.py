"""The paper's evaluation: Capacity Recovery Ratio (CRR) on benchmark instruction sets.

A candidate model (the target, or the target after fine-tuning on codeclm's data) and a
reference model (the strong one) answer each benchmark instruction. The spec's judge scores
the two answers at temperature 0, once in each order. The candidate wins only if it scores
higher both times and loses only if it scores lower both times; anything else is a tie.
CRR = (wins + ties) / judged. Items whose calls failed are counted apart, not judged.

Calls go through the same hub and cache as a run: an evaluation resumes, and replays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts.store import (
    check_out_folder,
    claim_folder,
    dumps,
    note_own,
    refuse_foreign,
    write_atomic,
    writing_beside_runs,
)
from .engine import event_loop
from .engine.llm import NodeModule, StepResult, build_module
from .engine.progress import Progress
from .engine.run import item_window, opened_hub
from .errors import EVALUATE_REPLAY_FIX, CodecError, SpecError
from .lang.nodes import JudgeNode
from .lang.seeds import BENCHMARK_FILE, read_seeds
from .lang.spec import Spec
from .models.hub import ModelHub

WIN, TIE, LOSS, FAILED = "win", "tie", "loss", "failed"
FILES = ("eval.jsonl", "eval.json")  # what evaluate writes in its --out


@dataclass
class EvalOptions:
    benchmarks: list[Path]
    candidate: str = "target"
    reference: str = "strong"
    limit: int | None = None  # items per benchmark
    out: Path | None = None
    cache_dir: Path | None = None
    cache_mode: str = "live"
    concurrency: int | None = None
    progress: Progress | None = None


@dataclass
class EvalResult:
    out: Path
    summary: dict[str, dict[str, Any]]  # benchmark (and "all") -> counts and crr
    calls: dict[str, Any] = field(default_factory=dict)


def verdict(candidate_first: tuple[float, float], reference_first: tuple[float, float]) -> str:
    """candidate_first = (candidate, reference) scores with the candidate shown first;
    reference_first = (reference, candidate) with the order swapped."""
    wins = candidate_first[0] > candidate_first[1], reference_first[1] > reference_first[0]
    losses = candidate_first[0] < candidate_first[1], reference_first[1] < reference_first[0]
    return WIN if all(wins) else LOSS if all(losses) else TIE


def tally(verdicts: list[str]) -> dict[str, Any]:
    counts = {kind: verdicts.count(kind) for kind in (WIN, TIE, LOSS, FAILED)}
    judged = counts[WIN] + counts[TIE] + counts[LOSS]
    return {"items": len(verdicts), **counts, "crr": (counts[WIN] + counts[TIE]) / judged if judged else None}


def evaluate(spec: Spec, options: EvalOptions, hub: ModelHub | None = None) -> EvalResult:
    """Answer, judge and tally every benchmark item; write eval.jsonl and eval.json."""
    pairwise_judge(spec)  # first: without one, no --set of a role could make the spec evaluable
    stems = [path.stem for path in options.benchmarks]  # a benchmark is named by its file's stem in the tally
    if "all" in stems:  # the tally's total is "all": a benchmark of that name would be overwritten by it
        raise SpecError(str(options.benchmarks[stems.index("all")]), "a benchmark file named 'all' shares its name "
                        "with the total over every benchmark", hint="rename the file (e.g. all_items.jsonl)")
    twice = next((stem for stem in stems if stems.count(stem) > 1), None)
    if twice is not None:
        paths = [str(path) for path in options.benchmarks if path.stem == twice]
        raise SpecError(paths[-1], f"two benchmark files are named '{twice}' ({', '.join(dict.fromkeys(paths))}): "
                        "their items would be counted as one benchmark, each item twice if it is the same file",
                        hint="give each file once, or rename one")
    for role in (options.candidate, options.reference):
        if role not in spec.models:
            raise SpecError(str(spec.path), f"no model role '{role}' to evaluate",
                            hint=f"roles in models: {', '.join(spec.models)}; add one with "
                                 f"--set models.{role}.model=...")
    if options.candidate == options.reference:
        raise SpecError(str(spec.path), f"--candidate and --reference are both '{options.candidate}': a model "
                        "against itself only measures the judge's position bias",
                        hint="compare two roles, e.g. --candidate target --reference strong")
    _check_out(options.out or Path("runs") / f"{spec.name}-eval-{options.candidate}")  # before any call
    return event_loop.run(_evaluate(spec, options, hub))


def _check_out(out: Path) -> None:
    """As `run` checks its --out: new, empty or codeclm's own, and no eval file there that codeclm did not write."""
    check_out_folder(out)
    refuse_foreign(out, FILES, "evaluate")


def _remove_results(out: Path) -> None:
    """Before the first call, as a run removes its manifest: the previous evaluation's results go, so
    an evaluation that then fails (a replay's miss, Ctrl-C) never leaves them to be read as its own.
    `_check_out` has made sure codeclm wrote any that are there."""
    if not out.is_dir():
        return
    with writing_beside_runs(out):
        for name in ("eval.json", "eval.jsonl"):  # the summary first: without it, no result is claimed
            (out / name).unlink(missing_ok=True)


async def _evaluate(spec: Spec, options: EvalOptions, hub: ModelHub | None) -> EvalResult:
    started = time.time()
    items = [{**item, "benchmark": path.stem} for path in options.benchmarks
             for item in read_seeds(path, "instruction", "id", limit=options.limit, kind=BENCHMARK_FILE)]
    out = options.out or Path("runs") / f"{spec.name}-eval-{options.candidate}"
    _remove_results(out)
    progress = options.progress or Progress(stream=None)
    progress.expect("evaluate", len(items))
    async with opened_hub(spec, options.cache_dir, options.cache_mode, options.concurrency, hub) as live_hub:
        live_hub.replay_fix = EVALUATE_REPLAY_FIX
        evaluator = Evaluator(spec, options, live_hub)
        window = asyncio.Semaphore(item_window(spec, options.concurrency))

        async def one(item: dict[str, Any]) -> dict[str, Any]:
            async with window:
                record = await evaluator.item(item)
            progress.advance("evaluate", record["verdict"] != FAILED)
            return record

        records = await asyncio.gather(*(one(item) for item in items))
        if live_hub.fatal:
            raise live_hub.fatal
        calls = live_hub.summary()
    records.sort(key=lambda r: (r["benchmark"], r["id"]))
    summary = {name: tally([r["verdict"] for r in records if r["benchmark"] == name])
               for name in dict.fromkeys(r["benchmark"] for r in records)}
    summary["all"] = tally([r["verdict"] for r in records])
    _check_out(out)  # again: the folder may have changed while the calls ran
    out = claim_folder(out)
    report = {"candidate": evaluator.describe(options.candidate), "reference": evaluator.describe(options.reference),
              "judge": evaluator.judge_stage.name, "benchmarks": [str(p) for p in options.benchmarks],
              "limit": options.limit, "summary": summary, "calls": calls, "wall_seconds": time.time() - started}
    with writing_beside_runs(out):
        note_own(out, FILES)
        write_atomic(out / "eval.jsonl", "".join(dumps(r) + "\n" for r in records))
        write_atomic(out / "eval.json", dumps(report) + "\n")  # last: its presence says the evaluation finished
    if summary["all"]["crr"] is None:
        raise CodecError(f"no item could be judged: every one failed; see {out / 'eval.jsonl'}")
    return EvalResult(out, summary, calls)


def pairwise_judge(spec: Spec) -> tuple[JudgeNode, Any]:
    """The spec's first pairwise judge, and the node that makes the first answer it compares."""
    judges = [n for n in spec.graph.model_nodes() if isinstance(n, JudgeNode) and n.pair]
    answer = judges[0].pair[0].references()[0].root if judges and judges[0].pair[0].references() else None
    if not judges or answer not in spec.graph.every:
        raise SpecError(str(spec.path), "evaluation needs a pairwise judge node whose pair names the nodes "
                        "that answer", hint="evaluate with the shipped spec by name (`codeclm evaluate codeclm ...`), "
                        "overriding its models with --set")
    return judges[0], spec.graph.every[answer]


class Evaluator:
    """One comparison, built from the spec: its pairwise judge (template and model) at temperature 0,
    as the paper's protocol says, and the node that made the judge's first answer, for both answers."""

    def __init__(self, spec: Spec, options: EvalOptions, hub: ModelHub):
        self.spec, self.hub = spec, hub
        self.judge_stage, answer_node = pairwise_judge(spec)
        self.answer = {side: build_module(dataclasses.replace(answer_node, name=f"answer_{side}"), spec, hub, role)
                       for side, role in (("candidate", options.candidate), ("reference", options.reference))}
        self.judge = build_module(dataclasses.replace(self.judge_stage, temperature=0.0), spec, hub)
        self.scale = spec.graph.static(self.judge_stage.scale)

    def describe(self, role: str) -> dict[str, Any]:
        return {"role": role, "model": self.spec.models[role].model}

    async def item(self, item: dict[str, Any]) -> dict[str, Any]:
        key = f"{item['benchmark']}/{item['id']}"
        record: dict[str, Any] = {"benchmark": item["benchmark"], "id": item["id"],
                                  "instruction": item["instruction"]}
        sides = ("candidate", "reference")
        results = await asyncio.gather(*(self.answer[s].run(key, 0, {"instruction": item["instruction"]})
                                         for s in sides))
        record["answers"] = {s: next(iter(r.values.values()), None) for s, r in zip(sides, results, strict=True)}
        record["calls"] = [c for r in results for c in r.calls]
        failed = next((r.failure(f"answer_{s}") for s, r in zip(sides, results, strict=True) if not r.ok), None)
        if failed:
            return {**record, "verdict": FAILED, "failure": failed}
        judged = await self.both_orders(key, item["instruction"], record["answers"]["candidate"],
                                        record["answers"]["reference"])
        record["calls"] += [c for r in judged for c in r.calls]
        bad = next((r for r in judged if not r.ok), None)
        if bad is not None:
            return {**record, "verdict": FAILED, "failure": bad.failure(self.judge_stage.name)}
        candidate_first, reference_first = ((r.values["score_1"], r.values["score_2"]) for r in judged)
        record["scores"] = {"candidate_first": list(candidate_first), "reference_first": list(reference_first)}
        record["verdict"] = verdict(candidate_first, reference_first)
        return record

    async def both_orders(self, key: str, instruction: str, candidate: str, reference: str) -> list[StepResult]:
        common = {"instruction": instruction, "scale_low": self.scale[0], "scale_high": self.scale[1]}
        module: NodeModule = self.judge
        return list(await asyncio.gather(
            module.run(key, 0, {**common, "answer_1": candidate, "answer_2": reference}),
            module.run(key, 0, {**common, "answer_1": reference, "answer_2": candidate})))

"""Execute a spec: the corpus stages (encode, augment), then per metadata entry decode
and (on demand) Self-Rubrics, then the refine loop per instruction, all concurrently.

The only barrier is the one the method needs: the metadata pool needs every encoding.
Everything else moves as soon as its inputs are ready; the hub bounds calls per model.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import recorded_calls
from .cache import CallCache, default_cache_dir
from .errors import CodecError
from .hub import ModelHub
from .manifest import build_manifest
from .method import DROP, IMPROVE, KEEP_STRONG, KEEP_TARGET, augment, decide, pick_action, sample_slot
from .progress import Progress
from .quality import quality_metrics
from .seeds import read_seeds
from .spec import Spec
from .stages import JudgeStage, LLMStage, StepResult, build_stages
from .store import RunStore


@dataclass
class RunOptions:
    out: Path | None = None
    cache_dir: Path | None = None
    cache_mode: str = "live"  # live | replay | refresh
    seeds: Path | None = None
    limit: int | None = None
    concurrency: int | None = None
    dry_run: bool = False
    overrides: list[str] = field(default_factory=list)
    progress: Progress | None = None
    recorded_run: Path | None = None  # in replay, a run to compare a cache miss with


@dataclass
class RunResult:
    out: Path | None
    counts: dict[str, int]
    manifest: dict[str, Any]
    calls: dict[str, Any]


def run_spec(spec: Spec, options: RunOptions, hub: ModelHub | None = None) -> RunResult:
    """Run a spec to completion and write its run directory (or, dry, count its calls)."""
    return asyncio.run(_run(spec, options, hub))


async def _run(spec: Spec, options: RunOptions, hub: ModelHub | None) -> RunResult:
    async with opened_hub(spec, options.cache_dir, options.cache_mode, options.concurrency, hub,
                          dry_run=options.dry_run) as live_hub:
        manifest = options.recorded_run / "manifest.json" if options.recorded_run else None
        if manifest and manifest.is_file():
            live_hub.recorded = recorded_calls(options.recorded_run)
            live_hub.recorded_code = json.loads(manifest.read_text()).get("code_sha256")
        return await Runner(spec, options, live_hub).run()


@asynccontextmanager
async def opened_hub(spec: Spec, cache_dir: Path | None, cache_mode: str, concurrency: int | None,
                     hub: ModelHub | None = None, dry_run: bool = False) -> AsyncIterator[ModelHub]:
    """The given hub, or one on the spec's cache; closed (connections, cache) at the end."""
    cache = None
    if hub is None:
        cache = CallCache(cache_dir or spec.cache_dir or default_cache_dir(), cache_mode)
        hub = ModelHub(spec.models, cache, concurrency=concurrency, dry_run=dry_run)
    try:
        yield hub
    finally:
        await hub.aclose()
        if cache is not None:
            cache.close()


class Runner:
    def __init__(self, spec: Spec, options: RunOptions, hub: ModelHub):
        self.spec, self.options, self.hub = spec, options, hub
        self.params = spec.params
        self.modules = build_stages(spec, hub)
        self.progress = options.progress or Progress(stream=None)
        # checked here, before any call; made and claimed only at the first write (after the seeds are read)
        self.store = None if options.dry_run else RunStore(options.out or Path("runs") / spec.name,
                                                           protect=options.recorded_run)
        self._rubric_tasks: dict[tuple[str, str], asyncio.Task] = {}
        self._admission = Admission(item_window(spec, options.concurrency))
        self.rubrics: dict[str, list[dict[str, Any]]] = {}

    # -- the whole run ---------------------------------------------------------------------

    async def run(self) -> RunResult:
        started = time.time()
        metadata = await self.corpus_stages()
        if self.store:
            self.store.open_journal()
        decode = self.spec.refine.instructions if self.spec.refine else None
        decoders = [s for s in self.spec.stages_of("decode") if decode in (None, s.name)]
        await asyncio.gather(*(self.decode_all(stage.name, metadata[stage.input]) for stage in decoders))
        await asyncio.gather(*self._rubric_tasks.values())
        if self.hub.fatal:
            raise self.hub.fatal
        counts = self.finish() if self.store else {}
        quality = self.quality() if self.store else None
        manifest = build_manifest(self.spec, self.options, self.hub, counts, time.time() - started,
                                  self.progress, self.store.failure_reasons if self.store else None, quality)
        if self.store:
            self.store.write_json("manifest", manifest)
        return RunResult(self.store.folder if self.store else None, counts, manifest, manifest["calls"])

    async def corpus_stages(self) -> dict[str, list[dict[str, Any]]]:
        """Seeds and hand-written metadata, then encode and augment stages in dependency order."""
        outputs: dict[str, list[dict[str, Any]]] = {}
        if self.spec.metadata is not None:
            outputs["metadata"] = [{"id": f"h{i:04d}", **m, "seed_ids": []} for i, m in enumerate(self.spec.metadata)]
        pending = [s for s in self.spec.stages.values() if s.kind in ("encode", "augment")]
        if any(s.input == "seeds" for s in pending):
            outputs["seeds"] = self.load_seeds()
        while pending:
            ready = [s for s in pending if s.input in outputs]
            if not ready:
                raise CodecError(f"stages {[s.name for s in pending]} wait on inputs no stage makes")
            for stage in ready:
                pending.remove(stage)
                if stage.kind == "encode":
                    outputs[stage.name] = await self.encode_all(stage.name, outputs[stage.input])
                else:
                    outputs[stage.name] = self.augment(stage.name, outputs[stage.input])
        return outputs

    def load_seeds(self) -> list[dict[str, Any]]:
        seeds_spec = self.spec.seeds
        path = self.options.seeds or (seeds_spec.path if seeds_spec else None)
        if path is None:
            raise CodecError("the spec reads seeds but names no seed file: pass --seeds")
        return read_seeds(path, seeds_spec.field if seeds_spec else "instruction",
                          seeds_spec.id_field if seeds_spec else "id", limit=self.options.limit)

    # -- encode and augment ----------------------------------------------------------------

    async def encode_all(self, name: str, seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        module = self.modules[name]
        self.progress.expect(name, len(seeds))

        async def encode(seed: dict[str, Any]) -> dict[str, Any]:
            result = await module.acall(item=seed["id"], instruction=seed["instruction"])
            self.progress.advance(name, result.ok)
            record = {"id": seed["id"], "instruction": seed["instruction"], "seed_ids": [seed["id"]],
                      "calls": result.calls}
            if result.ok:
                return {**record, "status": "ok", **result.values}
            return {**record, "status": "failed", **result.failure(name)}

        records = await asyncio.gather(*(encode(seed) for seed in seeds))
        if self.store:
            self.store.write_jsonl("metadata", records)
        encoded = [r for r in records if r["status"] == "ok"]
        if records and not encoded and not self.options.dry_run:  # a dry run stops where the cache ends
            raise CodecError(f"stage '{name}': all {len(records)} calls failed, the first with: {records[0]['error']}"
                             + (f"; each failure is in {self.store.path('metadata')}" if self.store else ""))
        return encoded

    def augment(self, name: str, metadata: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pool = augment(metadata, self.params["pool_size"], tuple(self.params["skills_per_entry"]), self.spec.seed)
        if not pool and not self.options.dry_run:  # a dry run stops where the cache ends
            raise CodecError(f"stage '{name}': no metadata to augment (every encode failed?)")
        if self.store:
            self.store.write_jsonl("pool", pool)
        return pool

    # -- decode, rubrics, refine -----------------------------------------------------------

    def per_entry(self, entries: int) -> int:
        return self.params["instructions_per_entry"] or math.ceil(self.params["dataset_size"] / max(1, entries))

    async def decode_all(self, name: str, entries: list[dict[str, Any]]) -> None:
        """Decode entry by entry as room frees up: an entry is admitted with room for all its
        instructions, so neither pending tasks nor decoded texts pile up as the dataset grows."""
        count = self.per_entry(len(entries))
        self.progress.expect(name, len(entries))
        running: set[asyncio.Task] = set()
        crashed: list[BaseException] = []

        def forget(task: asyncio.Task) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                crashed.append(task.exception())

        for entry, slot in zip(entries, sample_slot(entries), strict=True):
            await self._admission.enter(count)
            if crashed:
                raise crashed[0]
            task = asyncio.ensure_future(self.decode(name, entry, slot, count))
            running.add(task)
            task.add_done_callback(forget)
        await asyncio.gather(*running)
        if crashed:
            raise crashed[0]

    async def decode(self, name: str, entry: dict[str, Any], slot: int, count: int) -> None:
        """One entry's decode call, then the refine loop of each of its instructions. Holds
        `count` admission places; each instruction hands its place back when it finishes."""
        instructions: list[dict[str, Any]] = []
        try:
            instructions = await self.decoded_instructions(name, entry, slot, count)
        finally:
            await self._admission.leave(count - len(instructions))
        self.progress.expect("refine", len(instructions))
        await asyncio.gather(*(self.refine_then_leave(inst) for inst in instructions))

    async def decoded_instructions(self, name: str, entry: dict[str, Any], slot: int,
                                   count: int) -> list[dict[str, Any]]:
        """The instructions to refine: none when the decode failed or the spec has no refine loop
        (then the journal has them already)."""
        result = await self.modules[name].acall(item=entry["id"], slot=slot, use_case=entry["use_case"],
                                                skills=entry["skills"], count=count)
        self.progress.advance(name, result.ok)
        if not result.ok:
            self.journal({"id": f"{entry['id']}.decode", "status": "failed", "metadata": entry,
                          "failure": result.failure(name), "calls": result.calls})
            return []
        texts = result.values["items"][:count]
        instructions = [{"id": f"{entry['id']}.i{j:02d}", "text": text, "metadata": entry, "slot": slot,
                         "calls": result.calls} for j, text in enumerate(texts)]
        if self.spec.refine is None:
            for inst in instructions:
                self.journal({"id": inst["id"], "status": "decoded", "instruction": inst["text"],
                              "metadata": entry, "calls": inst["calls"]})
            return []
        return instructions

    async def refine_then_leave(self, inst: dict[str, Any]) -> None:
        try:
            await self.refine(inst)
        finally:
            await self._admission.leave(1)

    async def rubrics_for(self, stage: str, entry: dict[str, Any], slot: int) -> StepResult:
        """Self-Rubrics for one metadata entry, made once, on first need."""
        key = (stage, entry["id"])
        if key not in self._rubric_tasks:
            module = self.modules[stage]
            self._rubric_tasks[key] = asyncio.ensure_future(module.acall(
                item=entry["id"], slot=slot, use_case=entry["use_case"], skills=entry["skills"],
                count=self.params["rubrics"]))
            self._rubric_tasks[key].add_done_callback(lambda task: self._record_rubrics(stage, entry, task))
        return await asyncio.shield(self._rubric_tasks[key])

    def _record_rubrics(self, stage: str, entry: dict[str, Any], task: asyncio.Task) -> None:
        if task.cancelled() or task.exception():
            return
        result = task.result()
        record = {"id": entry["id"], "stage": stage, "use_case": entry["use_case"], "skills": entry["skills"],
                  "status": "ok" if result.ok else "failed", "calls": result.calls}
        record.update(result.values if result.ok else result.failure(stage))
        self.rubrics.setdefault(stage, []).append(record)

    async def refine(self, inst: dict[str, Any]) -> None:
        """The per-instruction loop: iteration 1 is the basic instruction, each later one
        applies one random action; Contrastive Filtering decides at every iteration."""
        refine, params = self.spec.refine, self.params
        max_iterations = params["max_iterations"]
        text, steps, actions = inst["text"], [], []
        for iteration in range(1, max_iterations + 1):
            step: dict[str, Any] = {"iteration": iteration, "instruction": text}
            steps.append(step)
            last = iteration == max_iterations
            if refine.decide == "keep" and not last:
                decision = IMPROVE  # no filter: improve through every iteration, answer the final instruction
            else:
                outcome = await self.respond_and_judge(inst, iteration, text, step)
                if outcome is None:
                    return self.finish_item(inst, "failed", steps, actions)
                decision = outcome
            step["decision"] = decision
            self.progress.decide(decision if decision != IMPROVE else f"improve@{iteration}")
            if decision in (KEEP_STRONG, KEEP_TARGET, "keep"):
                return self.finish_item(inst, "kept", steps, actions, decision)
            if decision == DROP:
                return self.finish_item(inst, "dropped", steps, actions)
            improved = await self.improve(inst, iteration, text, step)
            if improved is None:
                return self.finish_item(inst, "failed", steps, actions)
            actions.append(step["action"])
            text = improved
        return self.finish_item(inst, "dropped", steps, actions)

    async def respond_and_judge(self, inst: dict[str, Any], iteration: int, text: str,
                                step: dict[str, Any]) -> str | None:
        """Answers from every respond stage, then the judge and the decision; None on failure."""
        refine, params = self.spec.refine, self.params
        item = f"{inst['id']}@{iteration}"
        names = refine.respond
        results = await asyncio.gather(*(self.modules[n].acall(item=item, instruction=text) for n in names))
        step["answers"] = {n: r.values.get("answer") for n, r in zip(names, results, strict=True)}
        step["calls"] = [c for r in results for c in r.calls]
        failed = [(n, r) for n, r in zip(names, results, strict=True) if not r.ok]
        if failed:
            step["failure"] = failed[0][1].failure(failed[0][0])
            return None
        if refine.decide == "keep":
            step["response_from"] = refine.keep_answer
            return "keep"
        judge: JudgeStage = self.modules[refine.judge]  # type: ignore[assignment]
        strong_name, target_name = self.spec.stages[refine.judge].answers
        judgement, judged = await judge.judge(item, text, step["answers"][strong_name], step["answers"][target_name],
                                              params["score_scale"], params["both_orders"])
        step["calls"] += [c for r in judged for c in r.calls]
        if judgement is None:
            bad = next(r for r in judged if not r.ok)
            step["failure"] = bad.failure(refine.judge)
            if params["unparsable_score"] == "fail":
                return None
            step["scores"] = None  # unparsable_score: tie -> a gap of 0 at this iteration
            return decide(0.0, params["threshold"], iteration, params["max_iterations"])
        step["scores"] = judgement.to_dict()
        return decide(judgement.gap, params["threshold"], iteration, params["max_iterations"])

    async def improve(self, inst: dict[str, Any], iteration: int, text: str, step: dict[str, Any]) -> str | None:
        improve_stage = self.spec.stages[self.spec.refine.improve]
        entry = inst["metadata"]
        rubrics = await self.rubrics_for(improve_stage.actions, entry, inst["slot"])
        if not rubrics.ok or not rubrics.values.get("actions"):
            step["failure"] = rubrics.failure(improve_stage.actions) if not rubrics.ok else \
                {"stage": improve_stage.actions, "error": "no actions", "raw": rubrics.raw}
            return None
        action = pick_action(rubrics.values["actions"], self.spec.seed, inst["id"], iteration)
        step["action"] = action
        module: LLMStage = self.modules[improve_stage.name]
        result = await module.acall(item=f"{inst['id']}@{iteration}", instruction=text, action=action,
                                    use_case=entry["use_case"], skills=entry["skills"])
        step.setdefault("calls", []).extend(result.calls)
        if not result.ok:
            step["failure"] = result.failure(improve_stage.name)
            return None
        return result.values["improved"]

    # -- records ---------------------------------------------------------------------------

    def finish_item(self, inst: dict[str, Any], status: str, steps: list[dict[str, Any]],
                    actions: list[str], decision: str | None = None) -> None:
        self.progress.advance("refine", status != "failed")
        history = {"id": inst["id"], "status": status, "metadata": _public(inst["metadata"]),
                   "seed_ids": inst["metadata"].get("seed_ids", []), "basic_instruction": inst["text"],
                   "actions": actions, "iterations": steps, "decode_calls": inst["calls"]}
        if status == "failed":
            history["failure"] = steps[-1].get("failure")
        if status == "kept":
            history["record"] = self.dataset_record(inst, steps, actions, decision)
        self.journal(history)

    def dataset_record(self, inst: dict[str, Any], steps: list[dict[str, Any]], actions: list[str],
                       decision: str) -> dict[str, Any]:
        """A kept pair in the chat `messages` format (TRL, axolotl), with its provenance."""
        last = steps[-1]
        refine = self.spec.refine
        if decision == "keep":
            source = refine.keep_answer
        else:
            strong, target = self.spec.stages[refine.judge].answers
            source = strong if decision == KEEP_STRONG else target
        provenance = {
            "id": inst["id"], "seed_ids": inst["metadata"].get("seed_ids", []),
            "metadata": _public(inst["metadata"]), "actions": actions, "iteration": last["iteration"],
            "answers": last.get("answers"), "scores": last.get("scores"),
            "gap": (last.get("scores") or {}).get("gap"), "decision": decision, "response_from": source,
            "calls": [*inst["calls"], *(c for s in steps for c in s.get("calls", []))],
        }
        return {"messages": [{"role": "user", "content": last["instruction"]},
                             {"role": "assistant", "content": last["answers"][source]}],
                "provenance": provenance}

    def quality(self) -> dict[str, Any]:
        """The data-quality metrics of what was written (quality.py); a metric that breaks never breaks the run."""
        try:
            return quality_metrics(self.store.folder)
        except Exception as exc:  # noqa: BLE001 - the data is written; the metrics are a report on it
            return {"error": f"{type(exc).__name__}: {exc}"}

    def journal(self, history: dict[str, Any]) -> None:
        if self.store:
            self.store.append(history)

    def finish(self) -> dict[str, int]:
        for records in self.rubrics.values():
            records.sort(key=lambda r: (r["id"], r["stage"]))
        self.store.write_jsonl("rubrics", [r for records in self.rubrics.values() for r in records])
        self.store.write_dataset_info(self.spec.name)
        return self.store.finish_journal(self.params["keep_limit"])


def item_window(spec: Spec, concurrency: int | None) -> int:
    """Items worked on at once: enough to keep every model busy, few enough that memory does
    not grow with the dataset (finished items go straight to disk)."""
    calls_in_flight = sum(concurrency or m.concurrency for m in spec.models.values())
    return max(64, 4 * calls_in_flight)


class Admission:
    """A count of instructions alive (decoded or about to be, not yet finished), capped at
    `room`. A group larger than the room is let in alone, so no entry waits forever."""

    def __init__(self, room: int):
        self.room = room
        self.alive = 0
        self._changed = asyncio.Condition()

    async def enter(self, places: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.alive == 0 or self.alive + places <= self.room)
            self.alive += places

    async def leave(self, places: int) -> None:
        if places:
            async with self._changed:
                self.alive -= places
                self._changed.notify_all()


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {"id": entry["id"], "use_case": entry["use_case"], "skills": entry["skills"]}

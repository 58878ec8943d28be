"""Tune one stage's prompt with a DSPy optimizer, and save it for the spec's `program:` key.

BootstrapFewShot runs the stage (or a teacher model in the same stage) on example inputs
and keeps as demos the outputs the stage's parser accepts. Parsing is the one metric every
stage has, and the one small models fail most: a demo is a real answer in the exact format
the parser wants. The template renders the demos as few-shot turns. The tuned state is
checked on held-out inputs, before and after, with the same metric.

Inputs come from the seeds (encode) or from a finished run (every later stage). Calls go
through the hub and cache like a run's, so tuning again costs no call it already made.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from .adapter import run_on_hub_loop
from .cache import CallCache, default_cache_dir
from .errors import SpecError
from .hub import ModelHub
from .seeds import read_seeds
from .spec import Spec, StageSpec
from .stages import LLMStage, build_stage, model_stage, sample_demo, sample_inputs
from .store import read_artifact
from .templates import StageTemplate, TemplateStore


@dataclass
class OptimizeOptions:
    stage: str
    run_dir: Path | None = None  # inputs for the stages after encode
    seeds: Path | None = None  # inputs for encode [default: the spec's seeds]
    examples: int = 20  # inputs used: the first half bootstraps demos, the second half checks them
    demos: int = 4
    teacher: str | None = None  # a model role that writes the demos [default: the stage's own model]
    out: Path | None = None
    cache_dir: Path | None = None
    cache_mode: str = "live"


@dataclass
class OptimizeResult:
    path: Path
    demos: int
    parsed_before: int
    parsed_after: int
    checked: int


def optimize(spec: Spec, options: OptimizeOptions, hub: ModelHub | None = None) -> OptimizeResult:
    stage = model_stage(spec, options.stage)
    if options.teacher and options.teacher not in spec.models:
        raise SpecError(str(spec.path), f"no model role '{options.teacher}' to teach with",
                        hint=f"roles in models: {', '.join(spec.models)}")
    inputs = _dedupe(stage_inputs(spec, stage, options))[: options.examples]
    if len(inputs) < 2:
        raise SpecError(str(options.run_dir or spec.path), f"stage '{stage.name}': {len(inputs)} example input(s), "
                        "need at least 2", hint="run the spec first (codeclm run), or pass more seeds")
    half = math.ceil(len(inputs) / 2)
    trainset = [dspy.Example(**i).with_inputs(*i) for i in inputs[:half]]
    checkset = inputs[half:]
    cache = None
    if hub is None:
        cache = CallCache(options.cache_dir or spec.cache_dir or default_cache_dir(), options.cache_mode)
        hub = ModelHub(spec.models, cache)
    try:
        student, teacher = _modules(spec, stage, options.teacher, hub)
        before = _parsed(student, checkset)
        optimizer = dspy.BootstrapFewShot(metric=lambda example, result, trace=None: result.ok,
                                          max_bootstrapped_demos=options.demos, max_labeled_demos=0)
        tuned = optimizer.compile(student, teacher=teacher, trainset=trainset)
        tuned.predict.set_lm(student.predict.lm)  # compile resets the copy's LM with its demos
        after = _parsed(tuned, checkset)
        path = options.out or Path("runs") / f"{spec.name}-optimize" / f"{stage.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tuned.save(str(path))
    finally:
        run_on_hub_loop(hub.aclose())
        if cache is not None:
            cache.close()
    return OptimizeResult(path, len(tuned.predict.demos), before, after, len(checkset))


def _modules(spec: Spec, stage: StageSpec, teacher_role: str | None, hub: ModelHub) -> tuple[LLMStage, Any]:
    """The stage as the spec builds it (with its `program:` if any), and a teacher on another role."""
    template = TemplateStore(spec.prompts_dir).get(stage.template)
    _check_renders_demos(stage, template)
    student = build_stage(stage, template, spec, hub)
    if teacher_role is None:
        return student, None
    return student, build_stage(dataclasses.replace(stage, model=teacher_role, program=None), template, spec, hub)


def _check_renders_demos(stage: StageSpec, template: StageTemplate) -> None:
    """Demos are what BootstrapFewShot tunes: a template that ignores them cannot be tuned."""
    variables = {**sample_inputs(stage.kind), "instructions": template.default_instructions}
    with_demo = template.render({**variables, "demos": [sample_demo(stage.kind)]})
    if template.render({**variables, "demos": []}) == with_demo:
        raise SpecError(str(template.path), f"the template does not render demos, so tuning '{stage.name}' "
                        "could not change its prompt",
                        hint="loop over them: {% for demo in demos %}...{% endfor %}, as prompts/encode.jinja does")


def _parsed(module: LLMStage, inputs: list[dict[str, Any]]) -> int:
    return sum(module(item=f"check{i}", **values).ok for i, values in enumerate(inputs))


def _dedupe(inputs: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for values in inputs:
        seen.setdefault(json.dumps(values, sort_keys=True), values)
    return list(seen.values())


# -- example inputs per kind of stage ------------------------------------------------------------


def stage_inputs(spec: Spec, stage: StageSpec, options: OptimizeOptions) -> Iterator[dict[str, Any]]:
    """The stage's input fields, as a run gave (or would give) them, in a stable order."""
    if stage.kind == "encode":
        seeds = options.seeds or (spec.seeds.path if spec.seeds else None)
        if seeds is None:
            raise SpecError(str(spec.path), "no seeds to tune encode on", hint="pass --seeds FILE")
        yield from ({"instruction": s["instruction"]} for s in read_seeds(seeds))
        return
    if options.run_dir is None:
        raise SpecError(str(spec.path), f"tuning '{stage.name}' needs the inputs of a finished run",
                        hint="run the spec first, then pass --from runs/NAME")
    params = spec.params
    if stage.kind in ("decode", "rubrics"):
        pool = read_artifact(options.run_dir, "pool")
        count = params["rubrics"] if stage.kind == "rubrics" else \
            params["instructions_per_entry"] or math.ceil(params["dataset_size"] / max(1, len(pool)))
        yield from ({"use_case": e["use_case"], "skills": e["skills"], "count": count} for e in pool)
        return
    for history in read_artifact(options.run_dir, "instructions"):
        meta = history.get("metadata") or {}
        for step in history.get("iterations", []):
            yield from _step_inputs(spec, stage, step, meta)


def _step_inputs(spec: Spec, stage: StageSpec, step: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    if stage.kind == "respond":
        return [{"instruction": step["instruction"]}]
    if stage.kind == "improve" and step.get("action"):
        return [{"instruction": step["instruction"], "action": step["action"], "use_case": meta["use_case"],
                 "skills": meta["skills"]}]
    answers = step.get("answers") or {}
    if stage.kind == "judge" and all(answers.get(name) for name in stage.answers):
        low, high = spec.params["score_scale"]
        return [{"instruction": step["instruction"], "answer_1": answers[stage.answers[0]],
                 "answer_2": answers[stage.answers[1]], "scale_low": low, "scale_high": high}]
    return []

"""Tune one llm node's prompt with a DSPy optimizer, and save it for the node's `program:` key.

BootstrapFewShot runs the node (or a teacher model in the same node) on example inputs and
keeps as demos the outputs the node's parser accepts. Parsing is the one metric every node
has, and the one small models fail most: a demo is a real answer in the exact format the
parser wants. The template renders the demos as few-shot turns. The tuned state is checked
on held-out inputs, before and after, with the same metric.

The example inputs are the node's inputs as a run computes them: the spec is walked against
the cache with no model (like `run --dry-run`), and every input the node would get is
collected. A node fed by the seeds needs no earlier run; a later node needs the run's calls
in the cache (`--from RUN_DIR` reads that run's cache folder). Calls go through the hub and
cache like a run's, so tuning again costs no call it already made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from .adapter import run_on_hub_loop
from .cache import CallCache, default_cache_dir
from .engine.llm import NodeModule, build_module
from .engine.run import RunOptions, run_spec
from .errors import SpecError
from .hub import ModelHub
from .lang.nodes import LLMNode
from .spec import Spec
from .templates import StageTemplate, TemplateStore


@dataclass
class OptimizeOptions:
    stage: str  # the llm node tuned
    run_dir: Path | None = None  # a finished run whose cache holds the calls before the node
    seeds: Path | None = None  # another seed file [default: the spec's]
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
    node = model_node(spec, options.stage)
    if options.teacher and options.teacher not in spec.models:
        raise SpecError(str(spec.path), f"no model role '{options.teacher}' to teach with",
                        hint=f"roles in models: {', '.join(spec.models)}")
    cache_dir = options.cache_dir or _run_cache(options.run_dir) or spec.cache_dir or default_cache_dir()
    inputs = _dedupe(node_inputs(spec, node, options, cache_dir, hub))[: options.examples]
    if len(inputs) < 2:
        raise SpecError(str(options.run_dir or spec.path), f"node '{node.name}': {len(inputs)} example input(s), "
                        "need at least 2", hint="run the spec first, then pass --from runs/NAME (its cache holds the "
                        "inputs), or pass more seeds")
    half = math.ceil(len(inputs) / 2)
    trainset = [dspy.Example(**i).with_inputs(*i) for i in inputs[:half]]
    checkset = inputs[half:]
    cache = None
    if hub is None:
        cache = CallCache(cache_dir, options.cache_mode)
        hub = ModelHub(spec.models, cache)
    try:
        student, teacher = _modules(spec, node, options.teacher, hub)
        before = _parsed(student, checkset)
        optimizer = dspy.BootstrapFewShot(metric=lambda example, result, trace=None: result.ok,
                                          max_bootstrapped_demos=options.demos, max_labeled_demos=0)
        tuned = optimizer.compile(student, teacher=teacher, trainset=trainset)
        tuned.predict.set_lm(student.predict.lm)  # compile resets the copy's LM with its demos
        after = _parsed(tuned, checkset)
        path = options.out or Path("runs") / f"{spec.name}-optimize" / f"{node.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tuned.save(str(path))
    finally:
        run_on_hub_loop(hub.aclose())
        if cache is not None:
            cache.close()
    return OptimizeResult(path, len(tuned.predict.demos), before, after, len(checkset))


def model_node(spec: Spec, name: str) -> LLMNode:
    """The llm or judge node `name`, or a SpecError listing the ones there are."""
    node = spec.graph.every.get(name)
    if not isinstance(node, LLMNode):
        names = [n.name for n in spec.graph.model_nodes()]
        raise SpecError(str(spec.path), f"no llm node named '{name}'", hint=f"llm nodes: {', '.join(names)}")
    return node


def _run_cache(run_dir: Path | None) -> Path | None:
    manifest = run_dir / "manifest.json" if run_dir else None
    if manifest is None or not manifest.is_file():
        return None
    return Path(json.loads(manifest.read_text())["options"]["cache_dir"])


def node_inputs(spec: Spec, node: LLMNode, options: OptimizeOptions, cache_dir: Path,
                hub: ModelHub | None) -> list[dict[str, Any]]:
    """The node's inputs as a run computes them, walking the spec against the cache with no model."""
    seen: list[dict[str, Any]] = []

    def observe(name: str, inputs: dict[str, Any]) -> None:
        if name == node.name:
            seen.append(inputs)

    if hub is not None:
        hub.dry_run = True
    try:
        run_spec(spec, RunOptions(cache_dir=cache_dir, cache_mode="read", seeds=options.seeds, dry_run=True), hub,
                 observe=observe)
    finally:
        if hub is not None:
            hub.dry_run = False
    return seen


def _modules(spec: Spec, node: LLMNode, teacher_role: str | None, hub: ModelHub) -> tuple[NodeModule, Any]:
    """The node as the spec builds it (with its `program:` if any), and a teacher on another role."""
    template = TemplateStore(spec.prompts_dir).get(node.template)
    student = build_module(node, spec, hub)
    _check_renders_demos(node, student, template)
    if teacher_role is None:
        return student, None
    return student, build_module(node, spec, hub, role=teacher_role, with_program=False)


def _check_renders_demos(node: LLMNode, module: NodeModule, template: StageTemplate) -> None:
    """Demos are what BootstrapFewShot tunes: a template that ignores them cannot be tuned."""
    inputs = {name: f"<{name}>" for name in module.predict.signature.input_fields}
    demo = {**inputs, **{name: f"<{name}>" for name in module.predict.signature.output_fields}}
    variables = {**inputs, "instructions": ""}
    try:
        same = template.render({**variables, "demos": []}) == template.render({**variables, "demos": [demo]})
    except SpecError:
        return  # a template that needs real values: BootstrapFewShot shows whether demos help
    if same:
        raise SpecError(str(template.path), f"the template does not render demos, so tuning '{node.name}' "
                        "could not change its prompt",
                        hint="loop over them: {% for demo in demos %}...{% endfor %}, as prompts/encode.jinja does")


def _parsed(module: NodeModule, inputs: list[dict[str, Any]]) -> int:
    return sum(module(item=f"check{i}", **values).ok for i, values in enumerate(inputs))


def _dedupe(inputs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for values in inputs:
        seen.setdefault(json.dumps(values, sort_keys=True), values)
    return list(seen.values())

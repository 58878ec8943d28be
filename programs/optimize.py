"""Tune one llm node's prompt with a DSPy optimizer for a metric the spec declares, and save it
as a program file the node's `program:` key loads.

- **Examples** are the node's inputs as a run computes them: the spec is walked against the
  cache with no model (like `run --dry-run`). A node fed by the seeds needs no earlier run; a
  later node needs the run's calls in the cache (`--from RUN_DIR` reads that run's cache).
- **Split**: each example goes to train, validation or held-out by a hash of the spec's seed
  and the example itself, so the split is the same on every rerun and an added seed moves no
  other example.
- **Optimizers**: GEPA (reflective instruction evolution, fed by the metric's textual
  feedback; the reflection model is a role of the spec), MIPROv2 (instructions and demos
  searched jointly; needs `optuna`), BootstrapFewShot (demos the metric accepts).
- **Metrics** (`programs/tuning/`): parse, a pointwise judge node, a pairwise judge of tuned
  against current output, codec fidelity, a marker text.
- **Cache**: every call (the node's, the metric's, the reflection model's) goes through the
  hub and its cache. DSPy drops `rollout_id` before an engine sees a request, so the
  reflection model's calls get their sample slot here: the n-th time the same prompt is asked
  is slot n. A rerun asks in the same order, so a warm cache answers everything.
- **Scores**: the metric on the held-out examples, before and after, with items and calls,
  printed and saved beside the program.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shlex
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import dspy
from dspy.utils.exceptions import AdapterParseError

from .artifacts.rundata import finished_run_manifest
from .engine.adapter import AsyncHubEngine, HubEngine, run_on_hub_loop
from .engine.llm import NodeModule, build_module, quiet_copies
from .engine.run import RunOptions, run_spec
from .errors import CodecError, SpecError
from .lang.nodes import LLMNode, SourceNode
from .lang.spec import Spec
from .lang.templates import StageTemplate, TemplateStore
from .models.cache import CallCache, default_cache_dir
from .models.hub import CURRENT_CALL, CallContext, ModelHub
from .tuning.config import MetricSpec, pick_metric
from .tuning.metrics import MetricRunner, Score

OPTIMIZERS = ("gepa", "mipro", "bootstrap")
SPLIT = (0.4, 0.3, 0.3)  # train, validation, held-out
_UNSET = object()  # a key one spec has and the other has not


@dataclass
class OptimizeOptions:
    stage: str  # the llm node tuned
    optimizer: str = "bootstrap"
    metric: str | None = None  # a metric of optimize.NODE.metrics, or parse [default: the node's metric:]
    run_dir: Path | None = None  # a finished run whose cache holds the calls before the node
    seeds: Path | None = None  # another seed file [default: the spec's]
    examples: int = 20  # inputs used at most, split into train / validation / held-out
    demos: int = 4
    teacher: str | None = None  # bootstrap: a model role that writes the demos
    threshold: float = 1.0  # bootstrap: the score an output needs to become a demo
    reflection: str | None = None  # gepa / mipro: the role that proposes instructions [default: the node's]
    max_metric_calls: int | None = None  # gepa's budget
    auto: str | None = None  # gepa / mipro: light | medium | heavy [default for gepa: light]
    out: Path | None = None
    cache_dir: Path | None = None
    cache_mode: str = "live"
    progress: TextIO | None = None  # progress lines (stderr in the CLI)


@dataclass
class OptimizeResult:
    path: Path
    demos: int
    checked: int  # held-out items
    metric: str = "parse"
    optimizer: str = "bootstrap"
    before: float = 0.0  # mean metric on held-out
    after: float = 0.0
    instructions: str = ""
    calls: dict[str, int] = field(default_factory=dict)  # model calls, cache hits, shared of the whole optimization
    table: str = ""
    unchanged: str = ""  # why the search kept the prompt it started from, and the fix; "" when it changed it


def optimize(spec: Spec, options: OptimizeOptions, hub: ModelHub | None = None) -> OptimizeResult:
    node = spec.model_node(options.stage)
    path = program_path(spec, node, options)  # checked before any call: never a foreign file
    if options.optimizer not in OPTIMIZERS:
        raise SpecError(str(spec.path), f"unknown optimizer {options.optimizer!r}", hint=", ".join(OPTIMIZERS))
    for role in (options.teacher, options.reflection):
        if role and role not in spec.models:
            raise SpecError(str(spec.path), f"no model role '{role}'",
                            hint=f"roles in models: {', '.join(spec.models)}")
    both = sorted(set(node.inputs) & set(node.call_outputs()))
    if both:  # a DSPy signature's fields are inputs or outputs, never both (demos crashed on it)
        raise SpecError(str(spec.path), f"node '{node.name}' reads and writes '{both[0]}': optimize needs an "
                        "input and an output of different names",
                        hint=f"rename the input (inputs: {{draft: ...}}) and use {{{{ draft }}}} in {node.template}: "
                             "the rendered prompt, and so the cache, stays the same")
    metric = pick_metric(spec, node.name, options.metric)
    same_writer = not options.teacher or (options.teacher == node.model and not node.program)  # as the baseline
    if options.optimizer == "bootstrap" and metric.type == "pairwise" and same_writer:
        raise SpecError(str(spec.path), f"bootstrap writes demos with the node's own prompt and model, which the "
                        f"pairwise metric '{metric.name}' compares with that same output: every one scores 0.5 "
                        "(a tie), so none is better", hint="let another model write the demos (--teacher ROLE), or "
                        "tune the instructions for it (--optimizer gepa)")
    cache_dir = options.cache_dir or _run_cache(options.run_dir) or spec.cache_dir or default_cache_dir()
    inputs = _dedupe(node_inputs(spec, node, options, cache_dir, hub))[: options.examples]
    if len(inputs) < 3:
        raise _too_few_inputs(spec, node, len(inputs), options.run_dir)
    train, val, held = split(inputs, spec.seed)
    cache = None
    if hub is None:
        cache = CallCache(cache_dir, options.cache_mode)
        hub = ModelHub(spec.models, cache)
    try:
        return _optimize(spec, node, options, metric, hub, train, val, held, path)
    finally:
        run_on_hub_loop(hub.aclose())
        if cache is not None:
            cache.close()


def _optimize(spec: Spec, node: LLMNode, options: OptimizeOptions, metric: MetricSpec, hub: ModelHub,
              train: list[dict[str, Any]], val: list[dict[str, Any]], held: list[dict[str, Any]],
              path: Path) -> OptimizeResult:
    template = TemplateStore(spec.prompts_dir).get(node.template)
    original = build_module(node, spec, hub)
    if options.optimizer != "gepa":
        _check_renders(node, original, template, "demos")
    else:
        _check_renders(node, original, template, "instructions")
    modules: dict[tuple[str, str | None], NodeModule] = {}

    def module_for(other: LLMNode, role: str | None) -> NodeModule:
        key = (other.name, role)
        if key not in modules:
            modules[key] = build_module(other, spec, hub, role=role)
        return modules[key]

    runner = MetricRunner(metric, spec, node, module_for, baseline=original)
    tracker = Tracker(options.progress, len(val))

    def score(example: Any, pred: Any) -> Score:
        inputs = {k: example[k] for k in example.inputs() if k != "item"}
        return runner(inputs, pred.result, example.item, candidate=pred.module)

    def metric_fn(example: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        result = score(example, pred)
        if pred_name is None:  # GEPA asks again, per predictor, for the feedback: not a call its budget counts
            tracker.record(pred.instructions, result.value, result.feedback, example.item)
        if options.optimizer == "gepa":
            return dspy.Prediction(score=result.value, feedback=result.feedback)
        if options.optimizer == "bootstrap" and trace is not None:
            return result.value >= options.threshold
        return result.value

    trainset, valset = _examples(train, "train"), _examples(val, "val")
    student = Tuned(original)
    calls_before = _calls(hub)
    before = _evaluate(student, held, score)
    # DSPy prints its own progress ("Bootstrapped 4 full traces ..."): with the progress lines, or nowhere
    with quiet_copies(), one_line_logs(), contextlib.redirect_stdout(options.progress or io.StringIO()):
        tuned = _compile(options, spec, node, hub, student, trainset, valset, metric_fn)
    tuned.node.predict.set_lm(original.predict.lm)  # compile may reset the copy's LM
    same = _prompt(tuned.node) == _prompt(original)
    after = _evaluate(tuned, held, score)
    calls_all = {k: v - calls_before.get(k, 0) for k, v in _calls(hub).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tuned.node.save(str(path))
    budget = {"max_metric_calls": options.max_metric_calls, "auto": options.auto, "demos": options.demos,
              "examples": options.examples, **({"threshold": options.threshold} if options.optimizer == "bootstrap"
                                               else {})}
    scores = {"held_out": {"items": len(held), "before": _mean(before), "after": _mean(after)},
              "split": {"train": len(train), "val": len(val), "held_out": len(held), "seed": spec.seed},
              "metric_calls": tracker.calls, "best_during_search": tracker.best,
              "calls": calls_all}
    table = score_table(metric.name, node.name, len(held), _mean(before), _mean(after), calls_all)
    saved = json.loads(path.read_text())
    saved["codeclm"] = {"node": node.name, "spec": str(spec.path), "optimizer": options.optimizer,
                        "metric": metric.describe(), "budget": budget,
                        "reflection": None if options.optimizer == "bootstrap" else options.reflection or node.model,
                        "teacher": options.teacher, "scores": scores,
                        "instructions": tuned.node.predict.signature.instructions}
    path.write_text(json.dumps(saved, indent=2, ensure_ascii=False))
    path.with_suffix(".scores.txt").write_text(table + "\n")
    return OptimizeResult(path, len(tuned.node.predict.demos), len(held), metric.name, options.optimizer,
                          _mean(before), _mean(after),
                          tuned.node.predict.signature.instructions, calls_all, table,
                          _unchanged(options, node, tracker) if same else "")


def _compile(options: OptimizeOptions, spec: Spec, node: LLMNode, hub: ModelHub, student: Tuned,
             trainset: list[Any], valset: list[Any], metric_fn: Any) -> Tuned:
    seed = spec.seed
    if options.optimizer == "bootstrap":
        teacher = None
        if options.teacher:
            teacher = Tuned(build_module(node, spec, hub, role=options.teacher, with_program=False))
        optimizer = dspy.BootstrapFewShot(metric=metric_fn, max_bootstrapped_demos=options.demos, max_labeled_demos=0)
        return optimizer.compile(student, teacher=teacher, trainset=trainset + valset)
    reflection = reflection_lm(hub, spec, options.reflection or node.model)
    if options.optimizer == "gepa":
        budget: dict[str, Any] = ({"max_metric_calls": options.max_metric_calls} if options.max_metric_calls
                                  else {"auto": options.auto or "light"})
        optimizer = dspy.GEPA(metric=metric_fn, reflection_lm=reflection, num_threads=_threads(spec, node), seed=seed,
                              track_stats=True, **budget)
        return optimizer.compile(student, trainset=trainset, valset=valset)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise SpecError(str(spec.path), "--optimizer mipro needs optuna, which is not installed",
                        hint="pip install optuna, or use --optimizer gepa") from None
    optimizer = dspy.MIPROv2(metric=metric_fn, prompt_model=reflection, task_model=student.node.predict.lm,
                             auto=options.auto or "light", num_threads=_threads(spec, node), seed=seed,
                             max_bootstrapped_demos=options.demos, max_labeled_demos=0, verbose=False)
    try:
        return optimizer.compile(student, trainset=trainset, valset=valset, requires_permission_to_run=False)
    except AdapterParseError as exc:  # the proposal model answered in another format than MIPROv2 reads
        raise CodecError(f"MIPROv2 stopped: the '{options.reflection or node.model}' model's proposal could not "
                         f"be read ({str(exc).splitlines()[0][:160]}); propose with a stronger model "
                         "(--reflection ROLE), or use --optimizer gepa, which skips such answers") from None


def _prompt(module: NodeModule) -> tuple[str, str]:
    """What tuning changes: the instructions and the demos (a node with a `program:` starts with its demos)."""
    demos = [demo.toDict() if isinstance(demo, dspy.Example) else demo for demo in module.predict.demos]
    return module.predict.signature.instructions, json.dumps(demos, sort_keys=True, default=str)


def _unchanged(options: OptimizeOptions, node: LLMNode, tracker: Tracker) -> str:
    """Why the search ended with the prompt it started from, and the fix: a saved program that is the
    untuned prompt, with no word of it, reads as tuned."""
    scored = f"the best of {tracker.calls} scored {tracker.top[0]:.3f}: {tracker.top[1]}" if tracker.top else "none"
    if tracker.top and tracker.lowest == 1.0:
        why, fix = (f"every output already scores 1 on the metric ({tracker.calls} scored)",
                    "tune for a stricter metric (--metric NAME, declared under the spec's optimize.NODE.metrics)")
    elif options.optimizer == "bootstrap" and tracker.top and tracker.top[0] == 0.0:
        why, fix = (f"every output scored 0 ({tracker.calls} scored; one said: {tracker.top[1]})",
                    "mend what that says (`codeclm render SPEC NODE` shows the prompt the model answered), or let "
                    "another model write the demos (--teacher ROLE)")
    elif options.optimizer == "bootstrap":
        why, fix = (f"no output scored at least --threshold {options.threshold:g} to become a demo ({scored})",
                    "lower --threshold to a score outputs reach, or let a stronger model write the demos "
                    "(--teacher ROLE)")
    elif len(tracker.candidates) <= 1:
        why, fix = (f"no new instructions were proposed: the '{options.reflection or node.model}' model's answers "
                    "could not be read as a proposal (without -q, DSPy's log says why)",
                    "propose with a stronger model (--reflection ROLE)")
    else:
        why, fix = (f"none of the {len(tracker.candidates) - 1} proposed instructions scored above the current ones "
                    f"({scored})", "give the search a larger budget (--max-metric-calls N, --auto medium) or a "
                    "stronger proposal model (--reflection ROLE)")
    return f"{options.optimizer} left node '{node.name}' as it was: {why}\n  fix: {fix}"


class _OneLine(logging.Filter):
    """GEPA logs each proposal it could not read with Python's whole traceback (INFO, on DSPy's own
    handler): a reflection model answering in another format printed thousands of lines that read as
    a crash. A traceback is dropped; any other message is cut to one line, which still says what failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback (most recent call last)"):
            return False
        record.msg, record.args = " ".join(message.split())[:300], None
        return True


@contextlib.contextmanager
def one_line_logs() -> Iterator[None]:
    """DSPy's log lines one line each, while an optimizer runs."""
    handlers, short = logging.getLogger("dspy").handlers, _OneLine()
    for handler in handlers:
        handler.addFilter(short)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(short)


def _threads(spec: Spec, node: LLMNode) -> int:
    """Evaluation threads: as many calls at once as the node's model takes (scores are kept by
    position, and proposals are sequential, so the result does not depend on it)."""
    return max(1, min(8, spec.models[node.model].concurrency))


class Tuned(dspy.Module):
    """The node's module, returning what the metric needs: the result, the candidate's
    instructions, and the candidate itself (codec fidelity encodes again with it)."""

    def __init__(self, node: NodeModule):
        super().__init__()
        self.node = node

    def forward(self, item: str = "-", **inputs: Any) -> dspy.Prediction:
        result = self.node(item=item, **inputs)
        return dspy.Prediction(result=result, instructions=self.node.predict.signature.instructions,
                               module=self.node)


class Tracker:
    """Counts metric calls and prints the best validation mean so far: a candidate's mean over the
    validation inputs once it is scored on all of them (GEPA also scores candidates on training
    minibatches, which joined the mean and moved a 'best' of one unchanged prompt up and down). Keeps
    the best single score with its feedback and the lowest, which say why a search changed nothing."""

    def __init__(self, stream: TextIO | None, width: int):
        self.stream, self.width = stream, max(1, width)
        self.candidates: set[str] = set()
        self.validation: dict[str, dict[str, float]] = {}  # candidate -> validation item -> score
        self.calls, self.best = 0, None
        self.top: tuple[float, str] | None = None
        self.lowest = 1.0
        self.lock = threading.Lock()

    def record(self, instructions: str, value: float, feedback: str = "", item: str = "val") -> None:
        with self.lock:
            self.calls += 1
            self.candidates.add(instructions)
            if self.top is None or value > self.top[0]:
                self.top = (value, " ".join(feedback.split())[:200])
            self.lowest = min(self.lowest, value)
            if item.startswith("val"):
                self.validation.setdefault(instructions, {})[item] = value
            means = [sum(s.values()) / len(s) for s in self.validation.values() if len(s) >= self.width]
            best = max(means) if means else None
            if self.stream is not None and (self.calls % self.width == 0 or best != self.best):
                shown = "-" if best is None else f"{best:.3f}"
                print(f"optimize: {self.calls} metric calls, {len(self.candidates)} candidate prompt(s), "
                      f"best so far {shown}", file=self.stream, flush=True)
            self.best = best


class ReflectionEngine(HubEngine):
    """The proposal model's engine: the n-th ask of one prompt is sample slot n (DSPy strips
    rollout_id), under the stage `optimize:reflection`."""

    def __init__(self, hub: ModelHub, role: str):
        super().__init__(hub, role)
        self.asked: Counter[str] = Counter()
        self.lock = threading.Lock()

    def complete(self, request: Any) -> Any:
        from .engine.adapter import request_messages

        key = hashlib.sha256(json.dumps(request_messages(request), sort_keys=True).encode()).hexdigest()
        with self.lock:
            slot = self.asked[key]
            self.asked[key] += 1
        token = CURRENT_CALL.set(CallContext(stage="optimize:reflection", item=f"proposal-{key[:8]}", slot=slot))
        try:
            return super().complete(request)
        finally:
            CURRENT_CALL.reset(token)


def reflection_lm(hub: ModelHub, spec: Spec, role: str) -> dspy.LM:
    model = spec.models[role]
    return dspy.LM(f"openai/codeclm-{role}", engine=ReflectionEngine(hub, role),
                   async_engine=AsyncHubEngine(hub, role), cache=False, num_retries=0,
                   temperature=model.temperature, max_tokens=model.max_tokens)


def split(inputs: list[dict[str, Any]], seed: int) -> tuple[list, list, list]:
    """Train, validation, held-out: ordered by a hash of the seed and each example, then cut by
    SPLIT, each at least one example. The same inputs always split the same way."""
    def rank(values: dict[str, Any]) -> str:
        return hashlib.sha256(f"{seed}\0{json.dumps(values, sort_keys=True, default=str)}".encode()).hexdigest()

    ordered = sorted(inputs, key=rank)
    n = len(ordered)
    n_train = max(1, round(n * SPLIT[0]))
    n_val = max(1, min(n - n_train - 1, round(n * SPLIT[1])))
    return ordered[:n_train], ordered[n_train:n_train + n_val], ordered[n_train + n_val:]


def _examples(inputs: list[dict[str, Any]], part: str) -> list[Any]:
    return [dspy.Example(item=f"{part}{i}", **values).with_inputs("item", *values) for i, values in enumerate(inputs)]


def _evaluate(module: Tuned, inputs: list[dict[str, Any]], score: Any) -> list[float]:
    examples = _examples(inputs, "held")
    return [score(example, module(**example.inputs().toDict())).value for example in examples]


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def _calls(hub: ModelHub) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for counter in hub.stats.values():
        totals["calls"] += counter.get("calls", 0)
        totals["cache_hits"] += counter.get("cache_hits", 0)
        totals["shared"] += counter.get("shared", 0)
    return dict(totals)


def score_table(metric: str, node: str, items: int, before: float, after: float, calls: dict[str, int]) -> str:
    rows = [f"{'node':<14} {'metric':<14} {'held-out':>8} {'before':>8} {'after':>8} {'calls':>7} {'cached':>7} "
            f"{'shared':>7}",
            f"{node:<14} {metric:<14} {items:>8} {before:>8.3f} {after:>8.3f} {calls.get('calls', 0):>7} "
            f"{calls.get('cache_hits', 0):>7} {calls.get('shared', 0):>7}"]
    return "\n".join(rows)


def program_prompt(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """A saved program's instructions and demos, as its node's template renders them."""
    from .engine.adapter import NO_INSTRUCTIONS

    state = json.loads(Path(path).read_text())["predict"]
    instructions = state.get("signature", {}).get("instructions", "")
    return ("" if instructions == NO_INSTRUCTIONS else instructions), list(state.get("demos", []))


def program_path(spec: Spec, node: LLMNode, options: OptimizeOptions) -> Path:
    """Where the tuned program goes; refused if a file there (or its scores table) is not one a
    previous `codeclm optimize` wrote, so tuning never replaces a file of the user's."""
    path = options.out or Path("runs") / f"{spec.name}-optimize"
    if path.suffix != ".json":  # a folder (DSPy saves a program only as .json): the node's file in it
        path = path / f"{node.name}.json"
    above = next(folder for folder in path.parents if folder.exists() or folder.is_symlink())
    if not above.is_dir():  # found now, not by the folder's mkdir after every call was made
        raise SpecError(str(above), "--out needs a folder here, and this is a file",
                        hint=f"give --out a .json file to write, or a folder (where {node.name}.json is written)")
    ours = _is_program_file(path)
    for target in (path, path.with_suffix(".scores.txt")):
        if (target.exists() or target.is_symlink()) and not ours:
            raise SpecError(str(target), "exists and was not written by `codeclm optimize`: left as it is",
                            hint="choose another --out, or move that file away")
    return path


def _is_program_file(path: Path) -> bool:
    try:
        return path.is_file() and "codeclm" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, RecursionError):
        return False


def _run_cache(run_dir: Path | None) -> Path | None:
    """The cache a finished run (`--from RUN_DIR`) used; a folder that is not one is a SpecError."""
    if run_dir is None:
        return None
    fix = "pass --from a folder `codeclm run` finished, e.g. runs/demo"
    cache_dir = finished_run_manifest(run_dir, ("options.cache_dir",), fix)["options"]["cache_dir"]
    if not isinstance(cache_dir, str) or not cache_dir:
        raise SpecError(str(run_dir / "manifest.json"), "the manifest names no cache folder (options.cache_dir)",
                        hint="pass --from a folder `codeclm run` finished, or --cache-dir DIR")
    return Path(cache_dir)


def _too_few_inputs(spec: Spec, node: LLMNode, count: int, run_dir: Path | None) -> SpecError:
    """Too few example inputs. With --from, a spec unlike the run's comes first: its calls have other cache
    keys (another model, other settings), so the run's answers are not found, however many it made."""
    problem = f"node '{node.name}': {count} example input(s), need at least 3"
    source = spec.graph.every.get(node.for_each or "")
    if run_dir is None and isinstance(source, SourceNode):  # its inputs are the source's records: no run makes more
        return SpecError(str(spec.path), problem, hint=f"give source '{source.name}' at least 3 distinct records "
                                                        "(or --seeds FILE, where it reads a file)")
    if run_dir is None:
        return SpecError(str(spec.path), problem, hint="run the spec first, then pass --from runs/NAME (its cache "
                                                        "holds the inputs), or pass more seeds")
    manifest = finished_run_manifest(run_dir, ("spec.resolved", "options.overrides"))
    differ = _differences(manifest["spec"]["resolved"], json.loads(json.dumps(spec.raw)))
    if not differ:
        return SpecError(str(run_dir), problem, hint="the run made the node this few inputs: rerun it with more "
                                                     "records reaching the node (more seeds, or larger counts in "
                                                     "params), then pass --from again")
    overrides = [str(item) for item in manifest["options"]["overrides"] or []]
    same = ("the same --set: " + " ".join(shlex.quote(f"--set={item}") for item in overrides) if overrides
            else "no --set (the run had none)")
    return SpecError(str(run_dir), f"{problem}: the spec is not the one the run ran ({'; '.join(differ[:3])}"
                     + (f"; {len(differ) - 3} more" if len(differ) > 3 else "") + "), so the run's calls are "
                     "not found in the cache", hint=f"optimize the spec as the run ran it: the same file and {same}")


def _differences(run: Any, here: Any, path: str = "") -> list[str]:
    """Where a spec differs from the run's recorded one, key by key: `models.strong.model: 'x' in the run, 'y'
    here` (a list or value whole)."""
    if isinstance(run, dict) and isinstance(here, dict):
        return [found for key in {**run, **here} for found in
                _differences(run.get(key, _UNSET), here.get(key, _UNSET), f"{path}.{key}" if path else str(key))]
    shown = ["unset" if value is _UNSET else repr(value) for value in (run, here)]
    return [] if run == here else [f"{path}: {shown[0]} in the run, {shown[1]} here"]


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


def _check_renders(node: LLMNode, module: NodeModule, template: StageTemplate, what: str) -> None:
    """Demos are what BootstrapFewShot and MIPROv2 tune, instructions what GEPA tunes: a template that
    renders the same without them cannot be tuned so (GEPA would spend its whole budget for nothing)."""
    inputs = {name: f"<{name}>" for name in module.predict.signature.input_fields}
    demo = {**inputs, **{name: f"<{name}>" for name in module.predict.signature.output_fields}}
    plain = {**inputs, "instructions": "", "demos": []}
    try:
        prompt = template.render(plain)
        renders = {"demos": template.render({**plain, "demos": [demo]}) != prompt,
                   "instructions": template.render({**plain, "instructions": "<tuned>"}) != prompt}
    except SpecError:
        return  # a template that needs real values: the optimizer shows whether tuning helps
    if renders[what]:
        return
    if what == "demos":
        hint = "loop over them: {% for demo in demos %}...{% endfor %}, as prompts/encode.jinja does"
        other = "; or tune its instructions with --optimizer gepa"
    else:
        hint = "write {{ instructions }} where the template states the task, as prompts/encode.jinja does"
        other = "; or tune its demos with --optimizer bootstrap"
    other_renders = renders["instructions" if what == "demos" else "demos"]
    raise SpecError(str(template.path), f"the template does not render {what}, so tuning '{node.name}' "
                    "could not change its prompt", hint=hint + (other if other_renders else ""))


def _dedupe(inputs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for values in inputs:
        seen.setdefault(json.dumps(values, sort_keys=True, default=str), values)
    return list(seen.values())


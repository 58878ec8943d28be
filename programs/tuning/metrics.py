"""The metrics `codeclm optimize` tunes for, each a score in 0-1 with textual feedback for GEPA.

A metric reads one example's inputs and the tuned node's result (a StepResult) and may call
other nodes of the spec (a judge, the decode or encode node), always through the hub and its
cache, under the stage name `metric:NAME`, so a rerun on a warm cache calls no model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import MetricSpec


@dataclass
class Score:
    value: float  # 0-1
    feedback: str


# -- codec fidelity --------------------------------------------------------------------------


def _norm(text: Any) -> str:
    return " ".join(str(text).lower().split()).strip(" .;,")


def _skills(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    return [s for s in (_norm(i) for i in items) if s]


def codec_fidelity(original: dict[str, Any], recovered: dict[str, Any]) -> Score:
    """How well metadata (use case, skills) survives decode then encode: half for the same use
    case (case and spacing ignored), half for the Jaccard of the skills; the feedback names what
    was lost and what was invented."""
    use_a, use_b = _norm(original.get("use_case", "")), _norm(recovered.get("use_case", ""))
    a, b = set(_skills(original.get("skills"))), set(_skills(recovered.get("skills")))
    jaccard = len(a & b) / len(a | b) if a | b else 1.0
    same_use = use_a == use_b
    notes = [f"use case kept: '{use_a}'" if same_use else f"use case changed: '{use_a}' came back as '{use_b}'"]
    lost, invented = sorted(a - b), sorted(b - a)
    if lost:
        notes.append("skills lost: " + ", ".join(lost))
    if invented:
        notes.append("skills invented: " + ", ".join(invented))
    if not lost and not invented:
        notes.append("all skills kept: " + ", ".join(sorted(a)) if a else "no skills on either side")
    return Score(0.5 * same_use + 0.5 * jaccard, "; ".join(notes))


# -- the metrics -----------------------------------------------------------------------------


def _first_output(node: Any, values: dict[str, Any], field: str | None) -> Any:
    if field:
        return values.get(field)
    names = list(node.declared) or list(values)
    return values.get(names[0]) if names else None


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


class MetricRunner:
    """Scores one (inputs, result) pair with a declared metric; `modules` builds the other nodes'
    modules on the optimization's hub, `baseline` runs the node's current prompt (pairwise)."""

    def __init__(self, metric: MetricSpec, spec: Any, node: Any, module_for: Callable[..., Any],
                 baseline: Any = None):
        self.metric, self.spec, self.node = metric, spec, node
        self.module_for, self.baseline = module_for, baseline
        self.stage = f"metric:{metric.name}"

    def __call__(self, inputs: dict[str, Any], result: Any, item: str, candidate: Any = None) -> Score:
        if not result.ok:
            return Score(0.0, f"the completion failed: {result.error}")
        kind = self.metric.type
        if kind == "parse":
            return Score(1.0, "the completion parsed")
        if kind == "contains":
            text = self.metric.settings["text"]
            value = _text(_first_output(self.node, result.values, self.metric.settings.get("field")))
            if text in value:
                return Score(1.0, f"the output holds {text!r}")
            return Score(0.0, f"the output lacks {text!r}")
        if kind == "judge":
            return self._judge(inputs, result, item)
        if kind == "pairwise":
            return self._pairwise(inputs, result, item)
        if kind == "codec":
            return self._codec(inputs, result, item, candidate)
        raise ValueError(f"unknown metric type {kind}")

    # -- judges ---------------------------------------------------------------------------

    def _judge_inputs(self, judge: Any, inputs: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        mapping = self.metric.settings.get("inputs") or {}
        fields = {**inputs, **values}
        low, high = self.spec.graph.static(judge.scale)
        given: dict[str, Any] = {"scale_low": low, "scale_high": high}
        for variable in judge.template_variables() - {"scale_low", "scale_high", "answer_1", "answer_2"}:
            source = mapping.get(variable, variable)
            if source in fields:
                given[variable] = fields[source]
            elif variable == "answer":
                given[variable] = _text(_first_output(self.node, values, self.metric.settings.get("field")))
        return given

    def _judge(self, inputs: dict[str, Any], result: Any, item: str) -> Score:
        judge = self.spec.graph.every[self.metric.settings["judge"]]
        module = self.module_for(judge, self.metric.settings.get("model"))
        low, high = self.spec.graph.static(judge.scale)
        verdict = module(item=f"{self.stage}:{item}", **self._judge_inputs(judge, inputs, result.values))
        if not verdict.ok:
            return Score(0.0, f"the judge's answer could not be read: {verdict.error}")
        # a pointwise judge's module may declare no output field: read its raw text with its parser
        values = verdict.values if "score" in verdict.values else module.adapter.parse_text(verdict.raw or "")
        score = float(values["score"])
        why = (verdict.raw or "").strip().split("\n", 1)
        reason = why[1].strip()[:600] if len(why) > 1 else ""
        return Score((score - low) / (high - low), f"the judge scored it {score:g} on {low}-{high}. {reason}".strip())

    def _pairwise(self, inputs: dict[str, Any], result: Any, item: str) -> Score:
        judge = self.spec.graph.every[self.metric.settings["judge"]]
        module = self.module_for(judge, self.metric.settings.get("model"))
        low, high = self.spec.graph.static(judge.scale)
        field = self.metric.settings.get("field")
        base = self.baseline(item=f"baseline:{item}", **inputs)
        tuned = _text(_first_output(self.node, result.values, field))
        if not base.ok:
            return Score(1.0, "the current prompt's output failed; this one did not")
        current = _text(_first_output(self.node, base.values, field))
        given = self._judge_inputs(judge, inputs, result.values)
        first = module(item=f"{self.stage}:{item}:tuned-first", **given, answer_1=tuned, answer_2=current)
        second = module(item=f"{self.stage}:{item}:current-first", **given, answer_1=current, answer_2=tuned)
        if not (first.ok and second.ok):
            return Score(0.5, "the judge's answer could not be read in one order: counted as a tie")
        a = (first.values["score_1"] + second.values["score_2"]) / 2
        b = (first.values["score_2"] + second.values["score_1"]) / 2
        value = 0.5 + (a - b) / (2 * (high - low))
        verdict = "preferred to" if a > b else "worse than" if a < b else "tied with"
        return Score(max(0.0, min(1.0, value)),
                     f"the judge found this output {verdict} the current prompt's ({a:g} vs {b:g}, both orders)")

    # -- codec fidelity -------------------------------------------------------------------

    def _codec(self, inputs: dict[str, Any], result: Any, item: str, candidate: Any) -> Score:
        settings = self.metric.settings
        graph = self.spec.graph
        encode_node, decode_node = graph.every[settings["encode"]], graph.every[settings["decode"]]
        tuning_encode = self.node.name == encode_node.name
        encode = candidate if tuning_encode and candidate is not None else self.module_for(encode_node, None)
        if tuning_encode:
            meta = {"use_case": result.values.get("use_case"), "skills": result.values.get("skills")}
            decode = self.module_for(decode_node, None)
            decode_inputs = {v: meta.get(v, inputs.get(v)) for v in decode_node.template_variables()}
            decode_inputs.setdefault("count", settings.get("count", 1))
            if decode_inputs.get("count") is None:
                decode_inputs["count"] = settings.get("count", 1)
            decoded = decode(item=f"{self.stage}:{item}:decode", **decode_inputs)
            if not decoded.ok:
                return Score(0.0, f"decoding this metadata failed: {decoded.error}")
            values = decoded.values
        else:
            meta = {"use_case": inputs.get("use_case"), "skills": inputs.get("skills")}
            values = result.values
        instruction = _first_output(decode_node, values, None)
        if isinstance(instruction, (list, tuple)):
            instruction = instruction[0] if instruction else ""
        if not str(instruction or "").strip():
            return Score(0.0, "decoding made no instruction")
        again = encode(item=f"{self.stage}:{item}:encode", instruction=str(instruction))
        if not again.ok:
            return Score(0.0, f"encoding the decoded instruction failed: {again.error}")
        fidelity = codec_fidelity(meta, again.values)
        return Score(fidelity.value, f"decoded as: {instruction!r}; {fidelity.feedback}")

"""One DSPy module per kind of model call. Each wraps a `dspy.Predict` whose signature
carries the template's instructions (and whose demos the template renders), so DSPy
optimizers can tune them; `module.save()` / `module.load()` keep the result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy

from .adapter import TemplateAdapter, hub_lm
from .errors import ModelCallError, SpecError
from .hub import CURRENT_CALL, CallContext, ModelHub
from .method import Judgement
from .parsers import (
    ParseError,
    parse_answer,
    parse_instruction,
    parse_list,
    parse_metadata,
    parse_rubrics,
    parse_scores,
)
from .spec import Spec, StageSpec
from .templates import StageTemplate, TemplateStore

# dspy.LM warns on every truncated completion; the hub counts them in the manifest instead.
logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)

# kind -> (input fields, output fields): the template's variables and the parser's result
SIGNATURES: dict[str, tuple[list[str], list[str]]] = {
    "encode": (["instruction"], ["use_case", "skills"]),
    "decode": (["use_case", "skills", "count"], ["items"]),
    "rubrics": (["use_case", "skills", "count"], ["rubrics", "actions"]),
    "improve": (["instruction", "action", "use_case", "skills"], ["improved"]),
    "respond": (["instruction"], ["answer"]),
    "judge": (["instruction", "answer_1", "answer_2", "scale_low", "scale_high"], ["score_1", "score_2"]),
}
SAMPLE_INPUTS: dict[str, Any] = {  # used by `validate` and `render` to render every template
    "instruction": "Write a haiku about the sea.", "use_case": "creative writing", "skills": ["poetry", "imagery"],
    "count": 3, "action": "Add a constraint on the rhyme scheme.", "answer_1": "Answer one.",
    "answer_2": "Answer two.", "scale_low": 1, "scale_high": 10,
}
SAMPLE_OUTPUTS: dict[str, Any] = {  # with SAMPLE_INPUTS, a sample demo
    "use_case": "creative writing", "skills": ["poetry"], "items": ["Write a limerick about a cat."],
    "rubrics": ["Depth of imagery."], "actions": ["Ask for a volta."],
    "improved": "Write a haiku about the sea at dawn.", "answer": "Waves fold into foam.", "score_1": 8, "score_2": 4,
}


@dataclass
class StepResult:
    """One stage's outcome for one item: parsed values, or a failure with the raw text."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def failure(self, stage: str) -> dict[str, Any]:
        return {"stage": stage, "error": self.error, "raw": self.raw}


def _parser(kind: str, spec: Spec):
    params = spec.params
    scale = tuple(params["score_scale"])
    return {
        "encode": lambda text: parse_metadata(text),
        "decode": lambda text: {"items": parse_list(text)},
        "rubrics": lambda text: parse_rubrics(text, params["rubrics"]),
        "improve": lambda text: {"improved": parse_instruction(text)},
        "respond": lambda text: {"answer": parse_answer(text)},
        "judge": lambda text: dict(zip(("score_1", "score_2"), parse_scores(text, scale), strict=True)),
    }[kind]


def make_signature(kind: str, instructions: str) -> type[dspy.Signature]:
    inputs, outputs = SIGNATURES[kind]
    fields = {name: (Any, dspy.InputField()) for name in inputs}
    fields.update({name: (Any, dspy.OutputField()) for name in outputs})
    return dspy.Signature(fields, instructions or f"CodecLM {kind} step.")


class LLMStage(dspy.Module):
    """A stage that makes one model call per item: render, call through the hub, parse."""

    def __init__(self, stage: StageSpec, template: StageTemplate, spec: Spec, hub: ModelHub):
        super().__init__()
        model = spec.models[stage.model]
        self.name, self.kind, self.hub, self.role = stage.name, stage.kind, hub, stage.model
        self.predict = dspy.Predict(make_signature(stage.kind, template.default_instructions))
        decoding = {"temperature": stage.temperature if stage.temperature is not None else model.temperature,
                    "max_tokens": stage.max_tokens or model.max_tokens}
        if model.top_p is not None:
            decoding["top_p"] = model.top_p
        # The parameters a call's identity holds: what DSPy puts in its request, plus the spec's extras.
        self.call_params = {**decoding, **model.extra}
        self.predict.set_lm(hub_lm(hub, stage.model, decoding))
        self.adapter = TemplateAdapter(template, _parser(stage.kind, spec))

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """Instructions and demos only: the model belongs to the spec, not to a saved program."""
        lm, self.predict.lm = self.predict.lm, None
        try:
            return super().dump_state(json_mode)
        finally:
            self.predict.lm = lm

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> LLMStage:
        lm = self.predict.lm
        super().load_state(state, **kwargs)
        self.predict.lm = lm
        return self

    async def aforward(self, item: str, slot: int = 0, **inputs: Any) -> StepResult:
        """The runner's path: many items at once on one event loop."""
        cached = self._from_cache(item, slot, inputs)
        if cached is not None:
            return cached
        # No trace: a long run must not keep every prediction in memory.
        with self._call(item, slot, trace=None) as call:
            call.prediction = await self.predict.acall(**inputs)
        return call.result

    def forward(self, item: str = "-", slot: int = 0, **inputs: Any) -> StepResult:
        """Synchronous path, for DSPy optimizers (which read the trace) and scripts."""
        with self._call(item, slot) as call:
            call.prediction = self.predict(**inputs)
        return call.result

    def _from_cache(self, item: str, slot: int, inputs: dict[str, Any]) -> StepResult | None:
        """Resume and replay: a cached call renders, looks up and parses without DSPy's per-call
        machinery (the same adapter, the same identity), which keeps replay at thousands of calls
        per second. A miss returns None and the call goes through DSPy as usual."""
        ctx = CallContext(stage=self.name, item=item, slot=slot)
        messages = self.adapter.format(self.predict.signature, self.predict.demos, inputs)
        _, entry = self.hub.lookup(self.role, messages, self.call_params, ctx)
        if entry is None:
            return None
        try:
            values = self.adapter.parse_text(entry["text"])
        except ParseError as exc:
            return StepResult(ok=False, error=f"unparsable completion: {exc}", raw=ctx.raw, calls=ctx.calls)
        return StepResult(ok=True, values=values, raw=ctx.raw, calls=ctx.calls)

    @contextmanager
    def _call(self, item: str, slot: int, **settings: Any) -> Iterator[_Call]:
        """Set the call context the hub reads, and turn any failure into a StepResult."""
        call = _Call(CallContext(stage=self.name, item=item, slot=slot))
        token = CURRENT_CALL.set(call.ctx)
        try:
            # No LM history: the hub's accounting and the cache keep what a run needs.
            with dspy.context(adapter=self.adapter, disable_history=True, **settings):
                yield call
            call.result = StepResult(ok=True, values=dict(call.prediction.items()), raw=call.ctx.raw,
                                     calls=call.ctx.calls)
        except Exception as exc:  # failure is data: recorded on the item, the run goes on
            if self.hub.fatal is not None:
                raise self.hub.fatal from None
            ctx = call.ctx
            error = f"unparsable completion: {ctx.parse_error}" if ctx.parse_error else _describe(exc)
            call.result = StepResult(ok=False, error=error, raw=ctx.raw, calls=ctx.calls)
        finally:
            CURRENT_CALL.reset(token)


@dataclass
class _Call:
    ctx: CallContext
    prediction: Any = None
    result: StepResult | None = None


class JudgeStage(LLMStage):
    """The pairwise judge, asked in both orders (against position bias); scores averaged."""

    async def judge(self, item: str, instruction: str, strong: str, target: str, scale: list[float],
                    both_orders: bool) -> tuple[Judgement | None, list[StepResult]]:
        import asyncio

        common = {"instruction": instruction, "scale_low": scale[0], "scale_high": scale[1]}
        orders = [self.acall(item=item, answer_1=strong, answer_2=target, **common)]
        if both_orders:
            orders.append(self.acall(item=item, answer_1=target, answer_2=strong, **common))
        results = await asyncio.gather(*orders)
        pairs = [(r.values["score_1"], r.values["score_2"]) if r.ok else None for r in results]
        if any(p is None for p in pairs):
            return None, results
        return Judgement(strong_first=pairs[0], target_first=pairs[1] if both_orders else None), results


def _describe(exc: BaseException) -> str:
    """The error a failed call records: the model call's own, when DSPy wrapped it in its own."""
    link: BaseException | None = exc
    for _ in range(8):  # exception chains are short; never loop on a cycle
        if link is None:
            break
        if isinstance(link, ModelCallError):
            return str(link)
        link = link.__cause__ or link.__context__
    cause = exc.__cause__ or exc.__context__
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} (caused by {type(cause).__name__}: {cause})" if cause and str(cause) not in text else text


def build_stages(spec: Spec, hub: ModelHub) -> dict[str, LLMStage]:
    """One module per model-calling stage of the spec, keyed by stage name."""
    store = TemplateStore(spec.prompts_dir)
    return {stage.name: build_stage(stage, store.get(stage.template), spec, hub)
            for stage in spec.stages.values() if stage.kind in SIGNATURES}


def build_stage(stage: StageSpec, template: StageTemplate, spec: Spec, hub: ModelHub) -> LLMStage:
    """A stage's module, with its tuned `program:` loaded when it names one."""
    module = (JudgeStage if stage.kind == "judge" else LLMStage)(stage, template, spec, hub)
    if stage.program:
        module.load(str(stage.program))
    return module


def model_stage(spec: Spec, name: str) -> StageSpec:
    """The model-calling stage `name`, or a SpecError listing the ones there are."""
    stage = spec.stages.get(name)
    if stage is None or stage.kind not in SIGNATURES:
        names = [s.name for s in spec.stages.values() if s.kind in SIGNATURES]
        raise SpecError(str(spec.path), f"no model-calling stage named '{name}'", hint=f"stages: {', '.join(names)}")
    return stage


def check_templates(spec: Spec) -> None:
    """Render every stage's template with sample inputs, without and with a demo (undefined
    variables, bad roles)."""
    store = TemplateStore(spec.prompts_dir)
    for stage in spec.stages.values():
        if stage.kind in SIGNATURES:
            template = store.get(stage.template)
            for demos in ([], [sample_demo(stage.kind)]):
                template.render({**sample_inputs(stage.kind), "instructions": template.default_instructions,
                                 "demos": demos})


def sample_inputs(kind: str) -> dict[str, Any]:
    return {name: SAMPLE_INPUTS[name] for name in SIGNATURES[kind][0]}


def sample_demo(kind: str) -> dict[str, Any]:
    return {**sample_inputs(kind), **{name: SAMPLE_OUTPUTS[name] for name in SIGNATURES[kind][1]}}

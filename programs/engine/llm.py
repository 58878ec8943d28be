"""The DSPy module behind every llm and judge node: render, call through the hub, parse.

The node's YAML is its signature: its inputs are the template's variables, its declared
outputs the parser's. A `dspy.Predict` holds the optimizable part (the template's default
instructions and the demos it renders), so DSPy optimizers tune exactly what the prompt
shows and `module.save()` / `program:` keep the result.

The run path (`run`) renders and hashes each call once and goes to the hub directly: DSPy's
per-call machinery is for optimizers, which call `forward` and read its trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dspy

from ..errors import ModelCallError, SpecError
from ..lang.graph import Graph
from ..lang.nodes import JudgeNode, LLMNode
from ..lang.parsers import ParseError, parse_scores
from ..lang.parsing import PARSERS
from ..lang.spec import Spec
from ..lang.templates import StageTemplate, TemplateStore
from ..models.hub import CURRENT_CALL, CallContext, ModelHub
from .adapter import NO_INSTRUCTIONS, TemplateAdapter, hub_lm

# dspy.Module reads every attribute through a Python-level __getattribute__ (it watches for `forward`):
# the per-call path reads the module's and its Predict's attributes with object's own, a C call.
_read = object.__getattribute__

# dspy.LM warns on every truncated completion; the hub counts them in the manifest instead.
logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)


@dataclass
class StepResult:
    """One call's outcome: parsed values, or a failure with the raw text."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def failure(self, node: str) -> dict[str, Any]:
        return {"stage": node, "error": self.error, "raw": self.raw}


def make_parser(node: LLMNode, graph: Graph) -> Callable[[str], dict[str, Any]]:
    """The node's named parser, with its static arguments, returning {output: value}."""
    if isinstance(node, JudgeNode):
        scale = tuple(graph.static(node.scale))
        if node.pair:
            return lambda text: dict(zip(("score_1", "score_2"), parse_scores(text, scale), strict=True))
        return lambda text: {"score": PARSERS["score"].read(text, ["score"], scale=list(scale))}
    parser = PARSERS[node.parse.name]
    args = {k: graph.static(v) for k, v in node.parse.args.items()}
    outputs = list(node.declared)
    if parser.maps:
        return lambda text: {k: v for k, v in parser.read(text, outputs, **args).items() if k in outputs}
    return lambda text: {outputs[0]: parser.read(text, outputs, **args)}


def make_signature(node: LLMNode, instructions: str) -> type[dspy.Signature]:
    fields = {name: (Any, dspy.InputField()) for name in sorted(node.template_variables())}
    fields.update({name: (Any, dspy.OutputField()) for name in node.call_outputs()})
    return dspy.Signature(fields, instructions or NO_INSTRUCTIONS)


class NodeModule(dspy.Module):
    """One llm (or judge) node as a DSPy module: one model call per `run`."""

    def __init__(self, node: LLMNode, template: StageTemplate, spec: Spec, hub: ModelHub, role: str | None = None):
        super().__init__()
        self.node, self.name, self.hub = node, node.name, hub
        self.role = role or node.model
        model = spec.models[self.role]
        self.predict = dspy.Predict(make_signature(node, node.instructions or template.default_instructions))
        decoding = {"temperature": node.temperature if node.temperature is not None else model.temperature,
                    "max_tokens": node.max_tokens or model.max_tokens}
        if model.top_p is not None:
            decoding["top_p"] = model.top_p
        # A call's identity holds what DSPy would put in its request, plus the spec's extras.
        self.call_params = {**decoding, **model.extra}
        self.predict.set_lm(hub_lm(hub, self.role, decoding))
        self.adapter = TemplateAdapter(template, make_parser(node, spec.graph))

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """Instructions and demos only: the model belongs to the spec, not to a saved program."""
        lm, self.predict.lm = self.predict.lm, None
        try:
            return super().dump_state(json_mode)
        finally:
            self.predict.lm = lm

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> NodeModule:
        lm = self.predict.lm
        super().load_state(state, **kwargs)
        self.predict.lm = lm
        return self

    def render(self, inputs: dict[str, Any]) -> list[dict[str, str]]:
        predict = _read(self, "predict")
        return _read(self, "adapter").messages(_read(predict, "signature"), _read(predict, "demos"), inputs)

    async def run(self, item: str, slot: int, inputs: dict[str, Any]) -> StepResult:
        """The engine's path: render once, look up once, call the model on a miss, parse."""
        hub, role, params, adapter = (_read(self, "hub"), _read(self, "role"), _read(self, "call_params"),
                                      _read(self, "adapter"))
        ctx = CallContext(stage=_read(self, "name"), item=item, slot=slot)
        try:
            messages = _read(self, "render")(inputs)
            identity, entry = hub.lookup(role, messages, params, ctx)
            if entry is None:
                entry = await hub.fetch(role, identity, messages, params, ctx)
        except Exception as exc:  # noqa: BLE001 - failure is data: recorded on the record, the run goes on
            if hub.fatal is not None:
                raise hub.fatal from None
            return StepResult(ok=False, error=describe(exc), raw=ctx.raw, calls=ctx.calls)
        try:
            values = adapter.parse_text(entry["text"])
        except ParseError as exc:
            return StepResult(ok=False, error=f"unparsable completion: {exc}", raw=entry["text"], calls=ctx.calls)
        return StepResult(ok=True, values=values, raw=entry["text"], calls=ctx.calls)

    def forward(self, item: str = "-", slot: int = 0, **inputs: Any) -> StepResult:
        """Synchronous path through dspy.Predict, for DSPy optimizers (which read the trace)."""
        with self._call(item, slot) as call:
            call.prediction = self.predict(**inputs)
        return call.result

    @contextmanager
    def _call(self, item: str, slot: int) -> Iterator[_Call]:
        """Set the call context the hub reads, and turn any failure into a StepResult."""
        call = _Call(CallContext(stage=self.name, item=item, slot=slot))
        token = CURRENT_CALL.set(call.ctx)
        try:
            with dspy.context(adapter=self.adapter, disable_history=True):
                yield call
            call.result = StepResult(ok=True, values=dict(call.prediction.items()), raw=call.ctx.raw,
                                     calls=call.ctx.calls)
        except Exception as exc:  # noqa: BLE001 - failure is data, as in run()
            if self.hub.fatal is not None:
                raise self.hub.fatal from None
            ctx = call.ctx
            error = f"unparsable completion: {ctx.parse_error}" if ctx.parse_error else describe(exc)
            call.result = StepResult(ok=False, error=error, raw=ctx.raw, calls=ctx.calls)
        finally:
            CURRENT_CALL.reset(token)


@dataclass
class _Call:
    ctx: CallContext
    prediction: Any = None
    result: StepResult | None = None


def describe(exc: BaseException) -> str:
    """The error a failed call records: the model call's own, when another error wraps it."""
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


class _QuietCopies(logging.Filter):
    """DSPy warns on every copy of a module that a node's parsed config is shared, not copied: it is
    read-only, so sharing it is right, and the warning would bury the progress lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to deep copy attribute")


@contextmanager
def quiet_copies() -> Iterator[None]:
    """Without DSPy's deep-copy warnings (loading a program, an optimizer's candidates)."""
    quiet = _QuietCopies()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def build_module(node: LLMNode, spec: Spec, hub: ModelHub, role: str | None = None,
                 with_program: bool = True) -> NodeModule:
    """A node's module, with its tuned `program:` loaded when it names one."""
    module = NodeModule(node, TemplateStore(spec.prompts_dir).get(node.template), spec, hub, role)
    if with_program and node.program:
        try:
            with quiet_copies():
                module.load(str(node.program))
        except Exception as exc:  # noqa: BLE001 - any file that is not a saved program: say which
            raise SpecError(str(node.program), f"node '{node.name}': not a program `codeclm optimize` saved "
                            f"({type(exc).__name__}: {str(exc)[:200]})",
                            hint="make one with codeclm optimize SPEC NODE, or drop 'program:'") from None
    return module


def build_modules(spec: Spec, hub: ModelHub) -> dict[str, NodeModule]:
    """One module per model-calling node, keyed by node name (DSPy optimizers can take any of them)."""
    return {node.name: build_module(node, spec, hub) for node in spec.graph.model_nodes()}

"""Sample values for checking a template before a run (`validate`, `run`, `render` without --input).

Each template variable gets a value of the kind its input will have at run time, where the spec
says it: a param's own value, a literal, a judge's number, a parser's list or yes/no, the first
inline record's field. `{{ n + 1 }}` with `n: params.n` then renders as it will in the run (a
string placeholder made it a TypeError and refused a valid template). Where the spec does not
say (a JSON parser's field, a computed expression), the check uses an `AnyValue`, and `render`
a "<name>" placeholder.
"""

from __future__ import annotations

from typing import Any

import jinja2

from ..lang.expressions import Expression, evaluate_value, tree_references
from ..lang.graph import Graph
from ..lang.nodes import JudgeNode, LLMNode, LoopNode, MixNode, SourceNode

# Sample texts and lists for the variable names the shipped templates use (the others get "<name>").
SAMPLE_VALUES: dict[str, Any] = {
    "instruction": "Write a haiku about the sea.", "use_case": "creative writing", "skills": ["poetry", "imagery"],
    "count": 3, "action": "Add a constraint on the rhyme scheme.", "answer_1": "Answer one.",
    "answer_2": "Answer two.", "scale_low": 1, "scale_high": 10, "answer": "Waves fold into foam.",
    "items": ["Write a limerick about a cat."], "rubrics": ["Depth of imagery."], "actions": ["Ask for a volta."],
    "improved": "Write a haiku about the sea at dawn.", "score_1": 8, "score_2": 4,
}
UNKNOWN = object()  # what `sample_of` gives when the spec does not say what kind a value is
_PARSED = {"score": 7, "yes_no": True}  # parsers whose one value is not text


def placeholder(name: str) -> Any:
    return SAMPLE_VALUES.get(name, f"<{name}>")


def text_sample(name: str) -> str:
    sample = SAMPLE_VALUES.get(name)
    return sample if isinstance(sample, str) else f"<{name}>"


def list_sample(name: str) -> list[Any]:
    sample = SAMPLE_VALUES.get(name)
    return sample if isinstance(sample, list) else [f"<{name} 1>", f"<{name} 2>"]


class AnyValue:
    """Stands for a value whose kind the spec does not say (a JSON parser's field): every field,
    item, call and arithmetic gives it again, comparisons are false, it iterates as empty and
    prints as <name>. A template check with it fails only on what fails whatever the value (1 / 0)."""

    unsafe_callable = False  # what Jinja's sandbox asks of anything it calls
    alters_data = False

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return self

    def __getitem__(self, key: Any) -> AnyValue:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> AnyValue:
        return self

    def __str__(self) -> str:
        return f"<{self._name}>"

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0

    def __round__(self, digits: int | None = None) -> AnyValue:
        return self

    def __contains__(self, item: Any) -> bool:
        return False

    def _same(self, *other: Any) -> AnyValue:
        return self

    def _false(self, other: Any) -> bool:
        return False

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _same
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = _same
    __lt__ = __le__ = __gt__ = __ge__ = _false


def sample_inputs(node: LLMNode, graph: Graph) -> tuple[dict[str, Any], set[str]]:
    """Sample values for a node's template variables, and the names whose kind is unknown (given a
    "<name>" placeholder here). A judge's scale is its own."""
    values, unknown = {}, set()
    for name in sorted(node.template_variables()):
        value = sample_of(node.inputs[name], graph, name, _enclosing(graph, node)) if name in node.inputs else UNKNOWN
        if value is UNKNOWN:
            value = placeholder(name)
            unknown.add(name)
        values[name] = value
    if isinstance(node, JudgeNode):
        values["scale_low"], values["scale_high"] = graph.static(node.scale)
        unknown -= {"scale_low", "scale_high"}
        if node.pair:  # the two answers compared: texts
            values["answer_1"], values["answer_2"] = text_sample("answer_1"), text_sample("answer_2")
            unknown -= {"answer_1", "answer_2"}
    return values, unknown


def output_samples(node: LLMNode, names: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Sample values of what one call of the node parses into (a demo's outputs), and the unknown ones."""
    values = {name: field_sample(node, name, None, name) for name in names}
    unknown = {name for name, value in values.items() if value is UNKNOWN}
    return {name: placeholder(name) if name in unknown else value for name, value in values.items()}, unknown


def sample_of(expression: Any, graph: Graph, name: str, loop: LoopNode | None = None) -> Any:
    """A value of the kind `expression` gives at run time (variable `name`'s), or UNKNOWN; `loop` is
    the loop whose body the expression is in (its `state` is then known). A computed expression
    (`prompts.human + prompts.machine`) is computed from its references' samples."""
    refs = tree_references(expression)
    plain = isinstance(expression, Expression) and len(refs) == 1 and refs[0].field is not None \
        and expression.source.strip() == f"{refs[0].root}.{refs[0].field}"
    scope: dict[str, Any] = {"params": graph.params}
    for ref in refs:
        if ref.root == "params":
            continue
        value = _reference_sample(ref, graph, name if plain else str(ref.field), loop)
        if value is UNKNOWN:
            return UNKNOWN
        if plain:
            return value
        scope.setdefault(ref.root, {})[ref.field] = value
    try:
        return evaluate_value(expression, scope)
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError):
        return UNKNOWN


def _reference_sample(ref: Any, graph: Graph, name: str, loop: LoopNode | None) -> Any:
    """A sample of what `ref` (NODE.FIELD, state.X, loop.X) reads, or UNKNOWN."""
    if ref.field is None:
        return UNKNOWN
    if ref.root == "state" and loop is not None and ref.field in loop.state:  # as the loop starts it
        return sample_of(loop.state[ref.field], graph, name, _enclosing(graph, loop))
    if ref.root == "loop":
        return {"index": 1, "max": 4, "calls": 1, "first": True, "last": False}.get(ref.field, UNKNOWN)
    node = graph.every.get(ref.root)
    return UNKNOWN if node is None else field_sample(node, ref.field, graph, name)


def _enclosing(graph: Graph, node: Any) -> LoopNode | None:
    """The loop whose body holds `node`, if any."""
    owner = graph.every.get(node.loop) if node.loop else None
    return owner if isinstance(owner, LoopNode) else None


def field_sample(node: Any, field: str, graph: Graph | None, name: str) -> Any:
    """A value of the kind field `field` of `node`'s records has (as variable `name`), or UNKNOWN."""
    if graph is not None and field not in node.outputs() and node.for_each in graph.every:
        return field_sample(graph.every[node.for_each], field, graph, name)  # an ancestor's, on its lineage
    if isinstance(node, JudgeNode):
        return 7 if field in ("score", "a", "b", "gap", "score_1", "score_2") else UNKNOWN
    if isinstance(node, LLMNode):
        if node.explode is not None and field == node.explode.as_:
            return text_sample(name)
        parser = node.parse.name
        if parser in _PARSED and len(node.declared) == 1:
            return _PARSED[parser]
        if parser in ("list", "rubrics") or (parser == "metadata" and field == "skills"):
            return list_sample(name)
        return text_sample(name) if parser in ("text", "instruction", "fields", "metadata") else UNKNOWN
    if isinstance(node, SourceNode):
        if node.records:
            return node.records[0].get(node.fields.get(field, field), UNKNOWN)
        return text_sample(name)  # a file's fields are text
    if isinstance(node, MixNode) and graph is not None and field in node.draws:
        draw = node.draws[field]
        if not draw.nodes:  # drawn from nothing (round 1's pool of earlier rounds): as the run draws it
            return [] if draw.kind == "sample" else UNKNOWN
        drawn = graph.every.get(draw.nodes[0])
        one = UNKNOWN if drawn is None or isinstance(drawn, MixNode) else field_sample(drawn, draw.field, graph, name)
        if one is UNKNOWN or draw.kind == "choice":
            return one
        return list(one) if draw.flatten and isinstance(one, list) else [one]
    return UNKNOWN

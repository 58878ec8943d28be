"""Sample values for checking a template before a run (`validate`, `run`, `render` without --input).

Each template variable gets a value of the kind its input will have at run time, where the spec
says it: a param's own value, a literal, a judge's number, a parser's list or yes/no, the first
inline record's field. `{{ n + 1 }}` with `n: params.n` then renders as it will in the run (a
string placeholder made it a TypeError and refused a valid template). Where the spec does not
say (a JSON parser's field, a computed expression), the value is a placeholder, and the caller
knows it is one.
"""

from __future__ import annotations

from typing import Any

import jinja2

from ..lang.expressions import Expression, evaluate_value, tree_references
from ..lang.graph import Graph
from ..lang.nodes import JudgeNode, LLMNode, MixNode, SourceNode

# Sample texts for the variable names the shipped templates use (the others get "<name>").
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


def sample_inputs(node: LLMNode, graph: Graph) -> tuple[dict[str, Any], set[str]]:
    """Sample values for a node's template variables, and the names whose kind is unknown (given a
    placeholder). A judge's scale is its own."""
    values, unknown = {}, set()
    for name in sorted(node.template_variables()):
        value = sample_of(node.inputs[name], graph) if name in node.inputs else UNKNOWN
        if value is UNKNOWN:
            value = placeholder(name)
            unknown.add(name)
        elif type(value) is type(SAMPLE_VALUES.get(name)) and isinstance(value, (str, list)):
            value = SAMPLE_VALUES[name]  # of the same kind, and reads like a real one
        values[name] = value
    if isinstance(node, JudgeNode):
        values["scale_low"], values["scale_high"] = graph.static(node.scale)
        unknown -= {"scale_low", "scale_high"}
    return values, unknown


def sample_of(expression: Any, graph: Graph, depth: int = 0) -> Any:
    """A value of the kind `expression` gives at run time, or UNKNOWN."""
    if not tree_references(expression):  # a literal, or an expression of literals
        try:
            return evaluate_value(expression, {})
        except Exception:  # noqa: BLE001 - an expression of literals that fails: the run would say so
            return UNKNOWN
    refs = tree_references(expression)
    if all(ref.root == "params" for ref in refs):
        try:
            return graph.static(expression)
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError):
            return UNKNOWN
    if not isinstance(expression, Expression) or len(refs) != 1 or depth > 8:
        return UNKNOWN
    ref = refs[0]
    if ref.field is None or expression.source.strip() != f"{ref.root}.{ref.field}":
        return UNKNOWN  # computed from a node's value: its kind is the computation's
    node = graph.every.get(ref.root)
    return UNKNOWN if node is None else field_sample(node, ref.field, graph, depth)


def field_sample(node: Any, name: str, graph: Graph, depth: int) -> Any:
    """A value of the kind node `node`'s field `name` has, or UNKNOWN."""
    if isinstance(node, JudgeNode):
        return 7 if name in ("score", "a", "b", "gap") else UNKNOWN
    if isinstance(node, LLMNode):
        if node.explode is not None and name == node.explode.as_:
            return f"<{name}>"
        parser = node.parse.name
        if parser in _PARSED and len(node.declared) == 1:
            return _PARSED[parser]
        if parser == "list":
            return [f"<{name} 1>", f"<{name} 2>"]
        if parser == "metadata":
            return SAMPLE_VALUES["skills"] if name == "skills" else SAMPLE_VALUES["use_case"]
        if parser == "rubrics":
            return SAMPLE_VALUES.get(name, UNKNOWN)
        return f"<{name}>" if parser in ("text", "instruction", "fields") else UNKNOWN
    if isinstance(node, SourceNode):
        if node.records:
            return node.records[0].get(node.fields.get(name, name), UNKNOWN)
        return f"<{name}>"  # a file's fields are text
    if isinstance(node, MixNode) and name in node.draws:
        draw = node.draws[name]
        drawn = graph.every.get(draw.nodes[0]) if draw.nodes else None
        one = UNKNOWN if drawn is None else field_sample(drawn, draw.field, graph, depth + 1)
        if one is UNKNOWN or draw.kind == "choice":
            return one
        return [item for item in (one if draw.flatten and isinstance(one, list) else [one])]
    return UNKNOWN

"""The spec's `optimize:` section: per llm node, the metrics `codeclm optimize` may tune it for.

```yaml
optimize:
  respond:                       # an llm (or judge) node of the spec
    metric: quality              # the default for `codeclm optimize SPEC respond`
    metrics:
      quality: {type: judge, judge: rate}               # a pointwise judge node scores the output
      prefer: {type: pairwise, judge: compare}          # tuned vs current output, both orders
      marker: {type: contains, text: "Step 1", field: answer}
  encode:
    metric: fidelity
    metrics:
      fidelity: {type: codec, encode: encode, decode: decode}
```

`parse` (the completion parses) is always there without being declared. Checked when the spec
loads, like every other section: each problem with its line and fix (exit 2). No DSPy and no
model here: `validate` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lang.nodes import JudgeNode, LLMNode

METRIC_TYPES: dict[str, set[str]] = {
    "parse": set(),
    "judge": {"judge", "model", "inputs", "field"},
    "pairwise": {"judge", "model", "inputs", "field"},
    "codec": {"encode", "decode", "count"},
    "contains": {"text", "field"},
}
METRIC_HELP = {
    "parse": "{type: parse}: 1 when the node's parser accepts the completion",
    "judge": "{type: judge, judge: NODE}: a pointwise judge node of the spec scores the output, 0-1",
    "pairwise": "{type: pairwise, judge: NODE}: a pairwise judge node prefers the tuned output to the current one",
    "codec": "{type: codec, encode: NODE, decode: NODE}: the metadata survives decode and encode again",
    "contains": "{type: contains, text: WORD}: 1 when the output holds the text",
}


@dataclass
class MetricSpec:
    name: str
    type: str
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, **self.settings}


@dataclass
class NodeTuning:
    node: str
    metric: str = "parse"  # the default metric's name
    metrics: dict[str, MetricSpec] = field(default_factory=dict)


PARSE = MetricSpec("parse", "parse")


def node_fields(node: Any) -> set[str]:
    """What a metric may read of a tuned node's example: its inputs and its parsed outputs."""
    return set(node.template_variables()) | set(node.declared or ["score"])


def check_optimize(checker: Any, raw: Any, graph: Any, models: dict[str, Any]) -> dict[str, NodeTuning]:
    """The `optimize:` section, checked; problems go to the spec checker (file, line, fix)."""
    section = checker.mapping(("optimize",), raw, "optimize")
    found: dict[str, NodeTuning] = {}
    model_nodes = sorted(n.name for n in graph.model_nodes())
    for name, conf in section.items():
        where = ("optimize", name)
        node = graph.every.get(name)
        if not isinstance(node, LLMNode):
            checker.error(where, f"optimize: '{name}' is not an llm or judge node",
                          f"llm nodes: {', '.join(model_nodes)}")
            continue
        conf = checker.mapping(where, conf, f"optimize.{name}")
        checker.check_keys(where, conf, {"metric", "metrics"}, f"optimize.{name}")
        tuning = NodeTuning(name)
        metrics = checker.mapping((*where, "metrics"), conf.get("metrics"), f"optimize.{name}.metrics")
        for metric_name, body in metrics.items():
            spot = (*where, "metrics", metric_name)
            body = checker.mapping(spot, body, f"metric '{metric_name}'")
            kind = body.get("type")
            if kind not in METRIC_TYPES:
                checker.error(spot, _no_type(metric_name, body), "; ".join(METRIC_HELP.values()))
                continue
            checker.check_keys(spot, body, METRIC_TYPES[kind] | {"type"}, f"metric '{metric_name}'")
            settings = {k: v for k, v in body.items() if k != "type"}
            _check_metric(checker, spot, node, kind, settings, graph, models)
            tuning.metrics[metric_name] = MetricSpec(metric_name, kind, settings)
        default = conf.get("metric", "parse")
        if default != "parse" and default not in tuning.metrics:
            checker.error((*where, "metric"), f"optimize.{name}.metric: no metric named {default!r}",
                          f"declare it under metrics:, or use one of: {', '.join(['parse', *tuning.metrics])}")
        tuning.metric = str(default)
        found[name] = tuning
    return found


def _check_metric(checker: Any, spot: tuple, node: Any, kind: str, settings: dict[str, Any], graph: Any,
                  models: dict[str, Any]) -> None:
    fields = node_fields(node)
    if "field" in settings and settings["field"] not in fields:
        checker.error((*spot, "field"), f"'{node.name}' has no field {settings['field']!r}",
                      f"fields: {', '.join(sorted(fields))}")
    if "model" in settings and settings["model"] not in models:
        checker.error((*spot, "model"), f"no model role {settings['model']!r}", f"roles: {', '.join(models)}")
    if kind in ("judge", "pairwise"):
        judge = graph.every.get(settings.get("judge"))
        pairwise = kind == "pairwise"
        if not isinstance(judge, JudgeNode) or bool(judge.pair) != pairwise:
            what = "a pairwise judge node (with pair:)" if pairwise else "a pointwise judge node (no pair:)"
            checker.error((*spot, "judge"), f"judge: {settings.get('judge')!r} is not {what}",
                          _judges_hint(graph, pairwise))
            return
        mapping = settings.get("inputs") or {}
        if not isinstance(mapping, dict):
            checker.error((*spot, "inputs"), "inputs must map a judge template variable to a field of the node")
            return
        for variable in sorted(judge.template_variables() - {"scale_low", "scale_high", "answer_1", "answer_2"}):
            source = mapping.get(variable, variable)
            if source not in fields and not (variable == "answer" and kind == "judge"):
                checker.error((*spot, "inputs"), f"judge '{judge.name}' reads {variable!r}, which '{node.name}' "
                              "neither takes nor makes", f"map it: inputs: {{{variable}: FIELD}}, FIELD one of "
                              f"{', '.join(sorted(fields))}")
    elif kind == "codec":
        for key in ("encode", "decode"):
            other = graph.every.get(settings.get(key))
            if not isinstance(other, LLMNode) or isinstance(other, JudgeNode):
                checker.error((*spot, key), f"{key}: {settings.get(key)!r} is not an llm node",
                              f"name the spec's {key} node, e.g. {key}: {key}")
                return
        if node.name not in (settings["encode"], settings["decode"]):
            checker.error(spot, f"a codec metric tunes its encode or its decode node, not '{node.name}'",
                          f"write it under optimize.{settings['encode']} or optimize.{settings['decode']}")
        encode = graph.every[settings["encode"]]
        if not {"use_case", "skills"} <= set(encode.declared):
            checker.error((*spot, "encode"), f"encode node '{encode.name}' must make use_case and skills",
                          "parse: metadata gives them")
        if "instruction" not in encode.template_variables():
            checker.error((*spot, "encode"), f"encode node '{encode.name}' must read 'instruction'")
    elif kind == "contains" and (not isinstance(settings.get("text"), str) or not settings.get("text")):
        checker.error((*spot, "text"), "contains: text must be a non-empty string", "e.g. text: Step 1")


def _no_type(name: str, body: dict[str, Any]) -> str:
    """A metric whose type is missing or unknown; a missing one names the keys there are, which shows
    `{type:judge,judge:rate}` (no space after the colons: YAML's two keys without values), once read as
    'unknown type None'."""
    if "type" in body:
        return f"metric '{name}': unknown type {body['type']!r}"
    return f"metric '{name}' has no type" + (f" (its keys: {', '.join(repr(str(k)) for k in body)})" if body else "")


def _judges_hint(graph: Any, pairwise: bool) -> str:
    """The judge nodes a metric of this kind may name, and those of the other kind with the metric type
    that names them: a spec with only a pairwise judge is told `type: pairwise`."""
    from ..errors import SPEC_REFERENCE

    judges = [n for n in graph.model_nodes() if isinstance(n, JudgeNode)]
    names = [n.name for n in judges if bool(n.pair) == pairwise]
    others = [n.name for n in judges if bool(n.pair) != pairwise]
    kind = "pairwise judge nodes (with pair:)" if pairwise else "pointwise judge nodes (no pair:)"
    hint = (f"{kind} in this spec: {', '.join(names)}" if names
            else f"this spec has no {kind}: add one (see judge in {SPEC_REFERENCE})")
    if others:
        hint += f"; to name {', '.join(others)}, write {'type: judge' if pairwise else 'type: pairwise'}"
    return hint


def tuning_for(spec: Any, node: str) -> NodeTuning:
    return getattr(spec, "optimize", {}).get(node) or NodeTuning(node)


def pick_metric(spec: Any, node: str, name: str | None) -> MetricSpec:
    """The metric `--metric NAME` names (default: the node's `metric:`), or a SpecError."""
    from ..errors import SPEC_REFERENCE, SpecError

    tuning = tuning_for(spec, node)
    name = name or tuning.metric
    if name == "parse":
        return tuning.metrics.get("parse", PARSE)
    if name not in tuning.metrics:
        raise SpecError(str(spec.path), f"node '{node}' has no metric named {name!r}",
                        hint=f"metrics: {', '.join(['parse', *tuning.metrics])}; declare one under "
                        f"optimize.{node}.metrics; see optimize in {SPEC_REFERENCE}")
    return tuning.metrics[name]

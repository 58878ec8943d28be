"""`run --dry-run` bounds, computed from the graph: the most calls per (node, model role) the spec
can make, if no loop stops early and nothing fails. A loop body counts per iteration: a node
whose `when` reads only params and `loop.*` is counted only in the iterations where it holds,
and an iteration ends at a switch whose first matching case (known from params and `loop.*`
alone) exits, when every case before it exits too."""

from __future__ import annotations

from collections import Counter
from typing import Any

import jinja2

from .expressions import evaluate_value, tree_references
from .graph import Graph
from .nodes import JudgeNode, LLMNode, LoopNode, MixNode, Node, SourceNode, SwitchNode


def upper_bounds(graph: Graph, source_records: dict[str, int]) -> Counter:
    """Calls per (node, model role); `source_records` gives each source node's record count."""
    records: dict[str, int] = {}
    bounds: Counter = Counter()
    for node in _in_order(graph):
        records[node.name] = _records(graph, node, records, source_records)
        if isinstance(node, LoopNode):
            _loop_calls(graph, node, records[node.for_each or ""], bounds)
        elif isinstance(node, LLMNode) and (not node.lazy or _is_read(graph, node.name)):
            # a lazy node runs at most once per record of its for_each, if anything reads it
            bounds[(node.name, node.model)] += records[node.for_each or ""] * _calls_per_run(graph, node)
    return bounds


def _is_read(graph: Graph, name: str) -> bool:
    """Whether a node, a loop body node or an output reads node `name` (a join)."""
    return any(name in joins for joins in graph.joins.values())


def _in_order(graph: Graph) -> list[Node]:
    done: list[Node] = []
    pending = list(graph.nodes.values())
    while pending:
        ready = [n for n in pending if all(d in {x.name for x in done} for d in
                                           [n.for_each, *n.collections] if d)]
        if not ready:  # the graph check refused cycles; whatever is left cannot run
            break
        for node in ready:
            pending.remove(node)
            done.append(node)
    return done


def _records(graph: Graph, node: Node, records: dict[str, int], sources: dict[str, int]) -> int:
    if isinstance(node, SourceNode):
        return sources.get(node.name, 0)
    if isinstance(node, MixNode):
        return graph.static(node.count)
    parent = records.get(node.for_each or "", 0)
    if isinstance(node, LLMNode) and node.explode:
        limit = node.explode.limit
        return parent * (graph.static(limit) if limit is not None else 1)
    if isinstance(node, LoopNode) and node.emit == "each":
        return parent * graph.static(node.max)
    return parent


def _calls_per_run(graph: Graph, node: LLMNode) -> int:
    if isinstance(node, JudgeNode) and node.pair and graph.static(node.both_orders):
        return 2
    return 1


def _static(value: Any, graph: Graph, loop: dict[str, Any]) -> Any:
    """The value when it reads only params and loop.*, else None (known only at run time)."""
    if any(r.root not in ("params", "loop") for r in tree_references(value)):
        return None
    try:
        return evaluate_value(value, {"params": graph.params, "loop": loop})
    except (jinja2.UndefinedError, TypeError):
        return None


def _loop_calls(graph: Graph, node: LoopNode, records: int, bounds: Counter) -> None:
    maximum = graph.static(node.max)
    for index in range(1, maximum + 1):
        loop = {"index": index, "first": index == 1, "last": index == maximum, "max": maximum}
        for body in node.body.values():
            if body.when is not None and _static(body.when, graph, loop) is False:
                continue
            if isinstance(body, LLMNode):
                bounds[(body.name, body.model)] += records * _calls_per_run(graph, body)
            if isinstance(body, SwitchNode) and _ends_iteration(graph, body, loop):
                break


def _ends_iteration(graph: Graph, switch: SwitchNode, loop: dict[str, Any]) -> bool:
    for case in switch.cases:
        holds = True if case.when is None else _static(case.when, graph, loop)
        if case.exit is None:
            if holds is True:
                return False
            continue
        if holds is True:
            return True
    return False

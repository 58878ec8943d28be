"""The graph of a spec, checked before anything runs.

Edges come from what nodes say: `for_each` (one run per record of another node), the names
their expressions read (`judge.gap`), whole collections (`mix from:`, `dedup against:`) and
outputs' `from`. Checked here: every reference resolves to a node this one can see (an
ancestor on its records' lineage, an earlier node of the same loop body, or a per-record node
hanging off an ancestor: a *join*, such as CodecLM's rubrics per pool entry), no cycles,
every node feeds an output, every template variable is provided, static values (counts,
scales) have the right type. Each problem is one SpecError with the YAML line and a fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import meta

from ..errors import SpecError
from .expressions import HELPERS, Expression, ExpressionError, check_sandbox, evaluate_value, tree_references
from .nodes import (
    LOOP_FIELDS,
    RECORD_FIELDS,
    ROUND_FIELDS,
    VIRTUAL_FIELDS,
    DedupNode,
    JudgeNode,
    LLMNode,
    LoopNode,
    MixNode,
    Node,
    NodeReader,
    Output,
    PickNode,
    RoundsNode,
    SwitchNode,
)
from .parsing import PARSERS
from .rounds import unroll
from .templates import StageTemplate, TemplateMissing, TemplateStore

if TYPE_CHECKING:
    from .spec import Checker, ModelSpec

TEMPLATE_BUILTINS = {"message", "instructions", "demos"}  # given to every template by the engine
RESERVED_ROOTS = ("params", "state", "loop", "record", "outputs", "lineage")  # roots that are not nodes


@dataclass
class Graph:
    nodes: dict[str, Node]  # top-level nodes, in spec order
    outputs: dict[str, Output]
    params: dict[str, Any]
    every: dict[str, Node] = field(default_factory=dict)  # every node, loop bodies included
    children: dict[str, list[str]] = field(default_factory=dict)  # node -> nodes that run per its record
    joins: dict[str, dict[str, str]] = field(default_factory=dict)  # node or output -> {join node: anchor}
    rounds: dict[str, RoundsNode] = field(default_factory=dict)  # rounds nodes, unrolled into `nodes`

    def lineage(self, name: str) -> list[str]:
        """The nodes whose records a record of `name` descends from, nearest first (itself included)."""
        chain, seen = [], set()  # the set: membership in a chain of a thousand nodes, at once
        node: str | None = name
        while node and node not in seen:  # a cycle is refused (check_for_each_cycles), never walked
            chain.append(node)
            seen.add(node)
            current = self.every[node]
            node = current.loop if current.loop else current.for_each
        return chain

    def loops_on(self, name: str) -> list[LoopNode]:
        """The loops on a node's lineage: their state and last iteration are visible below them."""
        return [n for n in (self.every[x] for x in self.lineage(name)) if isinstance(n, LoopNode)]

    def model_nodes(self) -> list[LLMNode]:
        return [n for n in self.every.values() if isinstance(n, LLMNode)]

    def rounds_hint(self, name: str) -> str | None:
        """The fix for a name that is not a node but means something near a rounds node."""
        if name == "pool":
            return ("pool is what earlier rounds kept, read whole: in a rounds body, in a mix's from and fields "
                    "or a dedup's against")
        if name == "round":
            return "in a rounds body: " + ", ".join(f"round.{name}" for name in ROUND_FIELDS) + " (index from 1)"
        root, _, body = name.partition(".")
        if body and root in self.rounds:
            return f"{root}.NODE is every round's copy of body node NODE: {', '.join(self.rounds[root].body)}"
        if name in self.rounds:
            return (f"'{name}' is a rounds node, whose records come from every round: read them whole (a mix, a "
                    "dedup's against, an output's from), or per record in its body")
        for rounds in self.rounds.values():
            if rounds.copies and name in rounds.copies[0]:
                return (f"'{name}' is in the body of rounds '{rounds.name}', which copies it per round as "
                        f"{name}_1 to {name}_{len(rounds.copies)}: name a copy, or in an output read its values "
                        "as lineage.FIELD")
        return None

    def spec_path(self, name: str) -> str:
        """Where node `name` is in the spec, as `--set` names it: nodes.LOOP.body.NAME in a loop body,
        and for a round's copy (generate_2) its rounds body node, nodes.ROUNDS.body.NAME (every round's)."""
        if self.every[name].unrolled:
            rounds_name, index = self.every[name].unrolled
            body = next(b for b, copy in self.rounds[rounds_name].copies[index - 1].items() if copy == name)
            return f"nodes.{rounds_name}.body.{body}"
        parts = [name]
        owner = self.every[name].loop
        while owner is not None:
            parts = [owner, "body", *parts]
            owner = self.every[owner].loop
        return "nodes." + ".".join(parts)

    def static(self, value: Any) -> Any:
        """The value of an expression that reads only params (counts, scales); raises otherwise."""
        return evaluate_value(value, {"params": self.params})


def build_graph(checker: Checker, models: dict[str, ModelSpec], params: dict[str, Any], prompts: Path) -> Graph:
    reader = NodeReader(checker)
    raw_nodes = checker.mapping(("nodes",), checker.data.get("nodes"), "nodes")
    if not raw_nodes:
        checker.error(("nodes",), "no nodes declared",
                      "start from a shipped spec (`codeclm init DIR` copies them and the spec reference, docs/spec.md)")
    nodes = {}
    for name, raw in raw_nodes.items():
        node = reader.read(str(name), raw, ("nodes", name))
        if node:
            nodes[str(name)] = node
    raw_outputs = checker.mapping(("outputs",), checker.data.get("outputs"), "outputs")
    if not raw_outputs:
        checker.error(("outputs",), "no outputs declared", "e.g. outputs: {dataset: {from: NODE, fields: {...}}}")
    outputs = {str(k): o for k, v in raw_outputs.items() if (o := reader.read_output(str(k), v, ("outputs", k)))}

    def rounds_count(node: RoundsNode) -> int:
        """How many rounds (0 on a problem): static, since each round is a copy of the body made now."""
        return static_value(checker, params, node, "count", node.count, "count", limit="rounds") or 0

    nodes, rounds = unroll(checker, nodes, outputs, rounds_count)
    graph = Graph(nodes, outputs, params, rounds=rounds)
    _GraphCheck(checker, graph, models, prompts).run()
    return graph


def static_value(checker: Checker, params: dict[str, Any], node: Node, key: str, value: Any, kind: str,
                 limit: str | None = None) -> Any:
    """A value that reads only params (a count, a scale), computed now and checked, since the run
    relies on it before any record exists; None, reported, when it is not what it must be. `limit`
    names its MAX_STATIC entry (default: the key). A bad value of a param is reported at its line."""
    where = (*node.where, key.split(".")[0])
    refs = tree_references(value)
    if any(r.root != "params" for r in refs):
        checker.error(where, f"node '{node.name}' {key} may read only params", "it is computed before the run")
        return None
    try:
        result = evaluate_value(value, {"params": params})
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as exc:  # range's cap: OverflowError
        checker.error(where, f"node '{node.name}' {key}: {exc}")
        return None
    too_large = _too_large(limit or key, result)
    problem = _static_problem(kind, result) or too_large
    if not problem:
        return result
    hint = STATIC_HINTS.get(kind) if problem != too_large else (
        "these are records, iterations or rounds made per run or per record, each held while it is worked on: "
        "lower it, or split the job into several runs (the cache shares their calls)")
    written = value.source.strip() if isinstance(value, Expression) else None
    got = f"{written} (= {result!r})" if written and written != repr(result) else repr(result)  # `1-10` is -9
    if refs and isinstance(value, Expression) and value.source.strip() == f"params.{refs[0].field}":
        checker.error(("params", refs[0].field), f"params.{refs[0].field} {problem} (node '{node.name}' {key}), "
                      f"got {result!r}", hint)
    else:
        checker.error(where, f"node '{node.name}' {key} {problem}, got {got}", hint)
    return None


STATIC_HINTS = {"scale": "scale: [1, 10] (a YAML list: 1-10 is a subtraction)",
                "fraction": "a fraction, not a percentage: e.g. threshold: 0.7 (Self-Instruct's)"}


class _GraphCheck:
    def __init__(self, checker: Checker, graph: Graph, models: dict[str, ModelSpec], prompts: Path):
        self.checker, self.graph, self.models, self.prompts = checker, graph, models, prompts
        self.error = checker.error
        self.problems_before = len(checker.errors)  # problems elsewhere (models) are reported with these
        self.templates_checked: dict[str, Any] = {}
        self.variables_of: dict[str, set[str]] = {}  # template name -> the variables it reads

    def stop_if_broken(self) -> None:
        """The next checks need what the previous ones checked: stop, reporting everything so far."""
        if len(self.checker.errors) > self.problems_before:
            self.checker.raise_errors()

    def run(self) -> None:
        self.stop_if_broken()  # nodes that did not read well
        self.index()
        self.stop_if_broken()
        for node in self.graph.every.values():
            self.check_node(node)
        for output in self.graph.outputs.values():
            self.check_output(output)
        if not self.checker.unreadable_expressions:  # what one that did not compile reads is unknown
            self.check_params_read()
            self.check_switch_fields_read()
        self.check_numeric_params()
        self.check_cycles()  # beside the other errors: a read of a later node is one, and its cycle says why
        self.stop_if_broken()
        self.check_used()

    # -- names and structure ---------------------------------------------------------------------

    def index(self) -> None:
        graph = self.graph
        for node in _walk(graph.nodes.values()):
            if node.name in graph.every:
                self.error(node.where, f"two nodes are named '{node.name}'", "names are unique, loop bodies included")
            if node.name in RESERVED_ROOTS or node.name in VIRTUAL_FIELDS:
                self.error(node.where, f"'{node.name}' is a reserved name", "rename the node")
            graph.every[node.name] = node
        for node in graph.every.values():
            if node.for_each is None:
                needs = node.type in ("llm", "judge", "filter", "dedup", "loop") and not node.loop
                if needs:
                    self.error(node.where, f"node '{node.name}' needs for_each: (the node whose records it runs on)",
                               _for_each_hint(node, graph))
                continue
            parent = graph.every.get(node.for_each)
            if parent is None or parent.loop:
                self.error((*node.where, "for_each"), f"for_each names {node.for_each!r}, which is not a "
                           "top-level node",
                           graph.rounds_hint(node.for_each) or (_did_you_mean(node.for_each, list(graph.nodes))
                                                                or "") + _node_names(graph))
                continue
            graph.children.setdefault(node.for_each, []).append(node.name)
        self.check_for_each_cycles()

    def check_for_each_cycles(self) -> None:
        """A node whose for_each chain comes back to it (`for_each: itself`, a -> b -> a) has no first
        record; every later check walks these chains, so this one comes first (each cycle once)."""
        every = self.graph.every
        ends: set[str] = set()  # nodes whose chain ends (no cycle): a long chain is walked once, not per node
        for start in self.graph.nodes:
            chain: list[str] = []
            on_chain: set[str] = set()
            current: str | None = start
            while current is not None and current in every and current not in on_chain and current not in ends:
                chain.append(current)
                on_chain.add(current)
                current = every[current].for_each
            if current not in on_chain:  # the chain ended, or reached one that ends
                ends.update(chain)
                continue
            if start != min(chain[chain.index(current):]):  # a cycle below start: reported from its least node
                continue
            cycle = [*chain[chain.index(current):], current]
            self.error((*every[start].where, "for_each"), f"for_each makes a cycle: {' -> '.join(cycle)}",
                       "a node runs on the records of a node before it: point for_each at a source, a mix "
                       "or an earlier node")

    def visible(self, node: Node, upto_self: bool = False) -> dict[str, str]:
        """Names a node's expressions can read -> how (ancestor, body, join, self)."""
        graph = self.graph
        seen: dict[str, str] = {}
        start = node.name if upto_self else (node.loop or node.for_each)
        if node.loop and not upto_self:
            loop = graph.every[node.loop]
            for sibling in loop.body:
                if sibling == node.name:
                    break
                seen[sibling] = "body"
        if start:
            for ancestor in graph.lineage(start):
                seen.setdefault(ancestor, "ancestor")
            for loop in graph.loops_on(start):
                if loop.name != node.loop or upto_self:
                    for name in loop.body:
                        seen.setdefault(name, "body")
        ancestors = {a for a, how in seen.items() if how == "ancestor"}
        later = set() if upto_self else self.runs_after(node)
        for other in graph.nodes.values():
            if other.for_each in ancestors and other.name not in seen and other.name != node.name \
                    and node.name not in graph.lineage(other.name) and other.name not in later:
                seen[other.name] = "join"
        return seen

    def runs_after(self, node: Node) -> set[str]:
        """The nodes that wait for `node` or for a loop it is in (they read them, or run on their
        records): reading one from `node` is a cycle, so none is visible there."""
        after = {node.name}
        owner = node.loop
        while owner is not None:
            after.add(owner)
            owner = self.graph.every[owner].loop
        todo = list(after)
        while todo:
            waiting = self.waiting[todo.pop()] - after
            after |= waiting
            todo += waiting
        return after - {node.name}

    @cached_property
    def waiting(self) -> dict[str, set[str]]:
        """Node -> the nodes that depend on it directly (read it, or run on its records)."""
        found: dict[str, set[str]] = {name: set() for name in self.graph.every}
        for node in self.graph.every.values():
            for dep in self.dependencies(node) & found.keys():
                found[dep].add(node.name)
        return found

    def scope_roots(self, in_loop: bool, with_record: bool) -> set[str]:
        roots = {"params"}
        if in_loop:
            roots |= {"state", "loop"}
        if with_record:
            roots |= {"record", "outputs", "lineage"}
        return roots

    def check_reference(self, where: tuple, context: str, ref: Any, visible: dict[str, str], roots: set[str],
                        state_keys: set[str], joins: dict[str, str], owner: str) -> None:
        graph = self.graph
        if ref.root == "params":
            if ref.field is not None and ref.field not in graph.params:
                self.error(where, f"{context} reads params.{ref.field}, which params does not declare",
                           f"params: {', '.join(graph.params) or 'none'}")
            return
        if ref.root in roots:
            allowed = {"state": state_keys, "loop": set(LOOP_FIELDS), "record": set(RECORD_FIELDS),
                       "outputs": set(graph.outputs)}.get(ref.root)
            if allowed is not None and ref.field is not None and ref.field not in allowed:
                self.error(where, f"{context} reads {ref.root}.{ref.field}, which does not exist",
                           f"{ref.root} has: {', '.join(sorted(allowed))}")
            return
        if ref.root in ("state", "loop"):
            self.error(where, f"{context} reads '{ref.root}', which exists only in a loop body", None)
            return
        if ref.root not in graph.every:
            fields_of = [f"{n}.{ref.root}" for n in sorted(visible) if n in graph.every
                         and ref.root in graph.every[n].outputs()]  # `instruction` for `ask.instruction`
            hint = graph.rounds_hint(ref.root) or (f"a field is read through its node: {' or '.join(fields_of)}?"
                                                   if fields_of else None) \
                or _close_name_hint(ref.root, visible, roots)  # `seed` for `seeds`: before any quoting
            if hint is None and ref.field is None:  # `style: briefly`, meant as the text 'briefly'
                hint = f"to pass the text itself, quote it inside the YAML string: \"'{ref.root}'\"; " \
                       + _visible_hint(visible, roots)
            self.error(where, f"{context} reads '{ref.root}', which is not a node nor params/state/loop/record",
                       hint or _visible_hint(visible, roots))
            return
        loop = graph.every[owner].loop if owner in graph.every else None
        if ref.root not in visible and loop is not None and graph.every[ref.root].loop == loop:
            self.error(where, f"{context} reads '{ref.root}', which comes after '{owner}' in the body of "
                       f"'{loop}': a body node reads the nodes above it",
                       f"move '{ref.root}' above '{owner}', or carry its value to the next iteration with "
                       f"next: and read it as state")
            return
        if ref.root not in visible:
            self.error(where, f"{context} reads '{ref.root}', which is not an ancestor of '{owner}' "
                       "(nor an earlier node of its loop body, nor a node per record of an ancestor)",
                       _visible_hint(visible, roots))
            return
        target = graph.every[ref.root]
        if ref.field is not None and ref.field not in (*target.outputs(), *VIRTUAL_FIELDS):
            self.error(where, f"{context} reads {ref.root}.{ref.field}, but '{ref.root}' makes "
                       f"{', '.join(target.outputs()) or 'no fields'}",
                       f"fields of {ref.root}: {', '.join([*target.outputs(), *VIRTUAL_FIELDS])}")
        if visible[ref.root] == "join":
            joins[ref.root] = target.for_each or ""

    def state_keys(self, node: Node) -> set[str]:
        loops = [self.graph.every[node.loop]] if node.loop else self.graph.loops_on(node.name)
        return {k for loop in loops for k in loop.state}

    def reference_scope(self, node: Node, key: str, visible: dict[str, str]) -> tuple[dict[str, str], set[str],
                                                                                       set[str]]:
        """What one of a node's expressions may read: (visible nodes, roots, state keys). A loop's own
        `next` and `trace` see its body and state; its `state` and `max` are set before any iteration."""
        if isinstance(node, LoopNode) and key.split(".")[0] in ("next", "trace"):
            return {**visible, **{b: "body" for b in node.body}}, {"params", "state", "loop"}, set(node.state)
        if isinstance(node, LoopNode) and key.startswith(("state.", "max")):
            return visible, {"params"}, set()
        roots = self.scope_roots(node.loop is not None, False)
        if node.loop is None and self.graph.loops_on(node.name):  # below a loop: its final state, as outputs read
            roots |= {"state"}
        return visible, roots, self.state_keys(node)

    def check_node(self, node: Node) -> None:
        graph = self.graph
        visible = self.visible(node)
        joins: dict[str, str] = {}
        for key, ref in node.references():
            scope, roots, state = self.reference_scope(node, key, visible)
            self.check_reference((*node.where, *key.split(".")), f"node '{node.name}' {key}", ref, scope, roots,
                                 state, joins, node.name)
        for collection in node.collections:
            self.check_collection(node, collection)
        if isinstance(node, MixNode):
            for name, draw in node.draws.items():
                for drawn in draw.nodes:
                    if drawn in graph.every and draw.field not in self.lineage_fields(drawn):
                        self.error((*node.where, "fields", name), f"mix field '{name}' draws {drawn}.{draw.field}, "
                                   f"but records of '{drawn}' have {', '.join(self.lineage_fields(drawn))}")
        if isinstance(node, DedupNode):
            for other, field_name in node.against:
                target = graph.every.get(other)
                if target and field_name not in self.lineage_fields(other):
                    self.error((*node.where, "against"), f"dedup compares against {other}.{field_name}, but "
                               f"records of '{other}' have {', '.join(self.lineage_fields(other))}")
        if isinstance(node, SwitchNode) and not node.loop:
            for i, case in enumerate(node.cases):
                if case.exit is not None:
                    self.error((*node.where, "cases", i, "exit"), f"switch '{node.name}' case '{case.name}' has "
                               "exit:, which ends a loop's iteration, but the switch is in no loop body",
                               f"drop exit:, and to drop the records of '{case.name}', add a filter node after "
                               f"the switch (where: \"{node.name}.case != '{case.name}'\")")
        if isinstance(node, LLMNode):
            self.check_llm(node)
        self.check_static(node)
        graph.joins[node.name] = joins

    def lineage_fields(self, name: str) -> list[str]:
        """The fields a collection's records carry: their own, then their ancestors' (a filter's records
        carry what their node filtered)."""
        return list(dict.fromkeys(f for n in self.graph.lineage(name) for f in self.graph.every[n].outputs()))

    def check_collection(self, node: Node, collection: str) -> None:
        graph = self.graph
        target = graph.every.get(collection)
        if target is None:
            self.error(node.where, f"node '{node.name}' reads all of {collection!r}, which is not a node",
                       graph.rounds_hint(collection) or _node_names(graph))
        elif target.loop:
            self.error(node.where, f"node '{node.name}' reads all of '{collection}', which is inside a loop body")
        elif node.name in graph.lineage(collection):
            self.error(node.where, f"node '{node.name}' reads all of '{collection}', which descends from it: a cycle")

    def check_output(self, output: Output) -> None:
        """Each `from` node's records must give every field: with several, `lineage.NAME` reads a value
        whichever node made it."""
        graph = self.graph
        earlier = set(list(graph.outputs)[:list(graph.outputs).index(output.name)])
        for name in output.sources:
            source = graph.every.get(name)
            if source is None or source.loop:
                self.error((*output.where_path, "from"), f"output '{output.name}' reads {name!r}, which is not "
                           "a top-level node", graph.rounds_hint(name) or
                           _node_names(graph))
                continue
            visible = self.visible(source, upto_self=True)
            joins: dict[str, str] = {}
            in_loop = bool(graph.loops_on(source.name))
            for key, ref in output.references():
                where = (*output.where_path, *key.split(".")[:1])
                if ref.root == "lineage":
                    if ref.field not in self.lineage_fields(name):
                        self.error(where, f"output '{output.name}' {key} reads lineage.{ref.field}, which records of "
                                   f"'{name}' lack", f"they have: {', '.join(self.lineage_fields(name))}")
                    continue
                if ref.root == "outputs" and ref.field in graph.outputs and ref.field not in earlier:
                    continue  # refused once, below
                self.check_reference(where, f"output '{output.name}' {key}", ref, visible,
                                     self.scope_roots(in_loop, True), self.state_keys(source), joins, name)
            graph.joins[f"output:{output.name}:{name}"] = joins
        for key, ref in output.references():
            if ref.root != "outputs" or ref.field not in graph.outputs:
                continue
            if ref.field not in earlier:
                when = "by this output" if ref.field == output.name else "after it"
                self.error((*output.where_path, *key.split(".")), f"output '{output.name}' {key} reads "
                           f"outputs.{ref.field}, which is written {when}, so it has no value",
                           "outputs.NAME reads an output declared above this one: move it up, or read its "
                           "fields from the nodes instead")
                continue
            other = graph.outputs[ref.field].sources
            if not set(other) & set(output.sources):  # the line the same record wrote there: none ever did
                self.error((*output.where_path, *key.split(".")), f"output '{output.name}' {key} reads "
                           f"outputs.{ref.field}, which writes records of {', '.join(other)}, not of "
                           f"{', '.join(output.sources)}: it would never have a value",
                           f"read it in an output whose from: shares a node with {ref.field}'s, or read the "
                           "fields from the nodes instead")

    # -- per-type details -------------------------------------------------------------------------

    def check_llm(self, node: LLMNode) -> None:
        if node.model not in self.models:
            self.error((*node.where, "model"), f"node '{node.name}' uses model {node.model!r}, which is not declared",
                       (_did_you_mean(node.model, list(self.models)) or "")
                       + f"declared models: {', '.join(self.models) or 'none'}")
        parser = PARSERS[node.parse.name]
        if parser.fixed_outputs and not set(node.declared) <= set(parser.fixed_outputs):
            self.error((*node.where, "outputs"), f"parser '{parser.name}' makes {', '.join(parser.fixed_outputs)}",
                       f"declare outputs among: {', '.join(parser.fixed_outputs)}")
        if not parser.maps and len(node.declared) != 1:
            self.error((*node.where, "outputs"), f"parser '{parser.name}' makes one value: declare one output name")
        missing_args = [a for a in parser.args if a not in node.parse.args and a != "scale"]
        if missing_args:
            self.error((*node.where, "parse"), f"parser '{parser.name}' needs {', '.join(missing_args)}",
                       f"parse: {{name: {parser.name}, {missing_args[0]}: ...}}")
        if node.explode and node.explode.field not in node.declared:
            self.error((*node.where, "explode"), f"explode reads '{node.explode.field}', which is not an output",
                       f"outputs: {', '.join(node.declared)}")
        if isinstance(node, JudgeNode) and node.pair is None and node.parse.name == "text":
            node.parse.name = "score"  # a pointwise judge reads one score within its scale
        if node.template:  # no template: already said where the node was read
            self.check_template(node)

    def check_template(self, node: LLMNode) -> None:
        store = TemplateStore(self.prompts)
        try:
            template = store.get(node.template)
        except TemplateMissing as exc:
            self.error((*node.where, "template"), f"node '{node.name}': {exc.message}", exc.hint)
            return
        except SpecError as exc:
            self.checker.errors.append(exc)
            return
        if node.template in self.templates_checked:  # each template's own problems, once
            tree = self.templates_checked[node.template]
        else:
            tree = self.templates_checked[node.template] = store.env.parse(template.source)
            self.check_template_sandbox(template, tree)
            self.check_template_helpers(template, tree, self.template_variables(node.template, tree))
        needed = self.template_variables(node.template, tree)
        missing = sorted(needed - node.template_variables())
        missing = [name for name in missing if name not in HELPERS]  # said once per template, at its line
        missing = self.check_unread_inputs(node, store, tree, missing)
        if missing:
            given = sorted(node.template_variables())
            close = difflib.get_close_matches(missing[0], given, n=1)
            if missing[0] in RESERVED_ROOTS or missing[0] in self.graph.every:  # {{ params.x }}, {{ node.field }}
                hint = (f"a template sees its node's inputs only, not '{missing[0]}': add an input, e.g. "
                        f"inputs: {{NAME: {missing[0]}.FIELD}}, and write {{{{ NAME }}}} in the template")
            elif close:
                hint = f"a typo in the template for '{close[0]}'? else add to inputs: {missing[0]}: <expression>"
            else:
                hint = f"add to inputs: {missing[0]}: <expression>"
            self.error((*node.where, "inputs"), f"template {node.template} uses {', '.join(missing)}, which node "
                       f"'{node.name}' does not provide", hint)

    def check_unread_inputs(self, node: LLMNode, store: TemplateStore, tree: Any, missing: list[str]) -> list[str]:
        """An input the template never reads is an error at the input: close to a variable the template reads
        and no input gives, a typo (`topci` for `topic`, which was blamed on the template); else an input that
        would change nothing (`tone:` with no {{ tone }}: the prompt has no tone). Returns the missing
        variables left to report."""
        reads = self.template_reads(store, node.template, tree)
        if reads is None:  # a template pulled in by a computed name reads what it will
            return missing
        for name in sorted(set(node.inputs) - reads):
            meant = difflib.get_close_matches(name, missing, n=1)
            if meant:
                missing = [m for m in missing if m != meant[0]]
                self.error((*node.where, "inputs", name), f"inputs.{name}: template {node.template} reads "
                           f"{meant[0]}, not {name}", f"did you mean '{meant[0]}'? write {meant[0]}: "
                           + getattr(node.inputs[name], "source", "EXPRESSION"))
            else:
                self.error((*node.where, "inputs", name), f"inputs.{name}: template {node.template} never reads "
                           f"{name}: it would change nothing", f"write {{{{ {name} }}}} in the template, or remove "
                           "the input")
        return missing

    def template_reads(self, store: TemplateStore, name: str, tree: Any, seen: frozenset[str] = frozenset()) \
            -> set[str] | None:
        """Every name a template might read of its variables: its own, those of the templates it includes,
        extends or imports, and any field read by name (`demo.topic`, a demo holding the input); None
        where a template is pulled in by a computed name, or cannot be read (its own error)."""
        found = set(meta.find_undeclared_variables(tree)) | {n.attr for n in tree.find_all(jinja2.nodes.Getattr)}
        for other in meta.find_referenced_templates(tree):
            if other is None:
                return None
            if other in seen or other == name:
                continue
            try:
                more = self.template_reads(store, other, store.env.parse(store.get(other).source), seen | {name})
            except SpecError:  # not found, or broken: said where it is checked
                return None
            if more is None:
                return None
            found |= more
        return found

    def template_variables(self, name: str, tree: Any) -> set[str]:
        """The variables a template reads from its node (not the engine's own), found once per template."""
        if name not in self.variables_of:
            self.variables_of[name] = meta.find_undeclared_variables(tree) - TEMPLATE_BUILTINS - \
                set(jinja2.Environment().globals)
        return self.variables_of[name]

    def check_template_helpers(self, template: StageTemplate, tree: jinja2.nodes.Template,
                               undeclared: set[str]) -> None:
        """`{{ len(question) }}`: the spec's expressions have len(), words() and the like; templates do not,
        and were told to take `len` as an input. (A name the template defines itself is its own.)"""
        for call in tree.find_all(jinja2.nodes.Call):
            helper = call.node.name if isinstance(call.node, jinja2.nodes.Name) else None
            if helper in HELPERS and helper in undeclared:
                self.checker.errors.append(SpecError(
                    str(template.path), f"{helper}() is a helper of the spec's expressions, which templates do "
                    "not have", line=call.lineno, hint=_template_helper_hint(helper, call)))

    def check_template_sandbox(self, template: StageTemplate, tree: Any) -> None:
        try:
            check_sandbox(tree, f"template {template.name}")
        except ExpressionError as exc:
            self.checker.errors.append(SpecError(str(template.path), str(exc),
                                                 hint="templates read their variables; they never reach Python"))
        for name in meta.find_referenced_templates(tree):
            if name is None or ".." in name or name.startswith("/"):
                what = "a template named by a computed value (which validate cannot check)" if name is None \
                    else f"{name!r}, outside the prompts folder"
                self.checker.errors.append(SpecError(str(template.path), f"template includes {what}",
                                                     hint="include only templates of the prompts folder, by a "
                                                          "quoted name: {% include \"part.jinja\" %}"))

    def check_static(self, node: Node) -> None:
        """Counts, scales and other values that read only params are computed now, and checked."""
        wanted: list[tuple[str, Any, str]] = []
        if isinstance(node, MixNode):
            wanted.append(("count", node.count, "count"))
            wanted += [(f"fields.{n}.k", d.k, "k") for n, d in node.draws.items()]
        if isinstance(node, LoopNode):
            wanted.append(("max", node.max, "count"))
        if isinstance(node, JudgeNode):
            wanted += [("scale", node.scale, "scale"), ("unparsable", node.unparsable, "unparsable"),
                       ("both_orders", node.both_orders, "bool")]
        if isinstance(node, LLMNode) and node.explode and node.explode.limit is not None:
            wanted.append(("explode.limit", node.explode.limit, "count"))
        if isinstance(node, DedupNode):
            wanted.append(("threshold", node.threshold, "fraction"))
        if isinstance(node, PickNode) and node.choices is not None and \
                all(r.root == "params" for r in tree_references(node.choices)):
            wanted.append(("from", node.choices, "choices"))  # known now: an empty list failed every record
        if isinstance(node, LLMNode) and not isinstance(node, JudgeNode):  # a parser's own arguments
            kinds = {"scale": "scale", "count": "count"}  # score's scale, rubrics' count
            wanted += [(f"parse.{arg}", value, kinds[arg]) for arg, value in node.parse.args.items() if arg in kinds]
        computed = {key: static_value(self.checker, self.graph.params, node, key, value, kind)
                    for key, value, kind in wanted}
        if isinstance(node, JudgeNode) and not node.pair and computed["unparsable"] == "tie":
            self.error((*node.where, "unparsable"), f"judge '{node.name}' unparsable: tie makes an unreadable "
                       "judgement a gap of 0, which only a pairwise judge has", "add pair: [A, B], or use fail")

    # -- whole-graph checks -----------------------------------------------------------------------

    def check_params_read(self) -> None:
        """A param no expression reads is a typo or a leftover: it would change nothing."""
        graph = self.graph
        nodes = [*graph.every.values(), *graph.rounds.values()]  # a rounds count is read before it unrolls
        read = {r.field for n in nodes for _, r in n.references() if r.root == "params"}
        read |= {r.field for o in graph.outputs.values() for _, r in o.references() if r.root == "params"}
        for name in graph.params:
            if name not in read:
                close = difflib.get_close_matches(str(name), sorted(f for f in read if f), n=1)
                self.error(("params", name), f"params.{name} is read by no node or output: it would change nothing",
                           f"did you mean '{close[0]}'?" if close else "read it in an expression "
                           f"(params.{name}), or delete it")

    def check_switch_fields_read(self) -> None:
        """A case's `set:` key nothing reads is a typo or a leftover: the switch's fields are every case's
        keys, so `set: {hnit: ...}` passed, and each record taking that case failed where `hint` was read."""
        graph = self.graph
        refs = [r for n in graph.every.values() for _, r in n.references()]
        refs += [r for o in graph.outputs.values() for _, r in o.references()]
        lineage = {r.field for r in refs if r.root == "lineage"}  # an output's lineage.NAME: any node's NAME
        for switch in (n for n in graph.every.values() if isinstance(n, SwitchNode)):
            read = {r.field for r in refs if r.root == switch.name} | lineage
            read |= {d.field for n in graph.every.values() if isinstance(n, MixNode) for d in n.draws.values()
                     if switch.name in d.nodes}
            read |= {f for n in graph.every.values() if isinstance(n, DedupNode) for o, f in n.against
                     if o == switch.name}
            if None in read:  # the record read whole
                continue
            for i, case in enumerate(switch.cases):
                for key in case.set.keys() - read:
                    close = _did_you_mean(key, sorted(f for f in read if f))
                    hint = close.strip() if close else f"read it as {switch.name}.{key} (a later node, next:, " \
                        "trace:, an output), or delete it"
                    self.error((*switch.where, "cases", i, "set", key), f"switch '{switch.name}' case '{case.name}' "
                               f"sets '{key}', which nothing reads: it would change nothing", hint)

    def check_numeric_params(self) -> None:
        """A param an expression compares (`judge.gap > params.threshold`) or computes with must be a
        number: otherwise every record would fail on it at run time, after its calls."""
        graph = self.graph
        used: dict[str, str] = {}
        owners = [(f"node '{n.name}'", n.expressions()) for n in graph.every.values()]
        owners += [(f"output '{o.name}'", {"where": o.where, **{f"fields.{k}": v for k, v in o.fields.items()}})
                   for o in graph.outputs.values()]
        for owner, trees in owners:
            for key, tree in trees.items():
                for expression in _expressions_in(tree):
                    for name in expression.numeric_params:
                        used.setdefault(name, f"{owner} {key}: {expression.source}")
        for name, where in used.items():
            value = graph.params.get(name)
            if name in graph.params and (isinstance(value, bool) or not isinstance(value, (int, float))):
                self.error(("params", name), f"params.{name} is used as a number ({where}), got {value!r}",
                           "write a number, unquoted (e.g. 3 or 0.5)")

    def dependencies(self, node: Node) -> set[str]:
        deps = {r.root for _, r in node.references() if r.root in self.graph.every}
        deps |= set(node.collections) - {""}
        if node.for_each:
            deps.add(node.for_each)
        if isinstance(node, LoopNode):
            deps |= set(node.body)
        return deps - {node.name}

    def check_cycles(self) -> None:
        if self.cycle:
            node = self.graph.every[self.cycle[0]]
            self.error(node.where, f"the graph has a cycle: {' -> '.join(self.cycle)}",
                       "a node may read only what runs before it")

    @cached_property
    def cycle(self) -> list[str] | None:
        """The first cycle of the graph's dependencies (`a -> b -> a`), or None."""
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> list[str] | None:
            if state.get(name) == 2:
                return None
            if state.get(name) == 1:
                return path[path.index(name):] + [name]
            state[name] = 1
            node = self.graph.every[name]
            for dep in sorted(self.dependencies(node) & self.graph.every.keys()):  # an unknown name: its own error
                if dep != node.loop:  # a body node reads its own loop's fields: no cycle
                    found = visit(dep, [*path, name])
                    if found:
                        return found
            state[name] = 2
            return None

        return next((found for name in self.graph.every if (found := visit(name, []))), None)

    def check_used(self) -> None:
        """Every node feeds an output. A loop's body node is used when something reads it (its loop's
        next or trace, a used sibling, a node or output below the loop), not because its loop runs:
        otherwise its calls were made and paid for, for nothing. Switches steer their loop: used."""
        graph = self.graph
        used: set[str] = set()
        todo = [name for o in graph.outputs.values() for name in o.sources]
        todo += [r.root for o in graph.outputs.values() for _, r in o.references() if r.root in graph.every]
        while todo:
            name = todo.pop()
            if name in used or name not in graph.every:
                continue
            used.add(name)
            node = graph.every[name]
            todo += list(self.dependencies(node) - self.unread_body(node))
            todo += list(graph.joins.get(name, {}))
        for name, node in graph.every.items():
            if name not in used:
                self.error(node.where, f"node '{name}' feeds no output: it would run for nothing",
                           f"read its values in a later node of the body, the next: or trace: of '{node.loop}', "
                           "an output, or delete it" if node.loop else
                           "read its values in an output or a later node, or delete it")

    @staticmethod
    def unread_body(node: Node) -> set[str]:
        """A loop's body nodes that neither its next nor its trace reads (switches steer it: read)."""
        if not isinstance(node, LoopNode):
            return set()
        read = {r.root for _, r in node.references()}
        return {b for b, n in node.body.items() if b not in read and not isinstance(n, SwitchNode)}


# The most a count may be: above these a run would allocate without bound (a mix's records, a
# loop's iterations, an explode's records per record), so they are refused before anything runs;
# rounds, because each is a copy of its body's nodes, which every command checks.
MAX_STATIC = {"count": 1_000_000, "max": 1_000, "explode.limit": 1_000, "rounds": 100}


def _too_large(key: str, value: Any) -> str | None:
    limit = MAX_STATIC.get(key)
    if limit is None or not isinstance(value, int) or value <= limit:
        return None
    return f"must be at most {limit:,}"


def _static_problem(kind: str, value: Any) -> str | None:
    if kind == "count":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else "must be a positive integer"
    if kind == "k":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return None
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value) \
            and 1 <= value[0] <= value[1]
        return None if ok else "must be a positive integer or a range [low, high]"
    if kind == "scale":
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value) \
            and value[0] < value[1]
        return None if ok else "must be [low, high]"
    if kind == "fraction":  # a ROUGE-L threshold: 1.5 kept everything and -3 dropped everything, silently
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
        return None if ok else "must be a number above 0 and at most 1 (a ROUGE-L F-score)"
    if kind == "unparsable":
        return None if value in ("fail", "tie") else "must be 'fail' or 'tie'"
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "choices":  # what a pick draws from: the items of a list or range, the keys of a mapping
        ok = isinstance(value, (list, tuple, range, dict)) and len(value) > 0
        return None if ok else "must be a non-empty list, range or mapping (a pick draws one of its items or keys)"
    return None


# Jinja's filter for each expression helper a template may reach for (`{{ len(question) }}`)
HELPER_FILTERS = {"len": "length", "words": "wordcount", "ceil": "round(method='ceil')",
                  "floor": "round(method='floor')", "round": "round", "abs": "abs", "min": "min", "max": "max",
                  "sum": "sum", "sorted": "sort"}  # rouge_l has none: computed in an input


def _template_helper_hint(helper: str, call: jinja2.nodes.Call) -> str:
    """The fix for a helper a template calls: Jinja's filter on what it was given, or an input computing it."""
    first = call.args[0] if call.args else None
    value = first.name if isinstance(first, jinja2.nodes.Name) else "VALUE"
    compute = f"or compute it in the node's inputs: NAME: {helper}(...), and write {{{{ NAME }}}}"
    filter_ = HELPER_FILTERS.get(helper)
    return f"use Jinja's filter: {{{{ {value} | {filter_} }}}}; {compute}" if filter_ else compute


def _visible_hint(visible: dict[str, str], roots: set[str]) -> str:
    """What an expression may read where one read something else: its visible nodes, then its roots."""
    nodes = ", ".join(sorted(visible)) or "none"
    return f"visible here: nodes {nodes}; {', '.join(sorted(roots))}"


def _close_name_hint(name: str, visible: dict[str, str], roots: set[str]) -> str | None:
    """"did you mean" a visible node or root close to `name`, with what is visible; None if none is close."""
    close = _did_you_mean(name, sorted([*visible, *roots]))
    return close + _visible_hint(visible, roots) if close else None


def _node_names(graph: Graph) -> str:
    """The nodes a name could have meant, as a fix line (none declared: say where nodes go)."""
    return f"nodes: {', '.join(graph.nodes)}" if graph.nodes else "declare the node under nodes:"


def _did_you_mean(name: str, names: list[str]) -> str | None:
    close = difflib.get_close_matches(str(name), names, n=1)
    return f"did you mean '{close[0]}'? " if close else None


def _walk(nodes: Any) -> Iterator[Node]:
    for node in nodes:
        yield node
        if isinstance(node, LoopNode):
            yield from _walk(node.body.values())


def _expressions_in(tree: Any) -> list[Expression]:
    """The expressions inside a node's value: one, or those of a list or mapping of them."""
    if isinstance(tree, Expression):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [e for v in tree for e in _expressions_in(v)]
    if isinstance(tree, dict):
        return [e for v in tree.values() for e in _expressions_in(v)]
    return []


def _for_each_hint(node: Node, graph: Graph) -> str:
    """for_each: the last declared top-level node the node reads (most often the one meant), else the nodes."""
    reads = {ref.root for _, ref in node.references()}
    read = [name for name in graph.nodes if name in reads and name != node.name]
    return f"e.g. for_each: {read[-1]} (the last node it reads)" if read else "for_each: NODE; " + _node_names(graph)

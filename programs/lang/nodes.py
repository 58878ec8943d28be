"""The node types of the spec language: each one's YAML keys, read into a typed config.

This module knows what a node *says*; `programs/lang/graph.py` checks how nodes connect and
`programs/engine/` runs them. No DSPy and no model here, so `validate` and `graph` stay light.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SPEC_REFERENCE
from .expressions import Expression, ExpressionError, Reference, compile_tree, compile_value, tree_references
from .parsing import PARSERS
from .yaml_lines import Path_

if TYPE_CHECKING:
    from .spec import Checker

VIRTUAL_FIELDS = ("id", "calls")  # every node's records have them: NODE.id, NODE.calls
LOOP_FIELDS = ("index", "first", "last", "max", "calls", "failure")
LOOP_OUTPUTS = ("exit", "iteration", "iterations")
# statuses the engine gives records itself: a case that exits names another (ok: a case that goes on)
ENGINE_STATUSES = ("ok", "failed", "skipped", "blocked")
RECORD_FIELDS = ("id", "status", "failure", "sources", "calls")  # `record.*`, in outputs
RESERVED_OUTPUTS = ("failures", "manifest", "dataset_info", "call_keys")  # files every run writes itself
MAX_OUTPUT_BYTES = 200  # an output is the file NAME.jsonl(.partial): a file name holds 255 bytes; as a spec's name


def _saved_predictor(path: Path) -> str | dict[str, Any]:
    """The tuned predictor's state in a program `codeclm optimize` saved (at most 64 MiB); else, as
    text, what makes the file other than one. Checked when the spec loads: a hand-edited file
    (`demos: 7`) passed validate, then the run and `render` died in DSPy's loader or the adapter."""
    import json

    try:
        if path.stat().st_size > 64 << 20:
            return "it is over 64 MiB"
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        return f"it is not JSON ({type(exc).__name__})"
    if not isinstance(state, dict):
        return "it is not a JSON object"
    metadata = state.get("metadata")  # DSPy's loader reads metadata.dependency_versions (package -> version)
    versions = metadata.get("dependency_versions") if isinstance(metadata, dict) else None
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        return "it has no 'metadata.dependency_versions' (package versions, which optimize saves)"
    predict = state.get("predict")
    if not isinstance(predict, dict):
        return "it has no 'predict' mapping (the tuned predictor)"
    return _predict_problem(predict) or predict


def _predict_problem(predict: dict[str, Any]) -> str | None:
    """What in a saved predictor's state DSPy's loader or the node's template cannot take; else None."""
    signature = predict.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("instructions"), str):
        return "predict.signature needs 'instructions' (text)"
    fields = signature.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, dict) and isinstance(f.get("prefix"), str)
                                                and isinstance(f.get("description"), str) for f in fields):
        return "predict.signature.fields must be a list of {prefix, description} texts"
    if "lm" not in predict or not isinstance(predict["lm"], (dict, type(None))):
        return "predict.lm must be there, null or a mapping"
    for key, what in (("demos", "examples (mappings)"), ("train", "examples"), ("traces", "traces")):
        value = predict.get(key, [])
        if not isinstance(value, list) or (key == "demos" and not all(isinstance(d, dict) for d in value)):
            return f"predict.{key} must be a list of {what}, got {_json_kind(value)}"
    return None


def _json_kind(value: Any) -> str:
    """A JSON value's kind, as a user who edited the file would name it: `a list of text`."""
    if isinstance(value, list):
        return "a list of " + (", ".join(sorted({_json_kind(item) for item in value})) or "nothing")
    if isinstance(value, bool) or value is None:
        return "true/false" if value is not None else "null"
    return {dict: "a mapping", str: "text"}.get(type(value), "a number")


def path_like(name: str) -> bool:
    """A node, output or model name that would be a path in a file name (NAME.jsonl, NODE.json,
    runs/NAME-eval-ROLE): empty, hidden, with a separator, or with control characters."""
    return not name.strip() or name.startswith(".") or "/" in name or "\\" in name or not name.isprintable()


@dataclass
class Node:
    """What every node has: a name, where it is in the YAML, what it runs once per, and a guard."""

    name: str
    type: str
    where: Path_
    for_each: str | None = None  # one run per record of this node (a loop's body runs per loop record)
    when: Expression | None = None  # run only where true; otherwise the record passes with no values
    loop: str | None = None  # the loop whose body holds this node
    unrolled: tuple[str, int] | None = None  # (rounds node, round) of a copy of a rounds body node

    def expressions(self) -> dict[str, Any]:
        """key -> expression tree, for the reference checks (each node adds its own)."""
        return {"when": self.when} if self.when is not None else {}

    def outputs(self) -> list[str]:
        return []

    def references(self) -> list[tuple[str, Reference]]:
        return [(key, ref) for key, tree in self.expressions().items() for ref in tree_references(tree)]

    @property
    def collections(self) -> list[str]:
        """Nodes read as a whole collection: the barriers (all their records must exist first)."""
        return []


@dataclass
class SourceNode(Node):
    path: Path | None = None
    records: list[dict[str, Any]] | None = None
    fields: dict[str, str] = field(default_factory=dict)  # record field -> file field
    id_field: str | None = "id"

    def outputs(self) -> list[str]:
        return list(self.fields)


@dataclass
class ParseSpec:
    name: str
    args: dict[str, Any] = field(default_factory=dict)  # argument -> expression tree


@dataclass
class Explode:
    field: str  # an output holding a list
    as_: str  # each item's name in the child records
    limit: Any = None  # expression: at most this many items


@dataclass
class LLMNode(Node):
    model: str = ""
    template: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)  # template variable -> expression tree
    parse: ParseSpec = field(default_factory=lambda: ParseSpec("text"))
    declared: list[str] = field(default_factory=list)  # the `outputs:` list
    explode: Explode | None = None
    lazy: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    program: Path | None = None
    instructions: str = ""  # the optimizable instructions, where the template has no instructions block

    def expressions(self) -> dict[str, Any]:
        found = {**super().expressions(), **{f"inputs.{k}": v for k, v in self.inputs.items()},
                 **{f"parse.{k}": v for k, v in self.parse.args.items()}}
        if self.explode and self.explode.limit is not None:
            found["explode.limit"] = self.explode.limit
        return found

    def outputs(self) -> list[str]:
        return [self.explode.as_] if self.explode else list(self.declared)

    def call_outputs(self) -> list[str]:
        """What one call parses into: its DSPy signature's outputs, so what each demo of its program holds."""
        return list(self.declared)

    def template_variables(self) -> set[str]:
        return set(self.inputs)


@dataclass
class JudgeNode(LLMNode):
    pair: list[Any] | None = None  # two expressions: the answers compared (pairwise), or None (pointwise)
    both_orders: Any = True
    scale: Any = field(default_factory=lambda: [1, 10])
    unparsable: Any = "fail"  # fail | tie (pairwise: an unparsable judgement counts as a gap of 0)

    def expressions(self) -> dict[str, Any]:
        found = {**super().expressions(), "scale": self.scale, "both_orders": self.both_orders,
                 "unparsable": self.unparsable}
        if self.pair:
            found["pair"] = self.pair
        return found

    def outputs(self) -> list[str]:
        return ["a", "b", "gap", "a_first", "b_first"] if self.pair else ["score"]

    def call_outputs(self) -> list[str]:
        return ["score_1", "score_2"] if self.pair else super().call_outputs()  # pairwise: one order's scores

    def template_variables(self) -> set[str]:
        pair_vars = {"answer_1", "answer_2"} if self.pair else set()
        return set(self.inputs) | pair_vars | {"scale_low", "scale_high"}


@dataclass
class Draw:
    kind: str  # choice | sample
    nodes: list[str]  # the collections drawn from, as one (a rounds pool: every earlier round's records)
    field: str
    k: Any = 1  # sample: how many (an int, or [low, high] drawn per record)
    flatten: bool = False  # sample: draw from the items of list fields
    unique: bool = False  # sample: each distinct value once (the first record that has it is its source)


@dataclass
class MixNode(Node):
    sources: list[str] = field(default_factory=list)  # `from:`
    count: Any = 1
    draws: dict[str, Draw] = field(default_factory=dict)
    id_prefix: str = "m"

    def expressions(self) -> dict[str, Any]:
        found = {**super().expressions(), "count": self.count}
        found.update({f"fields.{name}.k": d.k for name, d in self.draws.items()})
        return found

    def outputs(self) -> list[str]:
        return list(self.draws)

    @property
    def collections(self) -> list[str]:
        return list(dict.fromkeys([*self.sources, *(n for d in self.draws.values() for n in d.nodes)]))


@dataclass
class PickNode(Node):
    choices: Any = None  # `from:` an expression giving a list

    def expressions(self) -> dict[str, Any]:
        return {**super().expressions(), "from": self.choices}

    def outputs(self) -> list[str]:
        return ["value"]


@dataclass
class FilterNode(Node):
    where_: Any = None

    def expressions(self) -> dict[str, Any]:
        return {**super().expressions(), "where": self.where_}


@dataclass
class DedupNode(Node):
    key: Any = None  # expression: the text compared
    against: list[tuple[str, str]] = field(default_factory=list)  # (node, field) collections in the pool
    threshold: Any = 0.7

    def expressions(self) -> dict[str, Any]:
        return {**super().expressions(), "field": self.key, "threshold": self.threshold}

    def outputs(self) -> list[str]:
        return ["similarity"]

    @property
    def collections(self) -> list[str]:
        return [self.for_each or "", *(node for node, _ in self.against)]


@dataclass
class Case:
    name: str
    when: Expression | None
    exit: str | None
    set: dict[str, Any]


@dataclass
class SwitchNode(Node):
    cases: list[Case] = field(default_factory=list)

    def expressions(self) -> dict[str, Any]:
        found = super().expressions()
        for i, case in enumerate(self.cases):
            if case.when is not None:
                found[f"cases.{i}.when"] = case.when
            found.update({f"cases.{i}.set.{k}": v for k, v in case.set.items()})
        return found

    def outputs(self) -> list[str]:
        return ["case", *dict.fromkeys(k for case in self.cases for k in case.set)]


@dataclass
class LoopNode(Node):
    max: Any = 1
    state: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Node] = field(default_factory=dict)
    next: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    exhausted: str = "dropped"  # the exit of a record that ran `max` iterations without an exit case
    emit: str = "last"  # last: one record per loop record | each: one per iteration

    def expressions(self) -> dict[str, Any]:
        return {**super().expressions(), "max": self.max, **{f"state.{k}": v for k, v in self.state.items()},
                **{f"next.{k}": v for k, v in self.next.items()}, **{f"trace.{k}": v for k, v in self.trace.items()}}

    def outputs(self) -> list[str]:
        return list(LOOP_OUTPUTS)


@dataclass
class RoundsNode(Node):
    """`count` rounds of `body`, each reading what earlier rounds' `keep` node kept as `pool`. It never
    runs: `programs/lang/rounds.py` unrolls it into ordinary nodes when the spec is read."""

    count: Any = 1
    keep: str = ""
    body: dict[str, Node] = field(default_factory=dict)
    copies: list[dict[str, str]] = field(default_factory=list)  # per round: body node -> its copy's name

    def expressions(self) -> dict[str, Any]:
        return {"count": self.count}


@dataclass
class Output:
    """One file of the run directory: `NAME.jsonl`, a record per record of `from` that `where` keeps."""

    name: str
    where_path: Path_
    sources: list[str]  # `from:` one node, or several whose records are written one after the other
    where: Expression | None
    fields: dict[str, Any]

    def references(self) -> list[tuple[str, Reference]]:
        found = [(f"fields.{k}", r) for k, v in self.fields.items() for r in tree_references(v)]
        if self.where is not None:
            found += [("where", r) for r in self.where.references()]
        return found


COMMON_KEYS = {"type", "for_each", "when", "description"}
NODE_KEYS: dict[str, set[str]] = {
    "source": {"path", "records", "fields", "id_field"},
    "llm": {"model", "template", "inputs", "parse", "outputs", "explode", "lazy", "temperature", "max_tokens",
            "program", "instructions"},
    "judge": {"model", "template", "inputs", "pair", "both_orders", "scale", "unparsable", "temperature",
              "max_tokens", "program", "lazy", "instructions"},
    "mix": {"from", "count", "fields", "id_prefix"},
    "pick": {"from"},
    "filter": {"where"},
    "dedup": {"field", "against", "threshold"},
    "switch": {"cases"},
    "loop": {"max", "state", "body", "next", "trace", "exhausted", "emit"},
    "rounds": {"count", "keep", "body"},
}
ROUND_FIELDS = ("index", "first", "last", "count")  # `round.*` in a rounds body
ROUNDS_NAMES = ("pool", "round")  # what a rounds body reads besides nodes and params


class NodeReader:
    """Reads one node's YAML mapping into its config, reporting every problem to the Checker."""

    def __init__(self, checker: Checker):
        self.checker = checker

    def expr(self, where: Path_, value: Any, tree: bool = False) -> Any:
        """A compiled expression (or literal tree); None, with an error, when it does not compile."""
        try:
            return compile_tree(value) if tree else compile_value(value)
        except ExpressionError as exc:
            self.checker.error(where, str(exc), _python_hint(str(exc)) or "expressions are Jinja without braces; "
                                                "quote literal strings: \"'text'\"")
            self.checker.unreadable_expressions += 1
            return None

    def read(self, name: str, raw: Any, where: Path_, loop: str | None = None) -> Node | None:
        if path_like(name):
            self.checker.error(where, f"node name {name!r} is not a plain name",
                               "name nodes like variables: letters, digits and _ (e.g. encode)")
            return None
        raw = self.checker.mapping(where, raw, f"node '{name}'")
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in NODE_KEYS:
            siblings = [str(n) for n in (self.checker.data.get("nodes") or {}) if n != name]
            close = difflib.get_close_matches(str(name), siblings, n=1) if not kind else []
            close_type = difflib.get_close_matches(str(kind).lower(), list(NODE_KEYS), n=1) if kind else []
            self.checker.error((*where, "type") if "type" in raw else where,
                               f"node '{name}' has unknown type {kind!r}" if kind else f"node '{name}' needs a type",
                               f"did you mean node '{close[0]}'?" if close else
                               (f"did you mean '{close_type[0]}'? " if close_type else "")
                               + f"types: {', '.join(NODE_KEYS)}; see {SPEC_REFERENCE}")
            return None
        if kind == "judge" and "outputs" in raw:  # a judge's outputs are fixed: say which, not "inputs?"
            self.checker.error((*where, "outputs"), f"a judge declares no outputs: node '{name}' gives score "
                               "(pointwise), or a, b, gap, a_first, b_first (with pair:)",
                               f"drop outputs:, and read {name}.score (or {name}.gap) where you need it")
            raw = {k: v for k, v in raw.items() if k != "outputs"}
        self.checker.check_keys(where, raw, COMMON_KEYS | NODE_KEYS[kind], f"node '{name}' ({kind})")
        common = {"name": name, "type": kind, "where": where, "loop": loop, "for_each": raw.get("for_each"),
                  "when": self.expr((*where, "when"), raw["when"]) if "when" in raw else None}
        if loop and common["for_each"]:
            self.checker.error((*where, "for_each"), f"'{name}' is in the body of loop '{loop}', which runs it "
                               "once per loop record", "delete for_each here")
        if common["for_each"] is not None and not isinstance(common["for_each"], str):
            self.checker.error((*where, "for_each"), "for_each must name a node")
            common["for_each"] = None
        return getattr(self, f"read_{kind}")(raw, where, common)

    # -- one reader per type -------------------------------------------------------------------

    def read_source(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        fields = raw.get("fields", ["instruction"])
        if isinstance(fields, list):
            fields = {str(f): str(f) for f in fields}
        if not isinstance(fields, dict) or not fields:
            self.checker.error((*where, "fields"), "fields must list field names, or map names to file fields")
            fields = {}
        records = raw.get("records")
        if ("path" in raw) == (records is not None):
            self.checker.error(where, f"source '{common['name']}' needs either path: (a file) or records: (a list)")
        if records is not None:
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records) or not records:
                self.checker.error((*where, "records"), "records must be a non-empty list of mappings")
                records = []
            fields = {k: k for r in records for k in r if k != "id"}
            self._same_fields(records, fields, (*where, "records"))
        if raw.get("id_field", "id") is not None and not isinstance(raw.get("id_field", "id"), str):
            self.checker.error((*where, "id_field"), "id_field must name the field holding a record's id (or null)")
        path = self.checker.relative(str(raw["path"])) if "path" in raw else None
        if path is not None and not path.is_file():
            what = "is not a file (a folder, a pipe or a device)" if path.exists() else "does not exist"
            self.checker.missing_files.append(self.checker.located(
                (*where, "path"), f"source '{common['name']}' reads {path}, which {what}",
                f"path: is relative to the spec's folder; or give another file: --set nodes.{common['name']}.path=FILE "
                "(run: --seeds FILE)"))
        return SourceNode(**common, path=path, records=records, fields={str(k): str(v) for k, v in fields.items()},
                          id_field=raw.get("id_field", "id"))

    def _same_fields(self, records: list[dict[str, Any]], fields: dict[str, str], where: Path_) -> None:
        """Inline records are data of any YAML shape (text, numbers, lists), but each has every field:
        a field one record lacks would reach its prompts as None."""
        for i, record in enumerate(records):
            missing = [name for name in fields if name not in record]
            if missing:
                self.checker.error((*where, i), f"record {i + 1} has no {', '.join(map(repr, missing))}, "
                                   "which other records have", hint="give every inline record the same fields")

    def read_llm(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        return self._check_program(LLMNode(**common, **self._llm_keys(raw, where)))

    def _check_program(self, node: LLMNode) -> LLMNode:
        """The node, its `program:` checked: a file `codeclm optimize` saved, each demo holding the
        node's outputs (a demo without one passed validate, then failed every record's prompt)."""
        program, where = node.program, (*node.where, "program")
        if program is None:
            return node
        if not program.is_file():
            self.checker.error(where, f"optimized program {program} not found", self._missing_program_fix(program))
            return node
        predictor = _saved_predictor(program)
        if isinstance(predictor, str):
            self.checker.error(where, f"{program} is not a program `codeclm optimize` saved: {predictor}",
                               "run codeclm optimize SPEC NODE again to remake it, remove that key from the file, "
                               "or drop 'program:'")
        else:
            self._check_demos(node, predictor.get("demos", []), where)
        return node

    def _missing_program_fix(self, program: Path) -> str:
        """optimize prints where it saved, from the current folder (runs/NAME-optimize/NODE.json), and a
        relative `program:` is read from the spec's folder: the same words name two files."""
        given = Path(os.path.relpath(program, self.checker.path.parent))
        if not given.is_absolute() and given.is_file():
            return (f"a relative program: is read from the spec's folder, and {given} is in the current folder: "
                    f"give its full path, {given.resolve()}")
        return "make one with codeclm optimize SPEC NODE, or drop 'program:'"

    def _check_demos(self, node: LLMNode, demos: list[dict[str, Any]], where: Path_) -> None:
        outputs = node.call_outputs()
        for index, demo in enumerate(demos):
            missing = [name for name in outputs if name not in demo]
            if missing:
                fields = ", ".join(map(repr, missing))
                self.checker.error(where, f"{node.program}: demo {index + 1} of {len(demos)} (predict.demos[{index}]) "
                                   f"has no {fields}, an output of node '{node.name}'",
                                   f"each demo holds the node's outputs ({', '.join(outputs)}), which its prompt "
                                   f"shows: add {fields} to that demo, delete the demo, run codeclm optimize SPEC "
                                   f"{node.name} again, or drop 'program:'")
                return  # one demo said: the others are most likely the same

    def _text(self, raw: dict[str, Any], where: Path_, key: str, default: str, example: str) -> str:
        """A key whose value is text; left empty (null) it is absent. `str()` of anything else sent the
        system prompt "None" or "['a', 'b']", and made ids starting with None."""
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.checker.error((*where, key), f"{key} must be text, got {_json_kind(value)}",
                               f"e.g. {example} (quoted), or leave it out")
            return default
        return value

    def _flag(self, raw: dict[str, Any], where: Path_, key: str) -> bool:
        if not isinstance(raw.get(key, False), bool):
            self.checker.error((*where, key), f"{key} must be true or false, got {raw[key]!r}")
        return bool(raw.get(key))

    def read_judge(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        keys = self._llm_keys({**raw, "parse": "text"}, where)
        pair = raw.get("pair")
        if pair is not None and not (isinstance(pair, list) and len(pair) == 2):
            self.checker.error((*where, "pair"), "pair must list two expressions: the answers compared",
                               "e.g. pair: [answer_strong.answer, answer_target.answer]")
            pair = None
        node = JudgeNode(**common, **keys, pair=[self.expr((*where, "pair"), p) for p in pair] if pair else None,
                         both_orders=self.expr((*where, "both_orders"), raw.get("both_orders", True)),
                         scale=self.expr((*where, "scale"), raw.get("scale", [1, 10])),
                         unparsable=self.expr((*where, "unparsable"), _word(raw.get("unparsable", "fail"))))
        return self._check_program(node)

    def _llm_keys(self, raw: dict[str, Any], where: Path_) -> dict[str, Any]:
        for key in ("model", "template"):
            if not isinstance(raw.get(key), str):
                self.checker.error(where, f"an llm node needs {key}: (a {'model role' if key == 'model' else 'file'})")
        inputs = self.checker.mapping((*where, "inputs"), raw.get("inputs"), "inputs")
        for name in [name for name, value in inputs.items() if value is None]:  # `instruction:` left empty
            self.checker.error((*where, "inputs", name), f"input '{name}' is empty: every prompt would say None",
                               f"give it an expression ({name}: NODE.FIELD) or a text in quotes ({name}: \"'text'\")")
        parse = self._parse(raw.get("parse", "text"), (*where, "parse"))
        declared = raw.get("outputs", [])
        declared = [declared] if isinstance(declared, str) else declared
        if not isinstance(declared, list) or not all(isinstance(d, str) for d in declared):
            self.checker.error((*where, "outputs"), "outputs must list names")
            declared = []
        declared = declared or (list(PARSERS[parse.name].fixed_outputs or ["text"]) if parse else ["text"])
        program = self.checker.relative(str(raw["program"])) if raw.get("program") else None
        for key, low, high in (("temperature", 0, 2), ("max_tokens", 1, 1_000_000)):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value < low or (high is not None and value > high)):
                self.checker.error((*where, key), f"{key} must be a number from {low}" + (f" to {high}" if high else
                                                                                          ""), )
        return {"model": str(raw.get("model", "")), "template": str(raw.get("template", "")),
                "inputs": {str(k): self.expr((*where, "inputs", k), v, tree=True) for k, v in inputs.items()},
                # an unknown parser is reported above; its stand-in takes the declared outputs as they are,
                # so that no follow-on error speaks of a parser the spec does not name
                "parse": parse or ParseSpec("fields" if len(declared) > 1 else "text"), "declared": declared,
                "explode": self._explode(raw.get("explode"), (*where, "explode")),
                "lazy": self._flag(raw, where, "lazy"),
                "temperature": raw.get("temperature"), "max_tokens": raw.get("max_tokens"), "program": program,
                "instructions": self._text(raw, where, "instructions", "", "instructions: \"Answer briefly.\"")}

    def _parse(self, raw: Any, where: Path_) -> ParseSpec | None:
        args = {}
        if isinstance(raw, dict):
            args = {k: v for k, v in raw.items() if k != "name"}
            raw = raw.get("name")
        if not isinstance(raw, str) or raw not in PARSERS:
            close = difflib.get_close_matches(str(raw), list(PARSERS), n=1)
            self.checker.error(where, f"unknown parser {raw!r}" + (f": did you mean '{close[0]}'?" if close else ""),
                               "parsers: " + "; ".join(f"{p.name} ({p.doc})" for p in PARSERS.values()))
            return None
        parser = PARSERS[raw]
        for key in args:
            if key not in parser.args:
                self.checker.error((*where, key), f"parser '{raw}' takes no argument '{key}'",
                                   f"its arguments: {', '.join(parser.args) or 'none'}")
        return ParseSpec(raw, {k: self.expr((*where, k), v) for k, v in args.items()})

    def _explode(self, raw: Any, where: Path_) -> Explode | None:
        if raw is None:
            return None
        raw = self.checker.mapping(where, raw, "explode")
        self.checker.check_keys(where, raw, {"field", "as", "limit"})
        if not isinstance(raw.get("field"), str) or not isinstance(raw.get("as"), str):
            self.checker.error(where, "explode needs field: (the list output) and as: (each item's name)")
            return None
        limit = self.expr((*where, "limit"), raw["limit"]) if "limit" in raw else None
        return Explode(raw["field"], raw["as"], limit)

    def read_mix(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        sources = raw.get("from", [])
        sources = [sources] if isinstance(sources, str) else sources
        draws = {}
        for name, conf in self.checker.mapping((*where, "fields"), raw.get("fields"), "fields").items():
            draw = self._draw(conf, (*where, "fields", name))
            if draw:
                draws[str(name)] = draw
        if not draws:
            self.checker.error(where, "a mix needs fields: each one a choice: or a sample: of NODE.FIELD")
        return MixNode(**common, sources=[str(s) for s in sources],
                       count=self.expr((*where, "count"), raw.get("count", 1)), draws=draws,
                       id_prefix=self._text(raw, where, "id_prefix", "m", "id_prefix: \"m\""))

    def _draw(self, conf: Any, where: Path_) -> Draw | None:
        conf = self.checker.mapping(where, conf, "a mix field")
        self.checker.check_keys(where, conf, {"choice", "sample", "k", "flatten", "unique"})
        if "choice" in conf and "sample" in conf:  # the sample was silently ignored
            self.checker.error(where, "a mix field is a choice: (one value) or a sample: (k values), not both",
                               f"keep one: {{choice: {conf['choice']}}}, or {{sample: {conf['sample']}, k: 2}}")
            return None
        kind = "choice" if "choice" in conf else "sample" if "sample" in conf else None
        path = conf.get(kind) if kind else None
        if not isinstance(path, str) or path.count(".") != 1:
            self.checker.error(where, "a mix field needs choice: NODE.FIELD or sample: NODE.FIELD",
                               "e.g. use_case: {choice: encode.use_case}")
            return None
        node, field_name = path.split(".")
        return Draw(kind, [node], field_name, self.expr((*where, "k"), conf.get("k", 1)), bool(conf.get("flatten")),
                    bool(conf.get("unique")))

    def read_pick(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        if "from" not in raw:  # said once: no expression stands in for it, to be refused again as empty
            self.checker.error(where, "a pick needs from: (an expression giving a list)")
            return PickNode(**common)
        return PickNode(**common, choices=self.expr((*where, "from"), raw["from"]))

    def read_filter(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        if "where" not in raw:
            self.checker.error(where, "a filter needs where: (an expression; records where it is false are dropped)")
        return FilterNode(**common, where_=self.expr((*where, "where"), raw.get("where", "true")))

    def read_dedup(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        against = raw.get("against", [])
        against = [against] if isinstance(against, str) else against
        pairs = []
        for path in against:
            if not isinstance(path, str) or path.count(".") != 1:
                self.checker.error((*where, "against"), f"against lists NODE.FIELD collections, got {path!r}")
                continue
            node, field_name = path.split(".")
            pairs.append((node, field_name))
        if "field" not in raw:
            self.checker.error(where, "a dedup needs field: (an expression giving the text compared)")
        return DedupNode(**common, key=self.expr((*where, "field"), raw.get("field", "''")), against=pairs,
                         threshold=self.expr((*where, "threshold"), raw.get("threshold", 0.7)))

    def read_switch(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        cases = []
        raw_cases = raw.get("cases")
        if not isinstance(raw_cases, list) or not raw_cases:
            self.checker.error(where, "a switch needs cases: a list of {name, when, exit, set}")
            raw_cases = []
        for i, case in enumerate(raw_cases):
            at = (*where, "cases", i)
            case = self.checker.mapping(at, case, "a case")
            self.checker.check_keys(at, case, {"name", "when", "exit", "set"})
            if not isinstance(case.get("name"), str):
                self.checker.error(at, "each case needs a name (it is recorded as NODE.case)")
            elif case["name"] in {c.name for c in cases}:  # NODE.case could not tell the two apart
                self.checker.error((*at, "name"), f"two cases are named '{case['name']}'",
                                   "name each case once: NODE.case and the run's decisions count cases by name")
            if case.get("exit") is not None and (not isinstance(case["exit"], str) or case["exit"] in ENGINE_STATUSES):
                # `ok` is how a case says "go on": `exit: ok` went on, never ending the loop
                self.checker.error((*at, "exit"), "exit names how the loop ends (e.g. kept, dropped), not one of the "
                                   f"engine's own statuses ({', '.join(ENGINE_STATUSES)})",
                                   "name the status the record ends with, e.g. exit: kept; leave exit out to go on")
            sets = self.checker.mapping((*at, "set"), case.get("set"), "set")
            cases.append(Case(str(case.get("name", f"case{i}")),
                              self.expr((*at, "when"), case["when"]) if "when" in case else None,
                              case.get("exit"), {str(k): self.expr((*at, "set", k), v, tree=True)
                                                 for k, v in sets.items()}))
        return SwitchNode(**common, cases=cases)

    def read_loop(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        body = {}
        for name, conf in self.checker.mapping((*where, "body"), raw.get("body"), "body").items():
            node = self.read(str(name), conf, (*where, "body", name), loop=common["name"])
            if node:
                if node.type in ("source", "mix", "dedup", "loop", "rounds"):
                    self.checker.error(node.where, f"a {node.type} node cannot run inside a loop body")
                body[str(name)] = node
        if not body:
            self.checker.error(where, "a loop needs a body: the nodes each iteration runs")
        if "max" not in raw:  # a default of 1 ran the body once, its rewrites and next never used
            self.checker.error(where, f"loop '{common['name']}' needs max: (the most iterations per record)",
                               "e.g. max: 3, or max: params.max_iterations")
        if raw.get("emit", "last") not in ("last", "each"):
            self.checker.error((*where, "emit"), "emit must be last or each")
        if not isinstance(raw.get("exhausted", "dropped"), str) or not str(raw.get("exhausted", "dropped")).strip():
            self.checker.error((*where, "exhausted"), "exhausted must be a status name, e.g. dropped")

        def exprs(key: str) -> dict[str, Any]:
            mapping = self.checker.mapping((*where, key), raw.get(key), key)
            return {str(k): self.expr((*where, key, k), v, tree=True) for k, v in mapping.items()}

        state, following = exprs("state"), exprs("next")
        for key in following.keys() - state.keys():  # a typo would start a new key and leave the state as it was
            close = difflib.get_close_matches(key, sorted(state), n=1)
            self.checker.error((*where, "next", key), f"next.{key} is not a key of the loop's state"
                               + (f" ({', '.join(sorted(state))})" if state else " (it has none)"),
                               f"did you mean '{close[0]}'?" if close else f"declare it: state: {{{key}: ...}}")
        return LoopNode(**common, max=self.expr((*where, "max"), raw.get("max", 1)), state=state,
                        body=body, next=following, trace=exprs("trace"),
                        exhausted=str(raw.get("exhausted", "dropped")), emit=raw.get("emit", "last"))

    def read_rounds(self, raw: dict[str, Any], where: Path_, common: dict[str, Any]) -> Node:
        """The body is read once, its nodes as top-level ones (they name their for_each); rounds.py
        makes the copies. What a copy cannot be is refused here, once, at the body key's line."""
        for key in ("for_each", "when"):
            if key in raw:
                self.checker.error((*where, key), f"a rounds node runs its body count times: {key} belongs to "
                                   "the body's nodes", f"delete {key} here")
        body = {}
        for name, conf in self.checker.mapping((*where, "body"), raw.get("body"), "body").items():
            node = self.read(str(name), conf, (*where, "body", name))
            if node and (node.type in ("source", "rounds") or node.name in ROUNDS_NAMES):
                self.checker.error(node.where, f"'{node.name}' cannot be in a rounds body: " + (
                    f"'{node.name}' is what the body reads of the rounds" if node.name in ROUNDS_NAMES else
                    f"a {node.type} node would repeat the same records every round"),
                    "rename it" if node.name in ROUNDS_NAMES else "declare it before the rounds node")
            elif node:
                body[str(name)] = node
        keep = raw.get("keep")
        if not body:
            self.checker.error(where, "a rounds node needs a body: the nodes each round runs")
        elif keep not in body:
            self.checker.error((*where, "keep") if "keep" in raw else where, "keep must name a node of the body "
                               f"(the records each round adds to the pool), got {keep!r}",
                               f"body nodes: {', '.join(body)}")
        return RoundsNode(**common, count=self.expr((*where, "count"), raw.get("count", 1)), keep=str(keep),
                          body=body)

    def read_output(self, name: str, raw: Any, where: Path_) -> Output | None:
        if name in RESERVED_OUTPUTS:
            self.checker.error(where, f"output name {name!r} is a file every run writes itself",
                               f"choose another name (e.g. my_{name}); reserved: {', '.join(sorted(RESERVED_OUTPUTS))}")
            return None
        if path_like(name):
            self.checker.error(where, f"output name {name!r} is not a plain name: it names the file NAME.jsonl in "
                               "the run folder", "a name, not a path: letters, digits and _ (e.g. dataset)")
            return None
        if len(name.encode("utf-8", "replace")) > MAX_OUTPUT_BYTES:  # else the run fails writing it, .partial left
            self.checker.error(where, f"output name is {len(name.encode('utf-8', 'replace'))} bytes long: it names "
                               "the file NAME.jsonl (NAME.jsonl.partial while the run writes it), and a file name "
                               "holds 255 bytes", f"shorten it to {MAX_OUTPUT_BYTES} bytes or less")
            return None
        raw = self.checker.mapping(where, raw, f"output '{name}'")
        self.checker.check_keys(where, raw, {"from", "where", "fields", "description"})
        sources = [raw["from"]] if isinstance(raw.get("from"), str) else raw.get("from")
        if not isinstance(sources, list) or not sources or not all(isinstance(x, str) for x in sources):
            self.checker.error(where, f"output '{name}' needs from: (the node, or a list of nodes, whose records "
                               "it writes)")
            return None
        if len(set(sources)) < len(sources):  # `from: [polish, polish]` wrote every record twice
            twice = next(x for x in sources if sources.count(x) > 1)
            self.checker.error((*where, "from"), f"output '{name}' lists '{twice}' twice in from:",
                               "list each node once")
        fields = self.checker.mapping((*where, "fields"), raw.get("fields"), "fields")
        if not fields:
            self.checker.error(where, f"output '{name}' needs fields: (what each line holds)")
        return Output(name, where, sources, self.condition((*where, "where"), raw["where"]) if "where" in raw else None,
                      {str(k): self.expr((*where, "fields", k), v, tree=True) for k, v in fields.items()})

    def condition(self, where: Path_, value: Any) -> Expression | None:
        """An output's `where:`: an expression, or a YAML true/false (or number) written as its literal."""
        if isinstance(value, (bool, int, float)):
            value = str(value).lower() if isinstance(value, bool) else repr(value)
        if not isinstance(value, str):
            self.checker.error(where, f"where must be an expression, got {type(value).__name__}",
                               "e.g. where: \"record.status == 'kept'\"")
            return None
        return self.expr(where, value)


# Python's spellings in an expression that does not parse, and Jinja's: `x is not None`, `a && b`
PYTHONISMS = (("No test named 'None'", "Jinja's tests are lowercase: x is none, x is not none"),
              ("No test named 'True'", "Jinja's tests are lowercase: x is true"),
              ("No test named 'False'", "Jinja's tests are lowercase: x is false"),
              ("unexpected char '&'", "Jinja writes and, not &&"),
              ("got '|'", "Jinja writes or, not || (one | applies a filter)"),
              ("unexpected char '!'", "Jinja writes not x, not !x (a != b is fine)"))


def _python_hint(message: str) -> str | None:
    """The fix for a Python or C spelling Jinja does not read; None for any other problem."""
    return next((hint for error, hint in PYTHONISMS if error in message), None)


def _word(value: Any) -> Any:
    """`unparsable: tie` as the reference writes it: the bare words `fail` and `tie` are the values
    themselves (as a quoted `'tie'` is), not a name to look up; anything else stays an expression."""
    return f"'{value}'" if value in ("fail", "tie") else value

"""`rounds`: a static number of rounds of a body over a growing pool (Self-Instruct), unrolled.

When the spec is read, round N of body node `generate` becomes the ordinary node `generate_N`:
its expressions read round N's copies of the body's nodes, `round.index` (`first`, `last`,
`count`) is written as a literal, and `pool` (in a mix's `from` and fields, a dedup's `against`)
becomes the copies of the `keep` node of rounds 1 to N-1. The rounds node's own name, read as a
collection or an output's `from`, is every round's `keep` copy (`NAME.NODE`: every round's copy
of NODE). So the engine, cache keys, draws, dry-run bounds, replay and provenance see plain
nodes, and nothing of this runs. A mix or dedup waits for whole collections: a round reads the
earlier rounds' pool only once it is complete, so what is kept never depends on timing.
A copy keeps its body key's YAML path, so a problem with it is reported at that line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .expressions import Expression, renamed
from .nodes import ROUND_FIELDS, DedupNode, LoopNode, MixNode, Node, Output, RoundsNode

if TYPE_CHECKING:
    from .spec import Checker

POOL = "pool"


def unroll(checker: Checker, nodes: dict[str, Node], outputs: dict[str, Output],
           count_of: Callable[[RoundsNode], int]) -> tuple[dict[str, Node], dict[str, RoundsNode]]:
    """The nodes with every rounds node replaced, in place, by its rounds' copies (round 1's body,
    then round 2's, ...), and the rounds nodes by name. Outputs' `from` is expanded where it names
    a rounds node."""
    rounds = {name: node for name, node in nodes.items() if isinstance(node, RoundsNode)}
    if not rounds:
        return nodes, rounds
    for node in rounds.values():
        names = [b.name for b in _walk(node.body.values())]
        _refuse_shadows(checker, node, nodes)
        # A count or keep that is wrong has been reported: one round, kept by the body's last node, so
        # the later checks see the body's nodes as used instead of adding errors about copies never written.
        node.copies = [{name: f"{name}_{i}" for name in names} for i in range(1, (count_of(node) or 1) + 1)]
        if node.keep not in node.body and node.body:
            node.keep = list(node.body)[-1]
        checker.copies.update({copy: body for names_of_round in node.copies for body, copy in names_of_round.items()})
    kept = {name: [copy[node.keep] for copy in node.copies if node.keep in copy] for name, node in rounds.items()}
    flat: dict[str, Node] = {}
    for node in nodes.values():
        if isinstance(node, RoundsNode):
            for index in range(1, len(node.copies) + 1):
                copier = _Round(checker, node, index, kept)
                for body in node.body.values():
                    _add(checker, flat, copier.copy(body))
        else:
            _add(checker, flat, _Round(checker, None, 0, kept).copy(node))
    for output in outputs.values():
        output.sources = [name for source in output.sources for name in _output_sources(source, rounds, kept)]
    return flat, rounds


def _refuse_shadows(checker: Checker, rounds: RoundsNode, nodes: dict[str, Node]) -> None:
    """A body node named like a node outside the body: inside the body the name would silently mean
    the round's copy, outside it the other node."""
    for body in _walk(rounds.body.values()):
        if body.name in nodes:
            checker.error(body.where, f"body node '{body.name}' of rounds '{rounds.name}' has the name of a node "
                          "outside the body: inside the body it would mean the round's copy",
                          "rename one of them (names are unique, bodies included)")


def _output_sources(source: str, rounds: dict[str, RoundsNode], kept: dict[str, list[str]]) -> list[str]:
    """`from: grow` is every round's keep copy; `from: grow.answer` every round's copy of answer."""
    name, _, body = source.partition(".")
    if name not in rounds:
        return [source]
    if not body:
        return kept[name]
    return [copy[body] for copy in rounds[name].copies] if body in rounds[name].body else [source]


def _add(checker: Checker, flat: dict[str, Node], node: Node) -> None:
    """A node of the unrolled graph, whose name must still be unique once the copies are named."""
    if node.name in flat:
        checker.error(node.where, f"two nodes are named '{node.name}'", "names are unique, loop bodies and the "
                      "copies of rounds bodies included (round N of body node NAME is NAME_N): rename one")
    else:
        flat[node.name] = node


class _Round:
    """Copies the nodes of one round of a rounds body; with no rounds node, copies a node outside
    every body, whose collections may name a rounds node (every round's keep copies)."""

    def __init__(self, checker: Checker, rounds: RoundsNode | None, index: int, kept: dict[str, list[str]]):
        self.checker, self.rounds, self.index = checker, rounds, index
        self.names = rounds.copies[index - 1] if rounds else {}
        self.collections = {**kept}
        self.constants: dict[str, dict[str, Any]] = {}
        if rounds:
            count = len(rounds.copies)
            self.collections[POOL] = kept[rounds.name][:index - 1]
            self.constants["round"] = dict(zip(ROUND_FIELDS, (index, index == 1, index == count, count), strict=True))

    def copy(self, node: Node) -> Node:
        """The node for this round: every expression renamed, every name it reads as a node replaced."""
        copied = self.value(node)
        copied.name = self.names.get(node.name, node.name)
        copied.loop = self.names.get(node.loop, node.loop) if node.loop else None
        if self.rounds:
            copied.unrolled = (self.rounds.name, self.index)
        copied.for_each = self.names.get(node.for_each, node.for_each) if node.for_each else None
        if isinstance(copied, MixNode):
            copied.sources = self.expand(copied.sources)
            if self.rounds:
                copied.id_prefix = f"r{self.index}{copied.id_prefix}"  # rounds never share ids
            for field_name, draw in copied.draws.items():
                from_pool, draw.nodes = POOL in draw.nodes, self.expand(draw.nodes)
                if draw.kind == "choice" and from_pool and not draw.nodes:
                    self.checker.error((*node.where, "fields", field_name), f"mix field '{field_name}' chooses from "
                                       "pool, which is empty in round 1", "sample from it (round 1 gets [])")
        if isinstance(copied, DedupNode):
            copied.against = [(other, f) for name, f in copied.against for other in self.expand([name])]
        if isinstance(copied, LoopNode):
            copied.body = {self.names.get(k, k): self.copy(v) for k, v in node.body.items()}
        return copied

    def expand(self, names: list[str]) -> list[str]:
        """Collections read whole: a rounds node (or `pool`) is the keep copies it stands for."""
        return [n for name in names for n in self.collections.get(name, [self.names.get(name, name)])]

    def value(self, value: Any) -> Any:
        """A deep copy with every expression renamed (configs are dataclasses of expressions)."""
        if isinstance(value, Expression):
            return renamed(value, self.names, self.constants)
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: self.value(getattr(value, f.name))
                                                 for f in dataclasses.fields(value) if f.init})
        return value


def _walk(nodes: Any) -> list[Node]:
    """Body nodes, loop bodies included: each gets a copy per round."""
    return [n for node in nodes for n in [node, *(_walk(node.body.values()) if isinstance(node, LoopNode) else [])]]

"""Records: what flows along the graph. Each has a structural id derived from its parent's
(`m0003.i01`), a sort position, the seeds it comes from, and its node's values or failure.

Ids are structural, never row positions, so a step that changes how many records exist (a
filter, an explode) cannot shift another record's identity, its draws, or its cached calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


def rng_for(seed: int, item: str, purpose: str) -> random.Random:
    """An RNG for one draw, seeded by the spec's seed, a stable record id and the draw's purpose,
    so concurrency, resume and replay cannot change what is drawn (str seeds hash with SHA-512)."""
    return random.Random(f"{seed}:{item}:{purpose}")


@dataclass(slots=True)  # no __dict__: a 100k-record collection costs less
class Record:
    id: str
    node: str
    values: dict[str, Any]
    parent: Record | None = None
    order: tuple[int, ...] = ()  # sort position: outputs are written in this order, whatever finished first
    sources: tuple[str, ...] = ()  # ids of the source records it derives from (a dataset line's seed_ids)
    slot: int = 0  # identical mix records get distinct slots, so their calls are distinct samples
    calls: list[dict[str, Any]] = field(default_factory=list)  # the model calls its node made for it
    failure: dict[str, Any] | None = None  # {node, error, raw} when its node failed on it
    status: str = "ok"  # ok | failed | a loop's exit name
    below: dict[str, Any] = field(default_factory=dict)  # names a loop record shows its descendants (state, body)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def child(self, node: str, values: dict[str, Any], **changes: Any) -> Record:
        """A record of `node` made from this one: same id, order, sources and slot unless changed."""
        # positional where it can be: a call by keywords into the dataclass's __init__ cost twice as much
        return Record(changes.pop("id", self.id), node, values, self, changes.pop("order", self.order),
                      changes.pop("sources", self.sources), changes.pop("slot", self.slot), **changes)

    def lineage(self) -> list[Record]:
        chain, record = [], self
        while record is not None:
            chain.append(record)
            record = record.parent
        return chain

    def find(self, node: str) -> Record | None:
        record: Record | None = self
        while record is not None and record.node != node:
            record = record.parent
        return record


class View:
    """A record's values as expressions see them: `encode.use_case`, `encode.id`, `encode.calls`.
    Only item access, so a field named `items` or `keys` is the field, never a dict method."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def missing_field(self, name: str) -> str:
        """The message of an expression reading a field this view lacks."""
        return f"no field {name!r} here"


class _RecordView(View):
    """`view(record)`: the record's values and its `id` and `calls`, read from the record, which never
    changes, instead of copied into a dict for every scope that shows it."""

    __slots__ = ("_record",)

    def __init__(self, record: Record):
        self._record = record

    def __getitem__(self, key: str) -> Any:
        if key == "id":
            return self._record.id
        if key == "calls":
            return self._record.calls
        return self._record.values[key]

    def __contains__(self, key: str) -> bool:
        return key in ("id", "calls") or key in self._record.values

    def missing_field(self, name: str) -> str:
        record = self._record
        fields = ", ".join(repr(k) for k in (*record.values, "id", "calls"))
        message = f"{record.node} has no field {name!r} on record {record.id} (it has {fields})"
        case = record.values.get("case")  # a switch: its fields are what the case taken sets
        if not isinstance(case, str):
            return message
        return f"{message}: its case {case!r} sets no {name!r} (set it in that case too, or read it only where " \
            f"{record.node}.case says it is set)"


def view(record: Record) -> View:
    return _RecordView(record)


class _RecordFields:
    """`record.*`, each field computed when an expression reads it (most outputs never read `calls`)."""

    def __init__(self, record: Record):
        self.record = record

    def __getitem__(self, key: str) -> Any:
        record = self.record
        if key == "calls":  # every call along the lineage, oldest first, each once
            calls = {c["key"] + c.get("item", ""): c for r in reversed(record.lineage()) for c in r.calls}
            return list(calls.values())
        if key == "failure" and record.failure is not None:
            return record.failure
        fields = {"id": record.id, "status": record.status, "sources": list(record.sources)}
        return fields[key]


def record_view(record: Record) -> View:
    """`record.*` in outputs: the record's id, status, failure, source ids, and every call behind it
    (along its lineage, oldest first)."""
    return View(_RecordFields(record))  # type: ignore[arg-type]


def lineage_scope(record: Record | None) -> dict[str, Any]:
    """Every name a record's lineage shows: each ancestor's values, and what loops left below them."""
    scope: dict[str, Any] = {}
    ancestor = record
    while ancestor is not None:  # the record first, then each parent: the nearest of a name wins
        if ancestor.below:
            for name, value in ancestor.below.items():
                scope.setdefault(name, value)
        if (ancestor.failure is None or ancestor.values) and ancestor.node not in scope:
            scope[ancestor.node] = _RecordView(ancestor)
        ancestor = ancestor.parent
    return scope


_NO_DEFAULT = object()


def field_of(record: Record, name: str, default: Any = _NO_DEFAULT) -> Any:
    """A field of a record, or of the nearest record on its lineage that has it; `default` if none
    has it (without one, StopIteration)."""
    found = (r.values[name] for r in record.lineage() if name in r.values)
    return next(found) if default is _NO_DEFAULT else next(found, default)


def nearest_values(record: Record) -> View:
    """`lineage.NAME` in outputs: the value named NAME nearest on the record's lineage."""
    values: dict[str, Any] = {}
    for ancestor in reversed(record.lineage()):
        values.update(ancestor.values)
    return View(values)

"""A collection read only by draws (a mix's `from`, a dedup's `against`), kept on disk.

A mix draws from every record of its collection, so the collection exists whole before the first
draw: 100k encodings for 100k seeds. Held as Python objects that is about 0.7 KB a seed (and the
arenas they leave behind); kept as one pickled row each in an `OrderedSpill`, it costs the heap
only 8 bytes a record (its row, in order), and a draw reads its record back from disk.
"""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

from ..artifacts.spill import OrderedSpill
from .records import Record, field_of


class DrawnCollection:
    """A collection's records as a draw sees them: id, node, order, sources, slot, status and only the
    wanted fields (each the nearest value on the record's lineage, as `field_of` reads it)."""

    def __init__(self, wanted: set[str]):
        self.wanted = wanted
        self._spill = OrderedSpill()

    def append(self, record: Record) -> None:
        values = {name: found for name in self.wanted
                  if (found := field_of(record, name, _ABSENT)) is not _ABSENT}
        row = (record.id, record.node, values, record.order, record.sources, record.slot, record.status)
        self._spill.add(record.order, pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL))

    def in_order(self) -> Sequence[Record]:
        """The whole collection (complete by now), in its records' stable order, read from disk on use."""
        return _Ordered(self._spill, self._spill.rows_in_order())

    def close(self) -> None:
        self._spill.close()


_ABSENT = object()


def _record(row: Any) -> Record:
    record_id, node, values, order, sources, slot, status = pickle.loads(row)
    return Record(record_id, node, values, order=order, sources=sources, slot=slot, status=status)


class _Ordered(Sequence[Record]):
    """Records by position (what `rng.choice` reads) and in order (what a pool or a dedup reads)."""

    def __init__(self, spill: OrderedSpill, rows: array):
        self._spill, self._rows = spill, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]  # no slices: draws pick one
        return _record(self._spill.value(self._rows[index]))

    def __iter__(self) -> Iterator[Record]:
        return (_record(row) for row in self._spill.in_order())


def chained(parts: list[Sequence[Record]]) -> Sequence[Record]:
    """Collections a draw reads as one (a rounds pool: the earlier rounds'), in order, without copying
    them: a copy would bring a collection kept on disk back into memory whole."""
    return parts[0] if len(parts) == 1 else _Chained(parts)


class _Chained(Sequence[Record]):
    def __init__(self, parts: list[Sequence[Record]]):
        self._parts = parts

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]  # no slices: draws pick one
        if index < 0:  # draws never count from the end
            raise IndexError(index)
        for part in self._parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)

    def __iter__(self) -> Iterator[Record]:
        return chain.from_iterable(self._parts)

"""Values kept on disk under sort keys, read back in key order: what lets a run hold 100k records'
worth of bookkeeping (a journal's line offsets, a collection only draws read) at a flat memory cost.

A Python object per record costs about a hundred bytes or more, and freed ones leave their memory
arenas resident; a row in a private temporary SQLite database costs none of the heap, and SQLite
sorts the rows within its own small, bounded cache (spilling to disk beyond it).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterator
from typing import Any

Storable = int | str | bytes  # what SQLite keeps as it is
CACHE_KIB = 512  # SQLite's page cache (and so its sorter's memory) per spill


def sort_key(value: Any) -> bytes:
    """Bytes that sort as `value` does among its kind: tuples (nested) of ints and strings, as records'
    orders and journal keys are. Each element is tagged, and a tuple ends with a byte below every tag,
    so a tuple sorts before the longer tuples it begins, as Python's comparison has it."""
    if isinstance(value, tuple):
        return b"\x03" + b"".join(sort_key(item) for item in value) + b"\x00"
    if isinstance(value, int):  # bool included: it compares as 0 and 1
        if not -2**63 <= value < 2**63:
            raise ValueError(f"no sort key for {value}: orders' integers are positions, within 64 bits")
        return b"\x01" + (value + 2**63).to_bytes(8, "big")
    if isinstance(value, str):  # UTF-8 keeps code point order; a NUL is escaped so the end marker stays lowest
        return b"\x02" + value.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + b"\x00"
    raise TypeError(f"no sort key for {type(value).__name__}: orders are tuples of ints and strings")


class OrderedSpill:
    """Values added under sort keys, kept in a temporary database that SQLite removes when it is closed
    (or the process ends); read back in key order, equal keys in the order they were added."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a private temporary database on disk
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE spill (key BLOB NOT NULL, value)")
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: Any, value: Storable) -> None:
        self._db.execute("INSERT INTO spill (key, value) VALUES (?, ?)", (sort_key(key), value))
        self._count += 1

    def in_order(self) -> Iterator[Storable]:
        """Every value, in key order."""
        for (value,) in self._db.execute("SELECT value FROM spill ORDER BY key, rowid"):
            yield value

    def rows_in_order(self) -> array:
        """Each value's row, in key order: 8 bytes a value, for reading the n-th with `value`."""
        return array("q", (row for (row,) in self._db.execute("SELECT rowid FROM spill ORDER BY key, rowid")))

    def value(self, row: int) -> Storable:
        (value,) = self._db.execute("SELECT value FROM spill WHERE rowid = ?", (row,)).fetchone()
        return value

    def close(self) -> None:
        self._db.close()

"""How the cache reads its entries off disk without running code from them.

diskcache stores values as pickles, and unpickling runs whatever callable a pickle names: a cache
folder from elsewhere (a CI artifact, a shared mount, a colleague's copy) could run code on replay.
codeclm's entries are plain JSON-like dicts, which pickle writes with no callable at all, so
`SafeDisk` reads them with an unpickler that refuses every callable (and every other kind of value
diskcache can hold), and only from the folder's own value files. A refused value is damage: a miss
with a warning (cache.py), never code run.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

import diskcache
from diskcache.core import MODE_PICKLE

# diskcache's own value file names: two levels of two hex digits, then 28 hex digits (Disk.filename)
_VALUE_FILE = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")
MAX_VALUE_FILE = 64 * 2**20  # bytes: an answer is text; a larger file is not one codeclm wrote


class RefusedValue(pickle.UnpicklingError):
    """A cached value that is not a plain entry codeclm writes."""


class _PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, strings, numbers, booleans and None only: those need no class lookup."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedValue(f"the value names {module}.{name}, which a cache entry never holds")

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedValue("the value refers to an outside object, which a cache entry never does")


class SafeDisk(diskcache.Disk):
    """diskcache's Disk, reading values with `_PlainUnpickler`; writing is diskcache's own."""

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode != MODE_PICKLE:
            raise RefusedValue(f"a value stored as diskcache mode {mode}, which codeclm never writes")
        data = value if value is not None else self._value_file(filename)
        return _PlainUnpickler(io.BytesIO(data)).load()

    def _value_file(self, filename: str | None) -> bytes:
        if not isinstance(filename, str) or not _VALUE_FILE.fullmatch(filename):
            raise RefusedValue(f"a value file named {str(filename)[:60]!r}, outside the cache's own files")
        path = os.path.join(self._directory, filename)
        if os.path.getsize(path) > MAX_VALUE_FILE:
            raise RefusedValue(f"a value file of {os.path.getsize(path):,} bytes")
        with open(path, "rb") as reader:
            return reader.read()

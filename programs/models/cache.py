"""Content-addressed disk cache of raw model completions (diskcache).

A call is identified by its model, rendered messages, decoding parameters and sample
slot; never by api_key or api_base, so the same call through another endpoint is the
same entry. The cache holds raw text: parsing happens after it, so a fixed parser or a
changed downstream parameter re-uses every call upstream of the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from ..errors import CodecError, SpecError
from ..lang.yaml_lines import check_path_text

# live: read and write | replay: read only, a miss is an error (the hub's) | refresh: write only
# | read: read only, a miss is a miss (dry runs, stats, export)
MODES = ("live", "replay", "refresh", "read")
READ_ONLY_MODES = ("replay", "read")
DB_NAME = "cache.db"  # diskcache's database file in the cache folder
# A live run writes its answers in batches: one SQLite transaction for the answers of FLUSH_AFTER
# seconds (at most FLUSH_EVERY), written that long after the first of them. A transaction costs
# some 20 system calls (WAL pages, file locks), and one per answer was the largest single CPU cost
# of a call (benchmarks/RESULTS.md). Until written, an answer reads back from memory. Closing the
# cache (the end of a run, an error, Ctrl-C, SIGTERM) writes the rest; a hard kill (SIGKILL, power
# loss) loses at most the answers of the last FLUSH_AFTER seconds, asked again on the rerun like
# the calls that were in flight.
FLUSH_AFTER = 0.01
FLUSH_EVERY = 64


def default_cache_dir() -> Path:
    """`$CODECLM_CACHE_DIR`, else the user cache folder: shared across runs and specs."""
    env = os.environ.get("CODECLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codeclm"


class CallIdentity:
    """What makes two calls the same call: its model, rendered messages, decoding parameters and
    sample slot. Its key and the messages' short hash are made at once: every call reads both."""

    __slots__ = ("model", "messages", "params", "slot", "key", "messages_sha")

    def __init__(self, model: str, messages: tuple[tuple[str, str], ...], params: tuple[tuple[str, Any], ...],
                 slot: int = 0):
        self.model, self.messages, self.params, self.slot = model, messages, params, slot
        # `_json(messages)`, composed: the strings are nearly all of it, and orjson encodes them
        messages_json = "[" + ", ".join([f"[{_ROLES_JSON.get(role) or _string_json(role)}, {_string_json(content)}]"
                                         for role, content in messages]) + "]"
        # the SHA-256 of {"model", "messages", "params", "slot"} as sorted-key JSON, composed from the
        # parts' JSON texts into exactly the text `json.dumps` would give the dict
        self.key = _sha256(f'{{"messages": {messages_json}, {_rest_json(model, params, slot)}')
        # a short hash of the rendered messages: in every call's provenance, and what a replay miss compares
        self.messages_sha = _sha256(messages_json)[:12]

    @classmethod
    def of(cls, model: str, messages: list[dict[str, str]], params: dict[str, Any], slot: int = 0) -> CallIdentity:
        return cls(model, tuple((m["role"], m["content"]) for m in messages), tuple(sorted(params.items())), slot)

    def seed(self) -> int:
        """A per-call sampling seed for models that take one: the same call samples the same."""
        return int(self.key[:8], 16)


# json.dumps(value, sort_keys=True, ensure_ascii=False), without building an encoder for every value
_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode


_ROLES_JSON = {role: _json(role) for role in ("system", "user", "assistant")}  # the roles' JSON, once


def _string_json(value: Any) -> str:
    """`_json(value)`, by orjson for a str: its encoding of every code point is json's, in an eighth
    of the time (tests/test_cache.py checks them all). json takes anything else, and a lone surrogate."""
    if isinstance(value, str):
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate
            pass
    return _json(value)


# the identities of (model, slot, params) -> (the same objects, text): the key's text after the messages,
# for the few sets a run's calls share. By identity, not equality: 1, 1.0 and True are equal, and 0.0 and
# -0.0, and json writes each its own way. The objects are kept, so no identity is reused while remembered.
_REST_JSON: dict[tuple[int, ...], tuple[tuple[Any, ...], str]] = {}


def _rest_json(model: str, params: tuple[tuple[str, Any], ...], slot: int) -> str:
    """`"model": ..., "params": ..., "slot": ...}`, as `_json` writes them, remembered for the very same
    objects (immutable ones): json's encoder costs more than the rest of the key. Each node holds its own
    equal parameters (its own 2048), so each set is remembered per object, not per value."""
    parts = (model, slot, *chain.from_iterable(params))
    identities = tuple(map(id, parts))
    remembered = _REST_JSON.get(identities)
    if remembered is not None:
        return remembered[1]
    text = f'"model": {_json(model)}, "params": {_json(params)}, "slot": {_json(slot)}}}'
    if len(_REST_JSON) < 256 and all(type(part) in _IMMUTABLE for part in parts):
        _REST_JSON[identities] = (parts, text)
    return text


_IMMUTABLE = {str, int, float, bool, type(None)}  # values an identical object cannot have changed


def _sha256(text: str) -> str:
    # surrogatepass: a lone surrogate (which inputs are checked for) can never crash the hash;
    # valid text hashes exactly as before
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def entry_problem(entry: Any) -> str | None:
    """Why a cached value is not a completion entry (None if it is): such a value is damage,
    treated as a miss, never as data."""
    if not isinstance(entry, dict):
        return f"a {type(entry).__name__}, not a completion entry"
    if not isinstance(entry.get("text"), str):
        return "no completion text"
    usage = entry.get("usage")
    if not isinstance(usage, dict) or set(usage) != {"prompt_tokens", "completion_tokens"} \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in usage.values()):
        return "no valid token usage"
    return None


FAILED = "failed:"  # the key a call's failure is stored under is this + the call's key


def failure_problem(entry: Any) -> str | None:
    """Why a cached value is not a recorded failure (None if it is)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("error"), str):
        return "not a recorded failure"
    return None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class CacheWriteError(CodecError):
    """The cache could not store an entry (disk full, folder made read-only, damaged database)."""


class CallCache:
    """The one way into the cache folder: every command (run, replay, evaluate, optimize, dry run,
    `cache stats|clear|export|import`) opens it through this class, so for all of them:

    - a cache path that is a file, a folder that cannot be created or written, or a database
      file that is not one (garbage, truncated) is a SpecError naming the path (exit 2);
    - an entry that does not deserialize, or is not a completion entry, is a miss with a
      warning (a live run calls again and overwrites it), never data;
    - the read-only modes (`replay`, `read`) open the SQLite database read-only: immutable (no
      lock, no -shm file, nothing written) when no writer is at work, through SQLite's locks
      when one is (a -wal or -shm file is there); a read-only cache folder replays, and a
      missing folder is an empty cache.

    Entries are diskcache's {key: entry}, tagged by model for per-model stats and clearing.
    """

    def __init__(self, folder: Path, mode: str = "live"):
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}")
        self.folder = Path(folder).expanduser()
        check_path_text(self.folder, "cache folder")
        self.mode = mode
        self.read_only = mode in READ_ONLY_MODES
        if self.folder.exists() and not self.folder.is_dir():
            raise SpecError(str(self.folder), "the cache path is a file, not a folder",
                            hint="pass --cache-dir DIR (a folder), or move the file away")
        self.store: _ReadOnlyStore | _WritableStore = \
            _ReadOnlyStore(self.folder) if self.read_only else _WritableStore(self.folder)
        self.damaged = 0  # entries treated as misses
        self.damaged_keys: set[str] = set()  # the first few, for a replay miss to name the cause
        self._write_failed = False
        self._pending: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (value, tag): answers not yet written
        self._batch_started = 0.0  # time.monotonic() of the first pending answer
        self._lock = threading.Lock()  # the sync path (optimize) puts from the hub's loop thread

    def get(self, key: str) -> dict[str, Any] | None:
        if self.mode == "refresh":
            return None
        return self._read(key, entry_problem)  # peek's read: once a call

    def put(self, key: str, model: str, entry: dict[str, Any], *, strict: bool = False) -> bool:
        """Store an entry (not in the read-only modes), in the next batch; it reads back at once. A
        failed write warns once and the run goes on uncached (its result is still used); with strict,
        it is written now and a failure raises CacheWriteError."""
        if self.read_only:
            return False
        now = time.monotonic()
        with self._lock:
            first = not self._pending
            if first:
                self._batch_started = now
            self._pending[key] = ({**entry, "model": model, "stored_at": time.time()}, model)
            due = len(self._pending) >= FLUSH_EVERY or now - self._batch_started >= FLUSH_AFTER
        if strict or due:  # due: also when the loop that was to write the batch has ended
            return self.flush(strict=strict)
        if first:
            self._flush_later()
        return True

    def _flush_later(self) -> None:
        """Write the batch FLUSH_AFTER from now, on the running event loop; without one, now."""
        try:
            asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
        except RuntimeError:
            self.flush()

    def flush(self, *, strict: bool = False) -> bool:
        """Write the pending answers in one transaction; False (with a warning, once) if that failed."""
        with self._lock:
            if not self._pending:
                return True
            try:
                self.store.set_many(self._pending.items())
                return True
            except CacheWriteError as exc:
                if strict:
                    raise
                if not self._write_failed:
                    self._write_failed = True
                    warn(f"{exc}; calls from here on are not cached (results are still used)")
                return False
            finally:
                self._pending.clear()

    def peek(self, key: str) -> dict[str, Any] | None:
        """Read regardless of mode (dry runs, exports); damage reads as a miss, with a warning."""
        return self._read(key, entry_problem)

    def put_failure(self, key: str, model: str, error: str, *, strict: bool = False) -> bool:
        """Remember that a call failed for good, and with what error: a replay fails it the same way
        (the run's failures are data, replayed like its answers); a live run calls it again."""
        if self.mode == "refresh":  # a refresh replaces what the cache held: its failure too, or a replay of it
            with self._lock:       # would get the answer an earlier run had
                self._pending.pop(key, None)
            self.store.delete(key)
        return self.put(FAILED + key, model, {"error": error}, strict=strict)

    def failure(self, key: str) -> dict[str, Any] | None:
        """How a call the cache holds no answer for failed ({"error": ..., "model": ...}), if a run recorded it."""
        return self._read(FAILED + key, failure_problem)

    def _read(self, key: str, check: Callable[[Any], str | None]) -> dict[str, Any] | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending[0]
        try:
            entry = self.store.get(key)
            problem = None if entry is None else check(entry)
        except _Damaged as exc:
            entry, problem = None, str(exc)
        if problem is None:
            return entry
        self.damaged += 1
        if len(self.damaged_keys) < 1000:
            self.damaged_keys.add(key)
        if self.damaged == 1:
            warn(f"cache {self.folder}: entry {key[:12]} is damaged ({problem}); treated as a miss"
                 + ("" if self.read_only else ", and called again"))
        return None

    def stats(self) -> dict[str, Any]:
        """Answers per model, and apart from them the failures kept for replay."""
        counts = self.store.per_model()
        return {"folder": str(self.folder), "entries": sum(a for a, _ in counts.values()),
                "failures": sum(f for _, f in counts.values()), "bytes": self.store.volume(),
                "per_model": counts}  # model -> (answers, failures)

    def clear(self, model: str | None = None) -> int:
        if self.read_only:
            raise ValueError("clear needs a writable cache")
        return self.store.clear(model)

    def close(self) -> None:
        self.flush()
        if self.damaged > 1:
            warn(f"cache {self.folder}: {self.damaged} damaged entries were treated as misses")
        self.store.close()


class _Damaged(Exception):
    """One entry (or the page holding it) cannot be read."""


def _damaged_db(db: Path, exc: BaseException) -> SpecError:
    if "disk is full" in str(exc) or "disk I/O error" in str(exc):  # SQLite's words for the disk, not the file
        return SpecError(str(db), f"the cache database cannot be written: the disk is full or failing ({exc})",
                         hint=f"free space on the disk of {db.parent}, or pass --cache-dir DIR on another disk")
    return SpecError(str(db), f"the cache database is damaged and cannot be read ({exc})",
                     hint=f"it holds only cached completions: move {db.parent} aside (calls are made again) "
                          "or pass --cache-dir DIR")


def _not_writable(folder: Path, reason: str) -> SpecError:
    return SpecError(str(folder), f"the cache folder cannot be written ({reason})",
                     hint="pass --cache-dir DIR (a writable folder), or replay it read-only with --replay")


def _refuse_foreign_db(db: Path) -> None:
    """A cache.db that holds tables diskcache never makes is someone else's database: opening it
    would add the cache's tables to it. Refused; a garbage file is left to the damage checks."""
    if not db.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return
    foreign = sorted(t for t in tables if t not in ("Cache", "Settings") and not t.startswith("sqlite_"))
    if foreign:
        raise SpecError(str(db), f"not a codeclm cache: this database holds other tables ({', '.join(foreign[:5])}), "
                        "and the cache would write into it", hint="pass --cache-dir DIR, a folder for the cache alone")


def _per_model(execute: Any, db: Path) -> dict[str, tuple[int, int]]:
    """(answers, recorded failures) per model (the tag each entry is stored under), through either
    store's connection."""
    try:
        rows = execute(f"SELECT tag, substr(key, 1, {len(FAILED)}) = ?, COUNT(*) FROM Cache GROUP BY 1, 2",
                       (FAILED,)).fetchall()
    except sqlite3.Error as exc:
        raise _damaged_db(db, exc) from None
    counts: dict[str, list[int]] = {}
    for tag, failed, count in rows:
        counts.setdefault("?" if tag is None else str(tag), [0, 0])[1 if failed else 0] += count
    return {model: (answers, failures) for model, (answers, failures) in counts.items()}


# diskcache's own row for a str key (raw = 1), no expiry, as `Cache.set` writes it
_INSERT = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
           "filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, ?)")
# The usual batch's rows, their values in the row (small answers, not in files of their own): NULL is written as
# SQL, and the value bound as a bytearray. sqlite3 binds None and a memoryview (diskcache's sqlite3.Binary)
# through its adapter lookup, some 3,000 instructions each; the same BLOB either way.
_INSERT_INLINE = ("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
                  "filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, NULL, ?)")
# the same row over one already there, as `Cache.set` updates it (diskcache's size trigger sees an update)
_UPDATE = ("UPDATE Cache SET store_time = ?, expire_time = NULL, access_time = ?, access_count = 0, tag = ?, "
           "size = ?, mode = ?, filename = ?, value = ? WHERE key = ? AND raw = 1")


def _replace_rows(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[str]:
    """Write rows some of whose keys are there; returns the value files the replaced rows had (to be
    removed once the transaction is in). Rows the batch insert wrote before it met one are rewritten."""
    replaced = []
    for key, *columns in rows:
        old = con.execute("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchone()
        if old is None:
            con.execute(_INSERT, (key, *columns))
            continue
        con.execute(_UPDATE, (*columns, key))
        if old[0] is not None and old[0] != columns[5]:  # columns[5]: the new row's value file
            replaced.append(old[0])
    return replaced


def _insert(rows: list[tuple[Any, ...]]) -> tuple[str, list[tuple[Any, ...]]]:
    """The statement and parameters that insert `rows` (_INSERT's), by _INSERT_INLINE where no row has a file."""
    if any(row[6] is not None for row in rows):  # row[6]: its value file's name
        return _INSERT, rows
    return _INSERT_INLINE, [(key, stored, accessed, tag, size, mode, bytearray(value) if type(value) is memoryview
                             else value) for key, stored, accessed, tag, size, mode, _, value in rows]


def _read_entry(execute: Callable[..., Any], disk: Any, key: str) -> Any:
    """The value diskcache stored under `key`, or None; what cannot be read is _Damaged."""
    try:
        row = execute("SELECT mode, filename, value, expire_time FROM Cache WHERE key = ? AND raw = 1",
                      (key,)).fetchone()
    except sqlite3.Error as exc:
        raise _Damaged(f"database: {exc}") from None
    if row is None or (row[3] is not None and row[3] < time.time()):
        return None
    try:
        return disk.fetch(row[0], row[1], row[2], False)
    except Exception as exc:  # noqa: BLE001 - a refused or unreadable value, whatever the error: damage
        raise _Damaged(f"{type(exc).__name__}: {exc}") from None


class _WritableStore:
    """diskcache.Cache, with its failures turned into the errors CallCache promises."""

    def __init__(self, folder: Path):
        import diskcache

        from .safe_disk import SafeDisk

        self.folder, self.db = folder, folder / DB_NAME
        _refuse_foreign_db(self.db)
        try:
            # SQLite's memory for a cache file that grows with the run: no memory map (diskcache's
            # default maps 64 MiB of the file, resident once touched) and a 16 MiB page cache, so a
            # 100k-call run holds no more than a 10k-call one. Nothing expires or is evicted, so a
            # write skips diskcache's query for expired entries (cull_limit=0).
            self.cache = diskcache.Cache(str(folder), disk=SafeDisk, size_limit=2**40, eviction_policy="none",
                                         cull_limit=0, sqlite_mmap_size=0, sqlite_cache_size=2**12)
        except sqlite3.OperationalError as exc:  # a locked, read-only or unopenable database
            if not os.access(folder, os.W_OK) or "readonly" in str(exc) or "unable to open" in str(exc):
                raise _not_writable(folder, str(exc)) from None
            raise _damaged_db(self.db, exc) from None
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
            raise _damaged_db(self.db, exc) from None
        except OSError as exc:
            raise _not_writable(folder, exc.strerror or str(exc)) from None
        self.disk = self.cache.disk

    def get(self, key: str) -> Any:
        # diskcache's get asks for its thread's connection several times a call (a getpid each):
        # the same query on it, read as the read-only store reads
        return _read_entry(self.cache._con.execute, self.disk, key)

    def delete(self, key: str) -> None:
        """Remove an entry, best effort: a write that fails warns when the batch is written."""
        import diskcache

        with contextlib.suppress(sqlite3.Error, OSError, diskcache.Timeout):
            self.cache.delete(key)

    def set_many(self, entries: Iterable[tuple[str, tuple[Any, str]]]) -> None:
        """(key, (value, tag)) pairs, in one transaction: the rows `Cache.set` writes, by one statement
        for the batch (diskcache's `set` is a SELECT, an INSERT and its bookkeeping per entry)."""
        import diskcache

        try:
            replaced = self._write_rows(entries)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:  # Timeout: another writer held the lock
            raise CacheWriteError(f"cannot write to the cache {self.folder}: {exc or type(exc).__name__}") from None
        for name in replaced:
            self.disk.remove(name)

    def _write_rows(self, entries: Iterable[tuple[str, tuple[Any, str]]]) -> list[str]:
        """Store the values and write their rows; returns the value files of the rows replaced. When
        nothing is written, the value files made for large answers are removed too."""
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        try:
            for key, (value, tag) in entries:
                rows.append((key, now, now, tag, *self.disk.store(value, False, key=key)))
            with self.cache.transact():
                con = self.cache._con  # this thread's connection, in the transaction
                try:
                    con.executemany(*_insert(rows))  # the usual batch: each a call's first answer
                    return []
                except sqlite3.IntegrityError:  # a key already there: a refresh, a damaged entry called again
                    return _replace_rows(con, rows)
        except BaseException:
            for row in rows:
                if row[6] is not None:  # row[6]: its value file's name
                    self.disk.remove(row[6])
            raise

    def __len__(self) -> int:
        try:
            return len(self.cache)
        except sqlite3.Error:
            return 0

    def per_model(self) -> dict[str, tuple[int, int]]:
        return _per_model(self.cache._sql, self.db)

    def volume(self) -> int:
        try:
            return self.cache.volume()
        except sqlite3.Error as exc:
            raise _damaged_db(self.db, exc) from None

    def clear(self, model: str | None) -> int:
        try:
            return self.cache.clear() if model is None else self.cache.evict(model)
        except sqlite3.Error as exc:
            raise _damaged_db(self.db, exc) from None

    def close(self) -> None:
        self.cache.close()


class _ReadOnlyStore:
    """The cache database opened read-only through SQLite's URI (`mode=ro`, and `immutable=1`
    when no write-ahead log is pending, so not even a lock or a -shm file is written); values
    are read with diskcache's own Disk. No folder, or no database, is an empty cache."""

    def __init__(self, folder: Path):
        self.folder, self.db = folder, folder / DB_NAME
        self.con: sqlite3.Connection | None = None
        if not self.db.is_file():
            return
        from .safe_disk import SafeDisk

        self.disk = SafeDisk(str(folder))
        self.lock = threading.Lock()  # one connection, shared by the hub's threads
        # A -wal or -shm file means a writer is (or was, and crashed) at work: read through SQLite's
        # locks. Without them, no connection is open: immutable reads take no lock and write nothing.
        active = any((folder / (DB_NAME + suffix)).exists() for suffix in ("-wal", "-shm"))
        uri = self.db.resolve().as_uri()
        for query in (("mode=ro",) if active else ()) + ("mode=ro&immutable=1",):
            try:
                con = sqlite3.connect(f"{uri}?{query}", uri=True, check_same_thread=False)
                con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as exc:
                if query.endswith("immutable=1"):
                    raise SpecError(str(self.db), f"cannot open the cache database read-only ({exc})",
                                    hint="check the folder's permissions, or pass --cache-dir DIR") from None
                warn(f"cache {folder}: its write-ahead log cannot be read here ({exc}); "
                     "reading the database without it")
                continue
            except sqlite3.DatabaseError as exc:
                raise _damaged_db(self.db, exc) from None
            self.con = con
            break
        try:
            self.con.execute("SELECT rowid, key, raw, mode, filename, value, tag FROM Cache LIMIT 1").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise _damaged_db(self.db, exc) from None
            self.con.close()  # an empty database: no entries
            self.con = None
        except sqlite3.DatabaseError as exc:
            raise _damaged_db(self.db, exc) from None

    def get(self, key: str) -> Any:
        if self.con is None:
            return None
        with self.lock:
            return _read_entry(self.con.execute, self.disk, key)

    def set_many(self, entries: Iterable[tuple[str, tuple[Any, str]]]) -> None:
        raise CacheWriteError(f"the cache {self.folder} is open read-only")

    def __len__(self) -> int:
        if self.con is None:
            return 0
        try:
            with self.lock:
                return self.con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
        except sqlite3.Error:
            return 0

    def per_model(self) -> dict[str, tuple[int, int]]:
        return {} if self.con is None else _per_model(self.con.execute, self.db)

    def volume(self) -> int:
        if self.con is None:
            return 0
        try:
            (pages,), (page_size,) = (self.con.execute(f"PRAGMA {p}").fetchone() for p in ("page_count", "page_size"))
            (files,) = self.con.execute("SELECT COALESCE(SUM(size), 0) FROM Cache").fetchone()
        except sqlite3.Error as exc:
            raise _damaged_db(self.db, exc) from None
        return pages * page_size + files

    def clear(self, model: str | None) -> int:
        raise CacheWriteError(f"the cache {self.folder} is open read-only")

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

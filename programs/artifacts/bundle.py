"""Cache bundles: exactly the calls one run used, to hand to someone who replays it offline."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import SpecError, first_clause
from ..lang.yaml_lines import has_surrogate
from ..models.cache import CallCache, default_cache_dir, entry_problem, failure_problem, warn
from .rundata import finished_run_manifest
from .store import ARTIFACTS, DAMAGED_RUN, refuse_replacing


def run_call_keys(run_dir: Path) -> list[str]:
    """Every call key a run read or made: its call_keys.txt; for a run made before that file, the
    calls its artifacts list (each line's provenance `calls`, a loop's `iterations`, failures.jsonl)."""
    log = run_dir / ARTIFACTS["call_keys"]
    if log.is_file():
        return list(dict.fromkeys(_logged_keys(log)))
    keys: dict[str, None] = {}
    for path in _artifact_files(run_dir):
        for record in _records(path, strict=True):
            for call in _calls(record):
                keys.setdefault(call["key"])
    return list(keys)


def recorded_calls(run_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """A run's calls by (stage, item), to explain a replay miss against it (damaged lines skipped)."""
    index: dict[tuple[str, str], list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, str]] = set()  # a call is listed by every line downstream of it: once here
    for path in _artifact_files(run_dir):
        for record in _records(path, strict=False):
            for call in _calls(record):
                if "item" in call and (call["stage"], call["item"], call["key"]) not in seen:
                    seen.add((call["stage"], call["item"], call["key"]))
                    index.setdefault((call["stage"], call["item"]), []).append(call)
    return index


def _logged_keys(log: Path) -> Iterator[str]:
    """The keys of a call_keys.txt, each line checked (a damaged file is a SpecError at its line)."""
    with log.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            key = raw.rstrip(b"\n").decode("ascii", errors="replace")
            if len(key) != 64 or not set(key) <= KEY_CHARS:
                raise SpecError(str(log), "not a call key (64 hex digits)", line=number,
                                hint=DAMAGED_RUN)
            yield key


def _artifact_files(run_dir: Path) -> list[Path]:
    """A run folder's JSON-lines artifacts (the spec's outputs and failures.jsonl), in name order."""
    return sorted(path for path in run_dir.glob("*.jsonl") if path.is_file())


def _records(path: Path, strict: bool) -> Iterator[Any]:
    """The JSON lines of a run artifact; a line that is not JSON is a SpecError (strict) or skipped."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                if strict:
                    raise SpecError(str(path), f"not a JSON line ({exc})", line=number,
                                    hint=DAMAGED_RUN) from None


def _calls(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "key" in value and "model" in value and "stage" in value:
            yield value
        for child in value.values():
            yield from _calls(child)
    elif isinstance(value, list):
        for child in value:
            yield from _calls(child)


GZIP_MAGIC = b"\x1f\x8b"
KEY_CHARS = set("0123456789abcdef")


def _read_lines(bundle: Path) -> Iterator[tuple[int, str]]:
    """A bundle's lines (gzip by its .gz suffix), each located; any unreadable byte is a SpecError."""
    try:
        with bundle.open("rb") as handle:
            head = handle.read(2)
    except OSError as exc:
        raise SpecError(str(bundle), f"cannot read the bundle: {exc.strerror or exc}") from None
    compressed = bundle.suffix == ".gz"
    if compressed and head != GZIP_MAGIC:
        raise SpecError(str(bundle), "not gzip-compressed, though its name ends in .gz",
                        hint="pass the file `codeclm cache export RUN_DIR FILE.gz` wrote, or rename a plain "
                             "JSONL bundle to .jsonl")
    number = 0
    try:
        with (gzip.open(bundle, "rb") if compressed else bundle.open("rb")) as handle:
            for number, raw in enumerate(handle, start=1):
                yield number, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(bundle), f"not a codeclm cache bundle: byte {exc.start} of this line is not UTF-8",
                        line=number, hint="pass a file written by `codeclm cache export`") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise SpecError(str(bundle), f"the gzip stream is truncated or damaged ({exc})", line=number or None,
                        hint="copy the bundle again, or export it again with `codeclm cache export`") from None
    except OSError as exc:
        raise SpecError(str(bundle), f"cannot read the bundle: {exc.strerror or exc}", line=number or None) from None


def _record(bundle: Path, number: int, line: str) -> tuple[str, dict[str, Any]]:
    """One bundle line as (key, entry), or a SpecError saying what is wrong with it."""
    def bad(why: str) -> SpecError:
        return SpecError(str(bundle), f"not a codeclm cache bundle line: {why}", line=number,
                         hint="pass a file written by `codeclm cache export`")

    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"invalid JSON ({exc.msg}{'; the file may be truncated' if not line.endswith(chr(10)) else ''})") \
            from None
    except RecursionError:
        raise bad("JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python reads
        raise bad(first_clause(exc)) from None
    if not isinstance(record, dict) or set(record) != {"key", "entry"}:
        raise bad('expected {"key": ..., "entry": ...}')
    key, entry = record["key"], record["entry"]
    if not isinstance(key, str) or len(key) != 64 or not set(key) <= KEY_CHARS:
        raise bad("the key is not a call key (64 hex digits)")
    problem = failure_problem(entry) if isinstance(entry, dict) and "error" in entry else entry_problem(entry)
    if problem:
        raise bad(f"the entry has {problem}" if problem.startswith("no ") else f"the entry is {problem}")
    if has_surrogate(json.dumps(entry, ensure_ascii=False)):
        raise bad("the entry holds a lone surrogate (a \\ud800-\\udfff escape), not valid Unicode")
    return key, entry


def export_bundle(run_dir: Path, bundle: Path, cache_dir: Path | None = None) -> int:
    manifest = finished_run_manifest(run_dir)
    options = manifest.get("options")
    recorded = options.get("cache_dir") if isinstance(options, dict) else None
    if cache_dir is None and not isinstance(recorded, str):
        raise SpecError(str(run_dir / ARTIFACTS["manifest"]), "the manifest names no cache folder",
                        hint="pass --cache-dir DIR")
    keys = run_call_keys(run_dir)
    cache = CallCache(cache_dir or Path(recorded), "read")  # read-only: an export never writes the cache
    count = skipped = 0
    try:
        lines = []
        for key in keys:
            entry = cache.peek(key)
            if entry is None:  # a call that failed replays as a failure
                entry = cache.failure(key)
            if entry is None:
                continue
            line = json.dumps({"key": key, "entry": entry}, ensure_ascii=False) + "\n"
            if has_surrogate(line):
                skipped += 1
                continue
            lines.append(line)
            count += 1
    finally:
        cache.close()
    if skipped:
        warn(f"{skipped} entries hold text that is not valid Unicode; left out of the bundle")
    refuse_replacing(bundle, _is_bundle, "a codeclm cache bundle",
                     "pass a new path (or a bundle `codeclm cache export` wrote)")
    if not lines:  # no file: an empty one would look like no bundle to the next export, which refuses it
        return 0
    tmp = bundle.with_name(f".{bundle.name}.tmp")
    try:
        with (gzip.open(tmp, "wt", encoding="utf-8") if bundle.suffix == ".gz"
              else tmp.open("w", encoding="utf-8")) as out:
            out.writelines(lines)
        os.replace(tmp, bundle)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SpecError(str(bundle), f"cannot write the bundle: {exc.strerror or exc}",
                        hint="pass a path in a writable folder") from None
    return count


def _is_bundle(path: Path) -> bool:
    """Whether an existing file is a bundle `cache export` wrote (its first line is a call)."""
    try:
        with path.open("rb") as raw:
            head = raw.read(2)
        with (gzip.open(path, "rb") if head == b"\x1f\x8b" else path.open("rb")) as handle:
            first = json.loads(handle.readline(1 << 20))
        return isinstance(first, dict) and set(first) == {"key", "entry"}
    except (OSError, EOFError, ValueError):
        return False


class Imported(NamedTuple):
    calls: int  # the bundle's calls, every one stored
    new: int  # of them, those the cache held nothing for before (the others were there already)


def import_bundle(bundle: Path, cache_dir: Path | None = None) -> Imported:
    """Check every line first, then store them: a damaged bundle imports nothing. Counts the calls
    that are new to the cache, so that importing the same bundle twice says nothing was added."""
    records = [_record(bundle, number, line) for number, line in _read_lines(bundle) if line.strip()]
    cache = CallCache(cache_dir or default_cache_dir())
    new = 0
    try:
        for key, entry in records:
            model = str(entry.get("model") or "?")
            if "error" in entry:
                new += cache.failure(key) is None
                cache.put_failure(key, model, entry["error"], strict=True)
            else:
                new += cache.peek(key) is None
                cache.put(key, model, entry, strict=True)
    finally:
        cache.close()
    return Imported(len(records), new)

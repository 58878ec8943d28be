"""Cache bundles: exactly the calls one run used, to hand to someone who replays it offline."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .cache import CallCache, default_cache_dir
from .errors import SpecError
from .store import ARTIFACTS


def run_call_keys(run_dir: Path) -> list[str]:
    """Every call key recorded in a run's artifacts (each record lists the calls behind it)."""
    keys: dict[str, None] = {}
    for artifact in ("metadata", "pool", "rubrics", "instructions"):
        path = run_dir / ARTIFACTS[artifact]
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    for call in _calls(json.loads(line)):
                        keys.setdefault(call["key"])
    return list(keys)


def recorded_calls(run_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """A run's calls by (stage, item), to explain a replay miss against it."""
    index: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for artifact in ("metadata", "rubrics", "instructions"):
        path = run_dir / ARTIFACTS[artifact]
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    for call in _calls(json.loads(line)):
                        if "item" in call:
                            index.setdefault((call["stage"], call["item"]), []).append(call)
    return index


def _calls(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "key" in value and "model" in value and "stage" in value:
            yield value
        for child in value.values():
            yield from _calls(child)
    elif isinstance(value, list):
        for child in value:
            yield from _calls(child)


def _open(path: Path, mode: str) -> IO[str]:
    return gzip.open(path, mode + "t", encoding="utf-8") if path.suffix == ".gz" else path.open(mode, encoding="utf-8")


def export_bundle(run_dir: Path, bundle: Path, cache_dir: Path | None = None) -> int:
    if not (run_dir / ARTIFACTS["manifest"]).is_file():
        raise SpecError(str(run_dir), "not a finished run directory (no manifest.json)")
    manifest = json.loads((run_dir / ARTIFACTS["manifest"]).read_text())
    cache = CallCache(cache_dir or Path(manifest["options"]["cache_dir"]))
    count = 0
    with _open(bundle, "w") as out:
        for key in run_call_keys(run_dir):
            entry = cache.peek(key)
            if entry is not None:
                out.write(json.dumps({"key": key, "entry": entry}, ensure_ascii=False) + "\n")
                count += 1
    cache.close()
    return count


def import_bundle(bundle: Path, cache_dir: Path | None = None) -> int:
    cache = CallCache(cache_dir or default_cache_dir())
    count = 0
    with _open(bundle, "r") as source:
        for number, line in enumerate(source, start=1):
            try:
                record = json.loads(line)
                entry = record["entry"]
                cache.put(record["key"], entry.get("model", "?"), entry)
            except (ValueError, KeyError, TypeError):
                raise SpecError(str(bundle), "not a codeclm cache bundle line", line=number) from None
            count += 1
    cache.close()
    return count

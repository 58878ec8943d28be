"""Read seed instructions: JSONL, CSV or plain text (one instruction per line)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .errors import SpecError


def read_seeds(path: Path, field: str = "instruction", id_field: str | None = "id",
               limit: int | None = None) -> list[dict[str, Any]]:
    """Seeds as [{id, instruction}], ids stable across runs (the record's id, else its position)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), "seed file not found", hint="set seeds.path in the spec or pass --seeds")
    suffix = path.suffix.lower()
    reader = _jsonl if suffix in (".jsonl", ".json") else _csv if suffix == ".csv" else _text
    seeds = []
    ids: set[str] = set()
    for line, record in reader(path, field, id_field):
        seed_id = str(record.get("id") or f"s{len(seeds):05d}")
        if seed_id in ids:
            raise SpecError(str(path), f"duplicate seed id {seed_id!r}", line=line, hint="ids must be unique")
        ids.add(seed_id)
        seeds.append({"id": seed_id, "instruction": record["instruction"], "line": line})
        if limit is not None and len(seeds) >= limit:
            break
    if not seeds:
        raise SpecError(str(path), "no seed instructions found", hint=f"one record per line with a '{field}' field")
    return seeds


def _jsonl(path: Path, field: str, id_field: str | None):
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecError(str(path), f"invalid JSON: {exc.msg}", line=number,
                                hint="one JSON object per line") from None
            yield number, _pick(record, field, id_field, path, number)


def _csv(path: Path, field: str, id_field: str | None):
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or field not in rows.fieldnames:
            raise SpecError(str(path), f"CSV header has no column '{field}'", line=1,
                            hint=f"columns: {', '.join(rows.fieldnames or [])}; set seeds.field")
        for row in rows:
            yield rows.line_num, _pick(row, field, id_field, path, rows.line_num)


def _text(path: Path, field: str, id_field: str | None):
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, {"instruction": text.strip()}


def _pick(record: Any, field: str, id_field: str | None, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise SpecError(str(path), "a seed record must be an object", line=line)
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(str(path), f"record has no text in field '{field}'", line=line,
                        hint=f"fields here: {', '.join(record)}; set seeds.field in the spec")
    return {"instruction": value.strip(), "id": record.get(id_field) if id_field else None}

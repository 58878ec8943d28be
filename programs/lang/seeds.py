"""Read seed instructions: JSONL, CSV or plain text (one instruction per line).

Seed and benchmark files must be UTF-8 text (a leading BOM is fine). A byte that is not
UTF-8, or a JSON string escape that makes a lone surrogate (`"\\ud800"`), stops the
read with a SpecError naming the file, the line and the byte offset (exit 2): the whole file
is refused rather than the one seed, so what a run reads never depends on how a broken
byte happened to fall. Nothing downstream (cache keys, JSONL artifacts, HTTP bodies) ever
sees text that is not valid Unicode.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError, first_clause
from .yaml_lines import check_path_text, has_surrogate


@dataclass(frozen=True)
class FileKind:
    """What a file is read as, for its errors: its name, its records', and how the command that reads
    it is given another file (a spec's source, `replay`'s recorded seeds, `evaluate`'s argument)."""

    name: str
    records: str
    fix: str
    spec_read: bool = True
    """Read by a spec's source node, whose fields:, id_field: and records: are remedies; evaluate has none."""


SEED_FILE = FileKind("seed file", "seed instructions",
                     "set the source node's path: (relative to the spec), or pass --seeds FILE")
BENCHMARK_FILE = FileKind("benchmark file", "benchmark items",
                          "name a JSONL file of benchmark items (one object a line, with an 'instruction' field) "
                          "as evaluate's BENCHMARKS argument", spec_read=False)


def recorded_seed_file(path: Path) -> FileKind:
    """The seed file a recorded run read (`run --seeds`), as `replay` reads it again: no option names another."""
    return FileKind("seed file", "seed instructions",
                    f"put the file the run read back at {path}: a replay reads the run's own seeds")


def read_seeds(path: Path, field: str = "instruction", id_field: str | None = "id",
               limit: int | None = None, kind: FileKind = SEED_FILE) -> list[dict[str, Any]]:
    """Seeds as [{id, instruction}], ids stable across runs (the record's id, else its position)."""
    path = Path(path)
    check_file(path, kind)
    seeds = [{"id": seed_id, "instruction": texts[field], "line": line}
             for line, seed_id, texts in _iter_rows(path, (field,), id_field, limit, kind)]
    if not seeds:
        raise _no_records(path, field, kind)
    return seeds


def check_file(path: Path, kind: FileKind = SEED_FILE) -> None:
    """A seed (or benchmark) file that is there, a regular file and readable."""
    check_path_text(path, kind.name)
    if path.exists() and not path.is_file():
        raise SpecError(str(path), f"not a regular file (a folder, a pipe or a device): not a {kind.name}",
                        hint=kind.fix)
    if not path.is_file():
        raise SpecError(str(path), f"{kind.name} not found", hint=kind.fix)
    try:
        path.open("rb").close()
    except OSError as exc:
        raise SpecError(str(path), f"cannot read file: {exc.strerror}", hint="check its permissions") from None


def _no_records(path: Path, field: str, kind: FileKind) -> SpecError:
    return SpecError(str(path), f"no {kind.records} found", hint=f"one record per line, with the field '{field}'")


def _iter_rows(path: Path, fields: tuple[str, ...], id_field: str | None, limit: int | None,
               kind: FileKind = SEED_FILE) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line, id, {field: text}) for each record, one at a time (only the ids seen stay in memory);
    every field of a record is read and checked in the one pass over the file."""
    ids: set[str] = set()
    for line, given_id, texts in _reader(path)(path, fields, id_field, kind):
        seed_id = str(given_id or f"s{len(ids):05d}")
        if seed_id in ids:
            raise SpecError(str(path), f"duplicate seed id {seed_id!r}", line=line, hint="ids must be unique")
        ids.add(seed_id)
        yield line, seed_id, texts
        if limit is not None and len(ids) >= limit:
            break


JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


Reader = Callable[[Path, tuple[str, ...], str | None, "FileKind"], Iterator[tuple[int, Any, dict[str, str]]]]


def _reader(path: Path) -> Reader:
    """The reader for the file's kind, by its suffix: JSONL, CSV, else text (one record per line).
    Each yields (line, the record's id or None, {field: text})."""
    suffix = path.suffix.lower()
    return _jsonl if suffix in JSONL_SUFFIXES else _csv if suffix == ".csv" else _text


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # universal newlines: \n, \r\n, and a lone \r end a line


def _lines(path: Path) -> Iterator[str]:
    """The file's lines, each decoded as strict UTF-8 (ends kept); a bad byte is a located SpecError."""
    offset, number = 0, 0
    with path.open("rb") as handle:
        for chunk in handle:
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                chunk, offset = chunk[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            for raw in _LONE_CR.split(chunk) if b"\r" in chunk else (chunk,):
                if not raw:
                    continue
                number += 1
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise SpecError(str(path), f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset "
                                               f"{offset + exc.start} (column {exc.start + 1})", line=number,
                                    hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
                offset += len(raw)


def _jsonl(path: Path, fields: tuple[str, ...], id_field: str | None, kind: FileKind):
    for number, text in enumerate(_lines(path), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as exc:
            raise SpecError(str(path), f"field '{exc}' is given twice in this record", line=number,
                            hint="keep one of them: JSON readers disagree on which one wins") from None
        except json.JSONDecodeError as exc:
            raise SpecError(str(path), f"invalid JSON: {exc.msg}", line=number,
                            hint="one JSON object per line") from None
        except RecursionError:
            raise SpecError(str(path), "JSON nested too deeply", line=number, hint="one flat object per line") from None
        except ValueError as exc:  # an integer of more digits than Python reads
            raise SpecError(str(path), f"unreadable JSON: {first_clause(exc)}", line=number,
                            hint="quote the number if it is text") from None
        yield number, *_pick(record, fields, id_field, path, number, kind)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _csv(path: Path, fields: tuple[str, ...], id_field: str | None, kind: FileKind):
    rows = csv.DictReader(_lines(path), strict=True)  # strict: an unclosed quote is an error, not the rest of the file
    last = 0  # where the last good row (or the header) ended: a bad row starts on the next line
    try:
        missing = [field for field in fields if field not in (rows.fieldnames or [])]
        if missing:
            raise SpecError(str(path), f"CSV header has no column '{missing[0]}'", line=1,
                            hint=f"columns: {', '.join(rows.fieldnames or [])}; "
                                 + _take_field(kind, "column"))
        twice = sorted({name for name in rows.fieldnames if rows.fieldnames.count(name) > 1})
        if twice:
            raise SpecError(str(path), f"CSV header names column '{twice[0]}' twice", line=1,
                            hint="rename or remove one of the columns")
        last = rows.line_num
        for row in rows:
            _check_width(row, len(rows.fieldnames), path, rows.line_num)
            yield rows.line_num, *_pick(row, fields, id_field, path, rows.line_num, kind)
            last = rows.line_num
    except csv.Error as exc:
        raise SpecError(str(path), f"invalid CSV: {exc}", line=last + 1,
                        hint="check the quotes of the record starting on this line") from None


def _check_width(row: dict[str | None, Any], columns: int, path: Path, line: int) -> None:
    """Refuse a row of more or fewer values than the header has columns: an unquoted comma (or a
    missing one) shifts values into the wrong fields. DictReader files extra values under the key
    None and reads a missing one as None."""
    values = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
    if values != columns:
        raise SpecError(str(path), f"{values} value{'s' * (values != 1)} for {columns} columns", line=line,
                        hint='quote a value that holds a comma ("What is up, then?"), so that each row has '
                             "one value per column")


def _text(path: Path, fields: tuple[str, ...], id_field: str | None, kind: FileKind):
    first = True
    for number, text in enumerate(_lines(path), start=1):
        if text.strip():  # the line is the one field (stream_records refuses several), whatever its name
            if first:
                _refuse_json_lines(path, text, number)
                first = False
            yield number, None, dict.fromkeys(fields, text.strip())


def _refuse_json_lines(path: Path, text: str, line: int) -> None:
    """A text file whose first record is a JSON object is JSONL under another name (`.txt`, none):
    read as text, every prompt would be the raw JSON line, and paid for. Refused rather than read as
    JSONL, since the suffix is all that tells the two apart and a guess either way could be wrong."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return
    if isinstance(record, dict):
        raise SpecError(str(path), "a text file (one record per line), but its first line is a JSON object: "
                                   "read as text, each record would be the whole JSON line", line=line,
                        hint=f"rename it to {path.stem}.jsonl to read it as JSONL (one object per line)")


def _pick(record: Any, fields: tuple[str, ...], id_field: str | None, path: Path,
          line: int, kind: FileKind) -> tuple[Any, dict[str, str]]:
    """(id or None, {field: text}) of one record, each field checked as a seed's text."""
    if not isinstance(record, dict):
        raise SpecError(str(path), f"a record must be an object, not {_kind_of(record)}", line=line,
                        hint=f'one JSON object per line, e.g. {{"{fields[0]}": "..."}}')
    texts = {field: _text_field(record, field, path, line, kind) for field in fields}
    seed_id = record.get(id_field) if id_field else None
    if seed_id is not None and (isinstance(seed_id, bool) or not isinstance(seed_id, (str, int, float))):
        raise SpecError(str(path), f"id field '{id_field}' holds a {type(seed_id).__name__}: an id is text or a "
                        "number", line=line,
                        hint="give each record a plain id" + (", or set the source node's id_field" * kind.spec_read))
    if isinstance(seed_id, str) and has_surrogate(seed_id):
        raise _surrogate(path, f"id field '{id_field}'", line)
    return seed_id, texts


def _kind_of(value: Any) -> str:
    """A JSON value's kind, as a user wrote it."""
    return {list: "a list", str: "text", bool: "true or false", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else f"a {type(value).__name__}")


def _text_field(record: dict[str, Any], field: str, path: Path, line: int, kind: FileKind) -> str:
    value = record.get(field)
    if field in record and value is not None and not isinstance(value, str):
        held = _kind_of(value)
        raise SpecError(str(path), f"field '{field}' holds {held}, not text: a {kind.name}'s fields are text",
                        line=line, hint="write it as text in the file (quoted, in JSON)" + (
                            ", or write the records in the spec (records:), where a field may hold any YAML value"
                            * kind.spec_read))
    if field in record and (value is None or not value.strip()):
        raise SpecError(str(path), f"field '{field}' is empty", line=line,
                        hint=f"give the record text in '{field}', or leave the record out")
    if not isinstance(value, str):
        raise SpecError(str(path), f"record has no text in field '{field}'", line=line,
                        hint=f"fields here: {', '.join(map(str, record))}; "
                             + _take_field(kind, "field"))
    if has_surrogate(value):
        raise _surrogate(path, f"field '{field}'", line)
    return value.strip()


def _take_field(kind: FileKind, unit: str) -> str:
    """How to have another field (or column) read as the text: only a spec's source node can map one."""
    if kind.spec_read:
        return f"map one in the source node's fields: (e.g. fields: {{instruction: {unit.upper()}}})"
    return (f"a {kind.name} is read by its {unit} 'instruction' and no other: rename the {unit} that holds "
            "the instructions to 'instruction', in a copy of the file")


def _surrogate(path: Path, what: str, line: int) -> SpecError:
    return SpecError(str(path), f"{what} holds a lone surrogate (a \\ud800-\\udfff escape), not valid Unicode",
                     line=line, hint="remove the escape, or write the character itself")


def read_records(path: Path, fields: dict[str, str], id_field: str | None = "id",
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Records with one or more text fields: [{id, NAME: text, ...}] for `fields` {NAME: file field},
    each field checked as `read_seeds` checks a seed's instruction."""
    return list(stream_records(path, fields, id_field, limit)[1])


def stream_records(path: Path, fields: dict[str, str], id_field: str | None = "id",
                   limit: int | None = None) -> tuple[int, Iterator[dict[str, Any]]]:
    """`read_records` for a file of any size: every field of every row is checked now (the same
    errors, before anything runs), then the rows are read again one at a time as they are used, so
    memory does not grow with the file. Returns the row count and the rows."""
    path = Path(path)
    check_file(path)
    _check_one_field(path, list(fields.values()))
    file_fields = tuple(dict.fromkeys(fields.values()))
    count = sum(1 for _ in _iter_rows(path, file_fields, id_field, limit))
    if not count:
        raise _no_records(path, file_fields[0], SEED_FILE)

    def rows() -> Iterator[dict[str, Any]]:
        for _, seed_id, texts in _iter_rows(path, file_fields, id_field, limit):
            yield {"id": seed_id, **{name: texts[field] for name, field in fields.items()}}

    return count, rows()


def _check_one_field(path: Path, file_fields: list[str]) -> None:
    """A text file's line is one field: read for several, it filled each with the whole line."""
    if _reader(path) is _text and len(set(file_fields)) > 1:  # one field read under two names is fine
        names = ", ".join(dict.fromkeys(file_fields))
        raise SpecError(str(path), f"a text file gives one field per line, and the source reads "
                                   f"{len(file_fields)} ({names})",
                        hint=f"write the records as JSONL (fields {names}) or CSV (columns {names}), "
                             "or declare one field in the source node's fields:")

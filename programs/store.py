"""The run directory: artifacts written so a crash never leaves a file a rerun trusts.

Finished files are written to a temporary name and renamed into place (atomic). While a
run is going, instruction histories stream to a `.partial` journal, so memory stays flat;
the journal is sorted into the final files at the end, giving the same bytes whatever
order items finished in.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from .errors import SpecError

ARTIFACTS = {
    "dataset": "dataset.jsonl",  # kept (instruction, response) pairs in chat format, with provenance
    "metadata": "metadata.jsonl",  # encoded seeds (or hand-written metadata)
    "pool": "pool.jsonl",  # the augmented metadata pool
    "rubrics": "rubrics.jsonl",  # rubrics and actions per metadata entry
    "instructions": "instructions.jsonl",  # every instruction's history: kept, dropped, failed
    "dataset_info": "dataset_info.json",  # LLaMA-Factory's description of dataset.jsonl
    "manifest": "manifest.json",
}


def read_artifact(run_dir: Path, artifact: str) -> list[dict[str, Any]]:
    """The records of a finished run's JSONL artifact."""
    path = Path(run_dir) / ARTIFACTS[artifact]
    if not path.is_file():
        raise SpecError(str(path), "not found: is this a finished run directory?",
                        hint="pass the folder `codeclm run` wrote, e.g. runs/demo")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RunStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("manifest", *(a for a in ARTIFACTS if a != "manifest")):  # the manifest first:
            self.path(name).unlink(missing_ok=True)  # a folder without one is never taken as finished
        self._journal: TextIO | None = None
        self.failure_reasons: Counter = Counter()  # "stage: error" -> instructions that failed so

    def path(self, artifact: str) -> Path:
        return self.folder / ARTIFACTS[artifact]

    def write_jsonl(self, artifact: str, records: Iterable[dict[str, Any]]) -> None:
        write_atomic(self.path(artifact), "".join(dumps(r) + "\n" for r in records))

    def write_dataset_info(self, name: str) -> None:
        """Lets LLaMA-Factory train on the run folder as it is: `dataset_dir: RUN_DIR`, `dataset: NAME`."""
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
        self.write_json("dataset_info", {name: {"file_name": ARTIFACTS["dataset"], "formatting": "sharegpt",
                                                "columns": {"messages": "messages"}, "tags": tags}})

    def write_json(self, artifact: str, value: Any) -> None:
        write_atomic(self.path(artifact), json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")

    # -- the instruction journal -----------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.folder / "instructions.jsonl.partial"

    def open_journal(self) -> None:
        self._journal = self.journal_path.open("w", encoding="utf-8")  # a rerun rebuilds it from the cache

    def append(self, history: dict[str, Any]) -> None:
        assert self._journal is not None
        self._journal.write(dumps(history) + "\n")
        self._journal.flush()

    def finish_journal(self, keep_limit: int | None) -> dict[str, int]:
        """Sort the journal into instructions.jsonl and dataset.jsonl; return counts by status."""
        assert self._journal is not None
        self._journal.close()
        index = []  # (id, offset): only keys and offsets in memory, not the records
        with self.journal_path.open("rb") as handle:
            offset = 0
            for line in handle:
                index.append((json.loads(line)["id"], offset))
                offset += len(line)
        index.sort()
        counts: dict[str, int] = {}
        kept = 0
        with self.journal_path.open("rb") as source, \
                self._atomic_lines("instructions") as histories, self._atomic_lines("dataset") as dataset:
            for _, offset in index:
                source.seek(offset)
                history = json.loads(source.readline())
                status = history["status"]
                if status == "kept" and keep_limit is not None and kept >= keep_limit:
                    history["status"] = status = "over_limit"
                counts[status] = counts.get(status, 0) + 1
                if status == "failed" and history.get("failure"):
                    failure = history["failure"]
                    self.failure_reasons[f"{failure['stage']}: {failure['error']}"[:160]] += 1
                histories.write(dumps(history) + "\n")
                if status == "kept":
                    kept += 1
                    dataset.write(dumps(history["record"]) + "\n")
        self.journal_path.unlink()
        return counts

    def _atomic_lines(self, artifact: str) -> _AtomicFile:
        return _AtomicFile(self.path(artifact))


class _AtomicFile:
    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")

    def __enter__(self) -> TextIO:
        self.handle = self.tmp.open("w", encoding="utf-8")
        return self.handle

    def __exit__(self, kind, value, traceback) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

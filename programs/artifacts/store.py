"""The run directory: artifacts written so a crash never leaves a file a rerun trusts.

Finished files are written to a temporary name and renamed into place (atomic). While a
run is going, each output's records stream to a `.partial` journal, so memory stays flat;
each journal is sorted into its final file at the end, giving the same bytes whatever
order records finished in.

A run writes only into a folder that is new, empty or one of codeclm's own runs (marked by
`.codeclm-run`, or a codeclm manifest), never into the root, the home folder or the run a
replay checks; and it touches the folder only once it has something to write. The marker
lists the outputs codeclm wrote there: an output never replaces any other file, and once a
run finishes, the files of earlier runs it did not write again go. While it writes, a run
holds the folder (an advisory lock), so a second run into it at once is refused.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from ..errors import SpecError, first_clause
from ..lang.nodes import RESERVED_OUTPUTS, path_like
from ..redact import redact_text
from .spill import OrderedSpill

ARTIFACTS = {
    "dataset": "dataset.jsonl",  # kept (instruction, response) pairs in chat format, with provenance
    "metadata": "metadata.jsonl",  # encoded seeds (or hand-written metadata)
    "pool": "pool.jsonl",  # the augmented metadata pool
    "rubrics": "rubrics.jsonl",  # rubrics and actions per metadata entry
    "instructions": "instructions.jsonl",  # every instruction's history: kept, dropped, failed
    "failures": "failures.jsonl",  # every record a node failed on, with its error and raw text (every spec)
    "dataset_info": "dataset_info.json",  # LLaMA-Factory's description of dataset.jsonl
    "call_keys": "call_keys.txt",  # the key of every model call the run read or made: what `cache export` bundles
    "manifest": "manifest.json",
}


DAMAGED_RUN = "the run folder is damaged: run the spec again to rewrite it"


def read_artifact(run_dir: Path, artifact: str) -> list[dict[str, Any]]:
    """The records of a finished run's JSONL artifact; a line that is not JSON is a SpecError at its line."""
    path = Path(run_dir) / ARTIFACTS[artifact]
    if not path.is_file():
        raise SpecError(str(path), "not found: is this a finished run directory?",
                        hint="pass the folder `codeclm run` wrote, e.g. runs/demo")
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                records.append(_json_line(path, raw, number))
    return records


def _json_line(path: Path, raw: bytes, number: int) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad bytes, bad JSON, nested past reading, huge integers
        raise SpecError(str(path), f"not a JSON line ({first_clause(exc)})", line=number,
                        hint=DAMAGED_RUN) from None


_encode_line = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # one encoder for every line


def dumps(record: Any) -> str:
    """One JSON line of an artifact, with keys masked (redact.py: the last line of defence)."""
    return redact_text(_encode_line(record))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two processes never share one
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


MARKER = ".codeclm-run"  # written first into every run folder: what makes a folder codeclm's own


def is_own_run(folder: Path) -> bool:
    """A folder codeclm wrote: it holds the marker, or (made before the marker) a run's manifest or an
    evaluation's eval.json."""
    if (folder / MARKER).is_file():
        return True
    for name, keys in ((ARTIFACTS["manifest"], {"spec", "code_sha256", "options", "calls"}),
                       ("eval.json", {"candidate", "reference", "judge", "summary"})):  # `codeclm evaluate`'s
        written = _json_or_none(folder / name)
        if isinstance(written, dict) and keys <= written.keys():
            return True
    return False


def check_out_folder(folder: Path, protect: Path | None = None) -> Path:
    """Where a run may write, checked without touching anything: a new folder, an empty one, or one of
    codeclm's own runs; never the filesystem root, the home folder, or `protect` (the run a replay checks).
    Returns the folder (with ~ expanded); raises SpecError (exit 2) naming the folder and the fix."""
    folder = Path(folder).expanduser()
    where = str(folder)
    fix = "choose another --out (a new or empty folder)"
    long = next((part for part in folder.parts if len(os.fsencode(part)) > 255), None)
    if long is not None:
        raise SpecError(where, f"the name {long[:40]}... is longer than a file name may be (255 bytes)",
                        hint=f"{fix}, or a shorter spec name:")
    resolved = folder.resolve()
    if resolved == Path(resolved.anchor):
        raise SpecError(where, "refusing to write a run into the filesystem root", hint=f"{fix}, e.g. runs/NAME")
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry: no home folder to protect
        home = None
    if resolved == home:
        raise SpecError(where, "refusing to write a run into your home folder", hint=f"{fix}, e.g. runs/NAME")
    if protect is not None and Path(protect).expanduser().is_dir() \
            and resolved == Path(protect).expanduser().resolve():
        raise SpecError(where, "this is the run being replayed: a replay never writes over the run it checks",
                        hint=f"{fix}; by default a replay writes RUN_DIR-replay")
    if folder.exists() and not folder.is_dir():
        raise SpecError(where, "the run folder is a file, not a folder", hint=fix)
    problem = unwritable_reason(resolved)
    if problem:
        raise SpecError(where, f"the run folder cannot be written: {problem}", hint=fix)
    if folder.is_dir() and not is_own_run(folder):
        try:
            empty = next(folder.iterdir(), None) is None
        except OSError as exc:
            raise SpecError(where, f"cannot read the run folder: {exc.strerror}", hint=fix) from None
        if not empty:
            here = " (the current folder)" if resolved == Path.cwd().resolve() else ""
            raise SpecError(where, f"the run folder{here} is not empty and is not a codeclm run: "
                            "a run never writes into a folder of files it did not make",
                            hint=f"{fix}, or empty this folder")
    return folder


def unwritable_reason(folder: Path) -> str | None:
    """Why `folder` could not be made or written, found before a run makes any call: a file where a
    parent folder belongs, a read-only place. None when it looks writable."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (permissions, or a read-only file system)"
    return None


def claim_folder(folder: Path, protect: Path | None = None) -> Path:
    """Checked again (the folder may have changed since the run started), made, and marked as codeclm's."""
    folder = check_out_folder(folder, protect)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        write_atomic(folder / MARKER, json.dumps({"written_by": "codeclm"}) + "\n")
    return folder


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _outputs_of(manifest: Path) -> set[str]:
    """The outputs a finished run's manifest says its spec declared (none if it cannot be read): a
    rerun into the folder with another spec removes those it does not write again."""
    try:
        outputs = _json_or_none(manifest)["spec"]["resolved"]["outputs"]
    except (KeyError, TypeError):
        return set()
    if not isinstance(outputs, dict):
        return set()
    # a name that is a path, or a file every run writes itself, is never an output's
    return {name for name in outputs if isinstance(name, str) and not path_like(name) and name not in RESERVED_OUTPUTS}


class RunStore:
    """A run folder. Creating one only checks the folder (see check_out_folder); the folder is made
    and claimed (marker written, the old manifest removed) at the first write, so a run that stops
    on a bad input before it has anything to write leaves the folder as it was."""

    def __init__(self, folder: Path, protect: Path | None = None):
        self.folder = check_out_folder(folder, protect)
        self.protect = protect
        self._claimed = False
        self._written: set[str] = set()
        self._journals: dict[str, _Journal] = {}
        self._index: dict[str, OrderedSpill] = {}  # each journal's line offsets, under the lines' orders
        self._call_log: BinaryIO | None = None
        self._earlier_files: set[str] = set()  # what codeclm had written in the folder before this run
        self._lock_fd: int | None = None

    def claim(self) -> None:
        """Make the folder ours before the first write: checked again (it may have changed since),
        marked, and the previous run's manifest removed, so a folder whose run is not finished is
        never taken as finished. The previous run's other artifacts are replaced one by one."""
        if self._claimed:
            return
        claim_folder(self.folder, self.protect)
        self.hold()
        self._earlier_files = self._own_files()
        self._list_owned(self._earlier_files)  # the manifest that also names them goes next
        self.path("manifest").unlink(missing_ok=True)
        self._claimed = True

    def hold(self) -> None:
        """Hold the folder for this run (an advisory lock on the folder itself, no file of its own): a
        second run into it at the same time, which would mix and delete each other's journals, is a
        SpecError. Taken before the run's first call when the folder exists (a rerun, a resume), else
        at its first write; the OS drops the lock when the process ends."""
        if self._lock_fd is not None or not self.folder.is_dir():
            return
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SpecError(str(self.folder), "another codeclm run is writing into this folder now",
                                hint="wait for it to finish, or choose another --out") from None
            return  # a file system without such locks (some network mounts): the run goes on unlocked
        self._lock_fd = fd

    def release(self) -> None:
        """Let another run write into the folder: this one is over (its manifest is written, or it stopped)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_outputs(self, names: Iterable[str]) -> None:
        """Before anything runs: no output may replace a file of the folder that codeclm did not
        write (a user's notes.jsonl beside a run, then an output named notes). SpecError (exit 2)."""
        if not self.folder.is_dir():
            return
        own = self._own_files()
        for name in names:
            path = self.path(name)
            if path.exists() and path.name not in own:
                raise SpecError(str(path), f"exists and codeclm did not write it: output '{name}' would replace it",
                                hint="move the file away, name the output otherwise, or choose another --out")

    def _own_files(self) -> set[str]:
        """Files of the folder codeclm wrote: its fixed artifacts, the outputs the marker lists, and those
        the last finished run's manifest declared (a folder from before the marker listed them)."""
        listed = _json_or_none(self.folder / MARKER)
        files = listed.get("files") if isinstance(listed, dict) else None
        return {*ARTIFACTS.values(), *(f for f in files or [] if isinstance(f, str) and not path_like(f)),
                *(self.path(name).name for name in _outputs_of(self.path("manifest")))}

    def _remove_stale(self) -> None:
        """The files earlier runs wrote that this one did not (another spec's outputs); the marker then
        lists this run's outputs only."""
        written = {self.path(artifact).name for artifact in self._written} | {ARTIFACTS["manifest"]}
        for name in self._earlier_files - written:
            (self.folder / name).unlink(missing_ok=True)
        marker = _json_or_none(self.folder / MARKER)
        if isinstance(marker, dict) and "files" in marker:
            outputs = sorted(name for name in written if name not in ARTIFACTS.values())
            write_atomic(self.folder / MARKER, json.dumps({**marker, "files": outputs}) + "\n")

    def _owned(self, artifact: str) -> None:
        """Note in the marker that codeclm writes this output's file, before it is written."""
        self._list_owned({self.path(artifact).name})

    def _list_owned(self, names: set[str]) -> None:
        """Add output files to the marker's list (a folder from before the list: those its manifest
        named, kept when a rerun removes that manifest and then stops before writing its own)."""
        names = {name for name in names if name not in ARTIFACTS.values()}
        marker = _json_or_none(self.folder / MARKER)
        marker = marker if isinstance(marker, dict) else {"written_by": "codeclm"}
        files = {f for f in marker.get("files") or [] if isinstance(f, str)}
        if not names <= files:
            write_atomic(self.folder / MARKER, json.dumps({**marker, "files": sorted(files | names)}) + "\n")

    def path(self, artifact: str) -> Path:
        """A known artifact's file, else an output's: NAME.jsonl."""
        return self.folder / ARTIFACTS.get(artifact, f"{artifact}.jsonl")

    def write_jsonl(self, artifact: str, records: Iterable[dict[str, Any]]) -> None:
        self.claim()
        self._owned(artifact)
        self._written.add(artifact)
        write_atomic(self.path(artifact), "".join(dumps(r) + "\n" for r in records))

    def write_dataset_info(self, name: str) -> None:
        """Lets LLaMA-Factory train on the run folder as it is: `dataset_dir: RUN_DIR`, `dataset: NAME`."""
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
        self.write_json("dataset_info", {name: {"file_name": ARTIFACTS["dataset"], "formatting": "sharegpt",
                                                "columns": {"messages": "messages"}, "tags": tags}})

    def write_json(self, artifact: str, value: Any) -> None:
        self.claim()
        if artifact == "manifest":  # the run is complete: files of an earlier run it did not rewrite go
            self._remove_stale()
        self._written.add(artifact)
        write_atomic(self.path(artifact), json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        if artifact == "manifest":  # written last: the run is complete
            self.release()

    # -- journals: an output's records, streamed as they finish, sorted at the end -----------

    def journal_path(self, artifact: str) -> Path:
        return self.path(artifact).with_name(self.path(artifact).name + ".partial")

    def open_journal(self, artifact: str) -> None:
        self.claim()
        self._journals[artifact] = _Journal(self.journal_path(artifact))  # a rerun rebuilds it
        if artifact in self._index:
            self._index[artifact].close()
        self._index[artifact] = OrderedSpill()

    def append(self, artifact: str, order: tuple, record: dict[str, Any]) -> None:
        """One finished record; `order` is its place in the final file (a tuple of ints and strings, kept
        with the line's offset on disk, not in memory); the orders of one artifact must compare with each other."""
        self._index[artifact].add(order, self._journals[artifact].write(dumps(record) + "\n"))

    def note_calls(self, calls: list[dict[str, Any]]) -> None:
        """The keys of a finished record's calls, to call_keys.txt: every call of the run, whatever
        its outputs list (a record a filter drops lists its calls nowhere else). Duplicates are kept
        (an explode's records share their call); readers keep each key once."""
        if not calls:
            return
        if self._call_log is None:
            self.claim()
            self._call_log = self.journal_path("call_keys").open("wb", buffering=_Journal.BUFFER)
        self._call_log.write("".join(call["key"] + "\n" for call in calls).encode("ascii"))

    def finish_journals(self) -> dict[str, int]:
        """Sort every journal into its file, whatever order records finished in; lines per file."""
        if self._call_log is not None:
            self._call_log.close()
            self._call_log = None
            os.replace(self.journal_path("call_keys"), self.path("call_keys"))
            self._written.add("call_keys")
        lines = {}
        for artifact, journal in self._journals.items():
            journal.close()
            index = self._index.pop(artifact)
            with self.journal_path(artifact).open("rb") as source, self._atomic_lines(artifact) as target:
                for offset in index.in_order():
                    source.seek(int(offset))
                    target.write(source.readline().decode("utf-8"))
            self.journal_path(artifact).unlink()
            lines[artifact] = len(index)
            index.close()
        return lines

    def _atomic_lines(self, artifact: str) -> _AtomicFile:
        self.claim()
        self._owned(artifact)
        self._written.add(artifact)
        return _AtomicFile(self.path(artifact))


class _Journal:
    """An append-only file of lines that knows each line's offset. Lines are buffered and written in
    batches: a journal is read only once the run has finished it (a rerun rebuilds it), so flushing
    every line would buy nothing for a write call per record, and asking the file for its position
    (`tell`) flushes too."""

    BUFFER = 1 << 18  # bytes

    def __init__(self, path: Path):
        self.handle: BinaryIO = path.open("wb", buffering=self.BUFFER)
        self.size = 0

    def write(self, line: str) -> int:
        """Append a line; returns its offset."""
        offset = self.size
        data = line.encode("utf-8")
        self.handle.write(data)
        self.size += len(data)
        return offset

    def close(self) -> None:
        self.handle.close()


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

"""The run directory: artifacts written so a crash never leaves a file a rerun trusts.

Finished files are written to a temporary name and renamed into place (atomic). While a
run is going, each output's records stream to a `.partial` journal, so memory stays flat;
each journal is sorted into its final file at the end, giving the same bytes whatever
order records finished in. A run that stops on an error or Ctrl-C removes the journals and
temporary files it began (a rerun rebuilds them from the cache); only SIGKILL (or a power
loss) leaves them, for its rerun to replace or remove.

A run writes only into a folder that is new, empty or one of codeclm's own runs (marked by
`.codeclm-run`, or a codeclm manifest), never into the root, the home folder or the run a
replay checks; and it touches the folder only once it has something to write. The marker
lists every file codeclm wrote there, each before it is written (a run killed mid-way still
owns what it began): a file it does not list is the user's, never replaced nor deleted, and
once a run finishes, the files of earlier runs it did not write again go. While it writes, a
run holds the folder (an advisory lock), so a second run into it at once is refused.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

import orjson

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
    "stopped": "stopped.json",  # a run that stopped on an error after writing its finished records: the error
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


# The encoder of what orjson refuses. allow_nan=False: NaN and Infinity are not JSON, and a line holding
# one made the whole file unreadable to every JSON reader (a ValueError instead: the record fails).
_encode_line = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False, separators=(",", ":")).encode


def dumps(record: Any) -> str:
    """One JSON line of an artifact: compact, keys sorted, keys masked (redact.py: the last line of defence).

    orjson encodes a run's kilobyte lines in a seventh of json's CPU (a tenth of a run's instructions,
    benchmarks/RESULTS.md); json, with the same separators, takes what orjson refuses (an integer past
    64 bits, a key that is not a string, a lone surrogate) and any line where orjson wrote `null`, as it
    writes NaN and infinities, which json refuses. A small float may read `0.00001` where json wrote `1e-05`:
    the same number. (A codeclm before this wrote json's spaces after `,` and `:`: `replay` reads such a
    run's lines as the same records.)"""
    try:
        encoded = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        return redact_text(_encode_line(record))
    return redact_text(_encode_line(record) if b"null" in encoded else encoded.decode("utf-8"))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two processes never share one
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: the half-written temporary file is ours, and useless
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


MARKER = ".codeclm-run"  # written first into every run folder: what makes a folder codeclm's own
_TEMPORARY = re.compile(r"\.(.+?)(?:\.(\d+))?\.tmp")  # write_atomic's .NAME.PID.tmp, _AtomicFile's .NAME.tmp


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files of codeclm writers killed mid-write (SIGKILL, power loss): NAME one of
    codeclm's files in `folder`, PID no longer running. No later writer replaced them (write_atomic's name
    holds its PID), so they stayed for good. The caller holds the folder, so no run is writing a `.NAME.tmp`."""
    names = own_files(folder) | {MARKER}
    for path in folder.iterdir():
        if _stale_temporary(path.name, names):
            path.unlink(missing_ok=True)


def _stale_temporary(name: str, owned: set[str]) -> bool:
    match = _TEMPORARY.fullmatch(name)
    return bool(match) and match[1] in owned and (match[2] is None or not _running(int(match[2])))


def _running(pid: int) -> bool:
    """Whether a process `pid` exists (True where that cannot be asked: Windows's os.kill would end it)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # another user's process
        return True
    return True


REPORT = "report.html"  # the run's report (`codeclm report`), written into the run folder by default
WRITTEN = "written"  # the marker's list of every file codeclm wrote in the folder
# Summaries codeclm writes beside no manifest, the keys that show one is codeclm's, and the files it comes with:
# what makes a folder written before the marker (or its list) codeclm's.
SIGNED = {"eval.json": ({"candidate", "reference", "judge", "summary"}, ("eval.json", "eval.jsonl")),
          "compare.json": ({"wins", "ties", "losses", "judge", "sides"}, ("compare.json", "compare.jsonl",
                                                                          "compare.txt"))}

OTHER_COMMANDS_FILES = {name for _, files in SIGNED.values() for name in files}  # not a run's: a rerun keeps them


def is_own_run(folder: Path) -> bool:
    """A folder codeclm wrote: it holds the marker, or (made before the marker) a run's manifest or the
    summary of an evaluation (eval.json) or a comparison (compare.json)."""
    if (folder / MARKER).is_file():
        return True
    return _is_manifest(_json_or_none(folder / ARTIFACTS["manifest"])) or any(_signed(folder, name) for name in SIGNED)


def _is_manifest(value: Any) -> bool:
    """Whether a parsed manifest.json has the keys every codeclm run's manifest has (not a user's file)."""
    return isinstance(value, dict) and {"spec", "code_sha256", "options", "calls"} <= value.keys()


def _signed(folder: Path, name: str) -> bool:
    """Whether the folder's summary `name` (a key of SIGNED) holds the keys codeclm writes into it."""
    written = _json_or_none(folder / name)
    return isinstance(written, dict) and SIGNED[name][0] <= written.keys()


def is_codeclm_report(path: Path) -> bool:
    """Whether the file is a page `codeclm report` wrote (its title says so)."""
    try:
        with path.open("rb") as handle:
            return b"<title>codeclm report" in handle.read(4096)
    except OSError:
        return False


def refuse_replacing(path: Path, ours: Callable[[Path], bool], what: str, hint: str) -> None:
    """A file a command writes at a path the user named never replaces what it did not make there: a
    file `ours` does not recognise (an empty one too), or anything that is not a regular file (a
    device, a pipe: /dev/null was replaced by a report). SpecError, before anything is written."""
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise SpecError(str(path), f"exists and is not a regular file (a device, a pipe or a broken link): {what} "
                        "never writes over it", hint=hint)
    if not ours(path):
        raise SpecError(str(path), f"exists and is not {what}: it never writes over a file it did not make",
                        hint=hint)


def own_files(folder: Path) -> set[str]:
    """The files of `folder` codeclm wrote: those its marker lists. A folder an older codeclm wrote (no
    list): only what its records name, since a user's metadata.jsonl there is not codeclm's for its name."""
    return _own_files(folder, _json_or_none(folder / MARKER))


def _own_files(folder: Path, marker: Any) -> set[str]:
    listed = _listed(marker)
    return listed if listed is not None else _named_before_the_list(folder, marker)


def written_files(folder: Path) -> set[str] | None:
    """The files the folder's marker lists as codeclm's; None for a folder with no such list."""
    return _listed(_json_or_none(folder / MARKER))


def _listed(marker: Any) -> set[str] | None:
    listed = marker.get(WRITTEN) if isinstance(marker, dict) else None
    return _plain(listed) if isinstance(listed, list) else None


def _plain(names: Iterable[Any]) -> set[str]:
    """File names inside the folder only: a list naming ../victim.jsonl never reaches outside it."""
    return {name for name in names if isinstance(name, str) and not path_like(name)}


def _named_before_the_list(folder: Path, marker: Any) -> set[str]:
    """What an older codeclm's folder shows it wrote: the outputs its marker listed, the files its run's
    manifest names (the spec's outputs, and those every run writes), an evaluation's or a comparison's
    files beside their summary, and a page codeclm's report wrote."""
    listed = marker.get("files") if isinstance(marker, dict) else None
    names = _plain(listed) if isinstance(listed, list) else set()
    manifest = _json_or_none(folder / ARTIFACTS["manifest"])
    if isinstance(manifest, dict) and isinstance(manifest.get("spec"), dict):
        names |= {ARTIFACTS[name] for name in RESERVED_OUTPUTS} | {_file_of(name) for name in _outputs_of(manifest)}
    elif isinstance(marker, dict) and not (folder / ARTIFACTS["manifest"]).exists():
        # an older codeclm's run killed before its manifest (it removed the last one as it began): its
        # marker makes the artifact files and their journals its own, so the rerun resumes into it
        names |= {*ARTIFACTS.values(), *(f"{name}.partial" for name in {*ARTIFACTS.values(), *names})}
    for name, (_, files) in SIGNED.items():
        if _signed(folder, name):
            names.update(files)
    if is_codeclm_report(folder / REPORT):
        names.add(REPORT)
    return {name for name in names if (folder / name).exists()}


def refuse_foreign(folder: Path, names: Iterable[str], command: str) -> None:
    """No file `command` writes in `folder` may replace one codeclm did not write there (SpecError)."""
    own = own_files(folder) if folder.is_dir() else set()
    for name in names:
        if (folder / name).exists() and name not in own:
            raise SpecError(str(folder / name), f"exists and codeclm did not write it: {command} would replace it",
                            hint="move the file away, or choose another --out (a new or empty folder)")


def note_own(folder: Path, names: Iterable[str]) -> None:
    """Add files to the marker's list before they are written, so a run killed while writing them
    still owns them on its resume. The first note also lists what an older codeclm's folder shows."""
    marker = _json_or_none(folder / MARKER)
    owned = _own_files(folder, marker)  # the marker read once
    marker = marker if isinstance(marker, dict) else {"written_by": "codeclm"}
    names = _plain(names)
    if WRITTEN not in marker or not names <= owned:
        _list_in_marker(folder, marker, owned | names)


def _list_in_marker(folder: Path, marker: dict[str, Any], names: set[str]) -> None:
    """The marker with `names` as its list (the older `files` list, outputs only, goes: it is in there)."""
    kept = {key: value for key, value in marker.items() if key != "files"}
    write_atomic(folder / MARKER, json.dumps({**kept, WRITTEN: sorted(names)}) + "\n")


def lock_folder(folder: Path) -> int | None:
    """An advisory lock on the folder itself (no file of its own), for one writer at a time: a run,
    or a report, evaluate or compare writing beside one. Returns the descriptor to close to let go
    (None where locks do not exist: Windows, some network mounts); a folder another process holds
    is a SpecError."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that can be written but not read: no lock to take, as without locks
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpecError(str(folder), "another codeclm run is writing into this folder now",
                            hint="wait for it to finish (a run, or a report, evaluate or compare writing "
                                 "beside one), or choose another --out") from None
        return None  # a file system without such locks: the writer goes on unlocked
    return fd


@contextmanager
def writing_beside_runs(folder: Path) -> Iterator[None]:
    """Hold `folder` while a command other than a run adds its files there (the marker's list, then
    the files): a run writing there at the same time would rewrite the marker from what it read
    before, and drop the names this command added."""
    fd = lock_folder(folder) if folder.is_dir() else None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


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
        try:  # a run killed while it wrote its first marker left only that marker's temporary file
            empty = all(_stale_temporary(path.name, {MARKER}) for path in folder.iterdir())
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


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and each of its parents that does not exist yet, deepest first: what making it makes."""
    missing, folder = [], folder.absolute()
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _outputs_of(manifest: Any) -> set[str]:
    """The outputs a finished run's manifest says its spec declared (none if it says none)."""
    try:
        outputs = manifest["spec"]["resolved"]["outputs"]
    except (KeyError, TypeError):
        return set()
    if not isinstance(outputs, dict):
        return set()
    # a name that is a path, or a file every run writes itself, is never an output's
    return {name for name in outputs if isinstance(name, str) and not path_like(name) and name not in RESERVED_OUTPUTS}


def _file_of(artifact: str) -> str:
    """A known artifact's file name, else an output's: NAME.jsonl."""
    return ARTIFACTS.get(artifact, f"{artifact}.jsonl")


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
        self._call_keys: OrderedSpill | None = None  # each finished record's call keys, under its order
        self._earlier_files: set[str] = set()  # what codeclm had written in the folder before this run
        # what this run made, for a failed run that wrote nothing else to leave the folder as it was
        self._made_folders: list[Path] = []  # the run folder and the parents it made, deepest first
        self._made_marker = False
        self._lock_fd: int | None = None

    def claim(self) -> None:
        """Make the folder ours before the first write: checked again (it may have changed since),
        marked, and the previous run's manifest removed, so a folder whose run is not finished is
        never taken as finished. The previous run's other artifacts are replaced one by one."""
        if self._claimed:
            return
        self._made_folders = _missing_folders(self.folder)
        self._made_marker = not (self.folder / MARKER).is_file()
        claim_folder(self.folder, self.protect)
        self.hold()
        remove_stale_temporaries(self.folder)
        self._earlier_files = own_files(self.folder)
        note_own(self.folder, self._earlier_files)  # listed before the manifest that names them (older folders) goes
        self.path("manifest").unlink(missing_ok=True)
        if ARTIFACTS["stopped"] in self._earlier_files:  # an earlier stop's error is not this run's (a user's
            self.path("stopped").unlink(missing_ok=True)  # file of that name stays)
        self._claimed = True

    def hold(self) -> None:
        """Hold the folder for this run (`lock_folder`): a second run into it at the same time, which
        would mix and delete each other's journals, is a SpecError. Taken before the run's first call
        when the folder exists (a rerun, a resume), else at its first write; the OS drops the lock
        when the process ends."""
        if self._lock_fd is None and self.folder.is_dir():
            self._lock_fd = lock_folder(self.folder)

    def release(self) -> None:
        """Let another run write into the folder: this one is over (its manifest is written, or it stopped)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_outputs(self, names: Iterable[str]) -> None:
        """Before anything runs: no file the run writes (an output, its journal, the files every run
        writes) may replace a file of the folder that codeclm did not write (a user's notes.jsonl beside a
        run, then an output named notes; a user's metadata.jsonl, then a spec writing metadata). SpecError."""
        if not self.folder.is_dir():
            return
        own = own_files(self.folder)
        names = list(names)
        fixed = ["failures", "call_keys", "manifest", *(["dataset_info"] if "dataset" in names else [])]
        for name in [*names, *fixed]:
            for path in (self.path(name), self.journal_path(name)):
                if path.exists() and path.name not in own:
                    what = f"output '{name}'" if name in names else f"the run's own {path.name}"
                    raise SpecError(str(path), f"exists and codeclm did not write it: {what} would replace it",
                                    hint="move the file away, name the output otherwise, or choose another --out")

    def _remove_stale(self) -> None:
        """The files earlier runs wrote that this one did not (another spec's outputs, a report this run
        does not write); the marker then lists this run's files, and those of `evaluate` or `compare` in the
        folder, which are not a run's and stay."""
        written = {self.path(artifact).name for artifact in self._written} | {ARTIFACTS["manifest"]}
        others = self._earlier_files & OTHER_COMMANDS_FILES
        for name in self._earlier_files - written - others:
            (self.folder / name).unlink(missing_ok=True)
        marker = _json_or_none(self.folder / MARKER)
        _list_in_marker(self.folder, marker if isinstance(marker, dict) else {"written_by": "codeclm"},
                        written | others)

    def _owned(self, artifact: str) -> None:
        """Note in the marker that codeclm writes this artifact's file, before it is written."""
        self._written.add(artifact)
        note_own(self.folder, {self.path(artifact).name})

    def path(self, artifact: str) -> Path:
        """A known artifact's file, else an output's: NAME.jsonl."""
        return self.folder / _file_of(artifact)

    def write_jsonl(self, artifact: str, records: Iterable[dict[str, Any]]) -> None:
        self.claim()
        self._owned(artifact)
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
        else:
            self._owned(artifact)
        write_atomic(self.path(artifact), json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        if artifact == "manifest":  # written last: the run is complete
            self.release()

    # -- journals: an output's records, streamed as they finish, sorted at the end -----------

    def journal_path(self, artifact: str) -> Path:
        return self.path(artifact).with_name(self.path(artifact).name + ".partial")

    def open_journal(self, artifact: str) -> None:
        self.claim()
        note_own(self.folder, {self.journal_path(artifact).name})
        self._journals[artifact] = _Journal(self.journal_path(artifact))  # a rerun rebuilds it
        if artifact in self._index:
            self._index[artifact].close()
        self._index[artifact] = OrderedSpill()

    def append(self, artifact: str, order: tuple, record: dict[str, Any]) -> None:
        """One finished record; `order` is its place in the final file (a tuple of ints and strings, kept
        with the line's offset on disk, not in memory); the orders of one artifact must compare with each other."""
        self._index[artifact].add(order, self._journals[artifact].write(dumps(record) + "\n"))

    def note_calls(self, order: tuple, calls: list[dict[str, Any]]) -> None:
        """The keys of a finished record's calls, to call_keys.txt at `order` (as an output's lines, so the
        file is the same whatever order calls finished in): every call of the run, whatever its outputs
        list (a record a filter drops lists its calls nowhere else). Duplicates are kept (an explode's
        records share their call); readers keep each key once."""
        if not calls:
            return
        if self._call_keys is None:
            self.claim()
            self._call_keys = OrderedSpill()
        # one row a record, its keys' lines as the value: a journal line and an index row per key cost 7% of a call
        self._call_keys.add(order, "".join(call["key"] + "\n" for call in calls))

    def finish_journals(self) -> dict[str, int]:
        """Sort every journal into its file, whatever order records finished in; lines per file."""
        lines = {}
        if self._call_keys is not None:
            with self._atomic_lines("call_keys") as target:
                for keys in self._call_keys.in_order():
                    target.write(str(keys))
            self._call_keys.close()
            self._call_keys = None
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
        self._journals.clear()
        return lines

    def abandon(self) -> None:
        """The run failed: remove the journals it began, which no rerun reads (a rerun rebuilds them from
        the cache), and the marker (and folder) it made if it wrote nothing else there. Only this run's
        files go: the finished files it wrote, an earlier run's and the user's stay. Never raises, so
        the error that stopped the run is the one reported."""
        for artifact, journal in self._journals.items():
            _discard(journal.handle, self.journal_path(artifact))
        self._journals.clear()
        for index in [*self._index.values(), *([self._call_keys] if self._call_keys is not None else [])]:
            index.close()
        self._index.clear()
        self._call_keys = None
        if self._claimed and self._made_marker:
            with suppress(OSError):  # a file someone put there meanwhile keeps the folder
                if [path.name for path in self.folder.iterdir()] == [MARKER]:
                    (self.folder / MARKER).unlink()
                    for folder in self._made_folders:  # rmdir: a folder someone filled meanwhile stays
                        folder.rmdir()

    def _atomic_lines(self, artifact: str) -> _AtomicFile:
        self.claim()
        self._owned(artifact)
        return _AtomicFile(self.path(artifact))


def _discard(handle: IO[Any], path: Path) -> None:
    """Close and remove a file of a failed run; its last buffered lines may fail to flush (a full disk)."""
    with suppress(OSError):
        handle.close()
    with suppress(OSError):
        path.unlink(missing_ok=True)


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
        if kind is not None:  # the writing failed: the temporary file is ours, and useless
            _discard(self.handle, self.tmp)
            return
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.tmp, self.path)
        except BaseException:  # a full disk at the last flush
            _discard(self.handle, self.tmp)
            raise

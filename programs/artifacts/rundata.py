"""A finished run folder, read back: `RunData` for looking at it (the quality metrics, `codeclm report`,
the export's card), `finished_run_manifest` for the commands that need a run finished (replay, export,
cache export, optimize --from), `refuse_unfinished` for those that read any run folder (inspect, report),
and the counts they share with `inspect` and the run summary.

Every artifact is optional and read tolerantly: a missing file reads as absent (and is listed in
`missing`), a line that is not a JSON object is skipped and counted in `bad_lines` (`report` and
`inspect` first call check_intact, so a damaged run file is named with its line, exit 2). Fields are read
with defaults, so a run of another spec (records per node, no judge, no pool) gives what it has and
nothing breaks on what it lacks. Nothing here knows CodecLM's stage names except as fallbacks.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ..lang.nodes import path_like
from .store import ARTIFACTS, MARKER, OTHER_COMMANDS_FILES, REPORT, own_files, written_files

JSONL = ("instructions", "dataset", "metadata", "pool", "rubrics")


@dataclass
class Judged:
    """One judgement of two answers in both orders: `first` is the score pair with answer A shown first
    (A, B), `second` with answer B shown first (B, A). CodecLM: A is the strong answer, B the target's."""

    record: str
    iteration: int | None
    a_first: tuple[float, float] | None
    b_first: tuple[float, float] | None
    gap: float | None


@dataclass
class MetadataSummary:
    """What the report shows of metadata.jsonl: rows by status, how many carry a seed's text, and the
    failed rows (the failures section lists them all)."""

    seeds: int = 0
    statuses: Counter = field(default_factory=Counter)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.statuses.values())

    def add(self, row: dict[str, Any]) -> None:
        self.seeds += "instruction" in row
        self.statuses[str(row.get("status", "ok"))] += 1
        if row.get("status") == "failed":
            self.failed.append(row)


@dataclass
class RunData:
    folder: Path
    missing: list[str] = field(default_factory=list)
    bad_lines: Counter = field(default_factory=Counter)

    @classmethod
    def open(cls, folder: Path | str) -> RunData:
        return cls(Path(folder))

    # -- raw artifacts ---------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the folder holds anything a run writes."""
        return any(self._readable(self.folder / name) for name in ARTIFACTS.values())

    def _jsonl(self, artifact: str) -> list[dict[str, Any]] | None:
        rows = self.stream(artifact)
        return None if rows is None else list(rows)

    def stream(self, artifact: str) -> Iterator[dict[str, Any]] | None:
        """An artifact's rows one at a time (memory does not grow with the file), or None if absent."""
        path = self.folder / ARTIFACTS[artifact]
        if not self._readable(path):
            self.missing.append(ARTIFACTS[artifact])
            return None
        return self._rows(path, ARTIFACTS[artifact])

    def stream_output(self, name: str) -> Iterator[dict[str, Any]]:
        """The rows of the spec's output NAME (NAME.jsonl; a plain name, never a path), or none."""
        path = self.folder / f"{name}.jsonl"
        return self._rows(path, path.name) if not path_like(name) and self._readable(path) else iter(())

    def _readable(self, path: Path) -> bool:
        """A file of the run: where the folder's marker lists what codeclm wrote, a file it does not list is
        the user's (a metadata.jsonl of their own beside the run), not run data; a folder without the list
        (hand-made, or an older codeclm's) is read by its files' names."""
        return path.is_file() and (self._written is None or path.name in self._written)

    @cached_property
    def _written(self) -> set[str] | None:
        return written_files(self.folder)

    def _rows(self, path: Path, name: str) -> Iterator[dict[str, Any]]:
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (ValueError, RecursionError):
                        row = None
                    if isinstance(row, dict):
                        yield row
                    else:
                        self.bad_lines[name] += 1
        except OSError:
            self.missing.append(name)

    @cached_property
    def histories(self) -> list[dict[str, Any]] | None:
        """CodecLM's instruction histories; None without them (another spec's output named
        `instructions` is not read as them: the manifest's spec says whose it is)."""
        if declares_histories(self.manifest) is False:
            return None
        return self._jsonl("instructions")

    @cached_property
    def dataset(self) -> list[dict[str, Any]] | None:
        return self._jsonl("dataset")

    @cached_property
    def metadata(self) -> MetadataSummary | None:
        """metadata.jsonl in one streamed pass: one row per seed, so a 100k-seed run's file (46 MB,
        ~260 MiB as Python objects) is counted, never held whole."""
        rows = self.stream("metadata")
        if rows is None:
            return None
        summary = MetadataSummary()
        for row in rows:
            summary.add(row)
        return summary

    @cached_property
    def pool(self) -> list[dict[str, Any]] | None:
        return self._jsonl("pool")

    @cached_property
    def rubrics(self) -> list[dict[str, Any]] | None:
        return self._jsonl("rubrics")

    @cached_property
    def manifest(self) -> dict[str, Any]:
        path = self.folder / ARTIFACTS["manifest"]
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            self.missing.append(ARTIFACTS["manifest"])
            return {}
        return value if isinstance(value, dict) else {}

    def declares(self, name: str) -> bool:
        """Whether the run's spec writes the file `name` (its outputs, the manifest): a file another
        pipeline writes (CodecLM's instructions.jsonl) is not missing from this one. True when unknown."""
        outputs = resolved_spec(self.manifest).get("outputs")
        if not isinstance(outputs, dict):
            return True
        return name == ARTIFACTS["manifest"] or name in {f"{output}.jsonl" for output in outputs}

    # -- what the views need ---------------------------------------------------------------

    @cached_property
    def params(self) -> dict[str, Any]:
        params = resolved_spec(self.manifest).get("params")
        return params if isinstance(params, dict) else {}

    def iter_seeds(self) -> Iterator[dict[str, Any]]:
        """Seed instructions as the run read them, {id, text}, one at a time from the encode records of
        metadata.jsonl (which keep the seed's text, failed or not); in a run without that file, from the
        seed file its spec read (the first field of its one file source); none for a run without seeds."""
        if not self._readable(self.folder / ARTIFACTS["metadata"]):
            yield from self._seed_file_texts()
            return
        seen: set[str] = set()
        for row in self.stream("metadata") or []:
            text = row.get("instruction")
            if isinstance(text, str) and text.strip():
                key = str(row.get("id", len(seen)))
                if key not in seen:
                    seen.add(key)
                    yield {"id": key, "text": text}

    def _seed_file_texts(self) -> Iterator[dict[str, Any]]:
        """The first field of each record of the one file the run's spec read (as `--seeds` named it, or
        its source's path, relative to the spec), if it can still be read; else nothing."""
        from ..errors import CodecError
        from ..lang.seeds import stream_records

        spec = self.manifest.get("spec") if isinstance(self.manifest.get("spec"), dict) else {}
        sources = file_sources(resolved_spec(self.manifest))
        options = self.manifest.get("options") if isinstance(self.manifest.get("options"), dict) else {}
        if len(sources) != 1 or not isinstance(spec.get("path"), str) or not source_fields(sources[0]):
            return
        first, file_field = next(iter(source_fields(sources[0]).items()))
        given = options.get("seeds")  # --seeds, as the run was given it (a replay reads it so too)
        path = Path(given) if isinstance(given, str) else Path(spec["path"]).parent / sources[0]["path"]
        limit = options.get("limit") if isinstance(options.get("limit"), int) else None
        try:
            _, rows = stream_records(path, {first: file_field}, sources[0].get("id_field", "id"), limit)
            for row in rows:
                yield {"id": str(row["id"]), "text": row[first]}
        except (CodecError, OSError, ValueError):
            return

    @cached_property
    def kept(self) -> list[dict[str, Any]]:
        """Kept pairs: {id, instruction, response, iteration, response_from, metadata}, from dataset.jsonl
        (chat `messages`), else from the kept histories' records."""
        return list(self.iter_kept(self.dataset, self.histories))

    def iter_kept(self, dataset: Any = None, histories: Any = None) -> Iterator[dict[str, Any]]:
        """`kept`, one pair at a time, streamed from the files unless rows are given."""
        rows = dataset if dataset is not None else self.stream("dataset")
        if rows is None:
            rows = (h["record"] for h in (histories if histories is not None else self.stream("instructions")) or []
                    if h.get("status") == "kept" and isinstance(h.get("record"), dict))
        for index, row in enumerate(rows):
            messages = row.get("messages") if isinstance(row.get("messages"), list) else []
            user = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            reply = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
            instruction = user[-1] if user else row.get("instruction")
            if not isinstance(instruction, str):
                continue
            provenance = row.get("provenance") if isinstance(row.get("provenance"), dict) else {}
            yield {"id": str(provenance.get("id", index)), "instruction": instruction,
                   "response": reply[-1] if reply and isinstance(reply[-1], str) else row.get("response"),
                   "iteration": provenance.get("iteration"), "response_from": provenance.get("response_from"),
                   "metadata": provenance.get("metadata") if isinstance(provenance.get("metadata"), dict) else {}}

    @cached_property
    def status_counts(self) -> dict[str, int]:
        """Records by status: from instructions.jsonl's histories, or, in a run without that file (a
        spec other than CodecLM's, or whose `instructions` output has no status), as the run counted
        the records its dataset reads (the manifest)."""
        if self.histories is None or not any(isinstance(h.get("status"), str) for h in self.histories):
            counted = (self.manifest.get("counts") or {}).get("instructions")
            counted = counted if isinstance(counted, dict) else {}
            return dict(Counter({str(k): v for k, v in counted.items() if isinstance(v, int)}).most_common())
        return dict(Counter(str(h.get("status", "unknown")) for h in self.histories).most_common())

    def steps(self, history: dict[str, Any]) -> list[dict[str, Any]]:
        steps = history.get("iterations")
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []

    @cached_property
    def judgements(self) -> list[Judged]:
        """Every judgement in the histories (every iteration of every record) that has scores."""
        return list(self.iter_judgements(self.histories))

    def iter_judgements(self, histories: Any = None) -> Iterator[Judged]:
        """`judgements`, one at a time, streamed from instructions.jsonl unless rows are given."""
        for history in (self.stream("instructions") or []) if histories is None else histories:
            for step in self.steps(history):
                scores = step.get("scores")
                if not isinstance(scores, dict):
                    continue
                yield Judged(str(history.get("id")), step.get("iteration"),
                             _pair(scores.get("strong_first")), _pair(scores.get("target_first")),
                             _number(scores.get("gap")))

    @cached_property
    def answer_names(self) -> tuple[str, str]:
        """The two answers a judge compares, as the spec names them (CodecLM's defaults otherwise)."""
        nodes = list((resolved_spec(self.manifest).get("nodes") or {}).values())
        while nodes:  # the first pairwise judge, loop bodies included: the nodes its pair reads
            node = nodes.pop(0)
            if not isinstance(node, dict):
                continue
            nodes += list((node.get("body") or {}).values()) if isinstance(node.get("body"), dict) else []
            pair = node.get("pair") if node.get("type") == "judge" else None
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
                return pair[0].split(".")[0].strip(), pair[1].split(".")[0].strip()
        return "answer_strong", "answer_target"

    @cached_property
    def failures(self) -> list[dict[str, Any]]:
        """Every failed item of every artifact: {artifact, id, stage, error, raw}."""
        found = []
        for artifact in JSONL:
            rows = getattr(self, "histories" if artifact == "instructions" else artifact)
            if isinstance(rows, MetadataSummary):  # only its failed rows were kept
                rows = rows.failed
            for row in rows or []:
                if row.get("status") != "failed":
                    continue
                failure = row.get("failure") if isinstance(row.get("failure"), dict) else row
                found.append(_failure(ARTIFACTS[artifact], row, failure, artifact))
        if self.histories is None:  # another spec than CodecLM's: its failed records are in failures.jsonl
            found += [_failure(ARTIFACTS["failures"], row, row, str(row.get("node") or "?"))
                      for row in self.stream("failures") or []]
        return found


def _failure(artifact: str, row: dict[str, Any], failure: dict[str, Any], stage: str) -> dict[str, Any]:
    return {"artifact": artifact, "id": str(row.get("id")), "stage": str(failure.get("stage") or row.get("stage")
                                                                        or stage),
            "error": str(failure.get("error") or "unknown error"),
            "raw": failure.get("raw") if isinstance(failure.get("raw"), str) else None}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        a, b = _number(value[0]), _number(value[1])
        if a is not None and b is not None:
            return a, b
    return None


def read_run_json(path: Path) -> Any:
    """A run folder's JSON file (its manifest); one that cannot be read is `damaged_run`'s SpecError."""
    from ..errors import SpecError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(str(path), f"cannot read it: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        raise damaged_run(Path(path).parent, exc) from None


FINISHED_RUN_FIX = "pass a folder `codeclm run` finished, e.g. runs/demo"


def refuse_unfinished(run_dir: Path) -> None:
    """A SpecError (exit 2) for a folder of codeclm's (its marker) that holds a run's files but no manifest:
    its run did not finish. A run removes the folder's manifest as it begins and writes its own last, so an
    interrupted rerun into a finished run's folder leaves the earlier run's files, which read as that run."""
    from ..errors import SpecError

    folder = Path(run_dir)
    if not (folder / MARKER).is_file() or (folder / ARTIFACTS["manifest"]).exists():
        return
    own = own_files(folder)
    if ARTIFACTS["stopped"] in own and (folder / ARTIFACTS["stopped"]).is_file():  # stopped on an error: shown
        return
    others = OTHER_COMMANDS_FILES | {REPORT}  # evaluate's, compare's and report's files are no run's
    if any((folder / name).is_file() for name in own - others):
        stopped = (folder / ARTIFACTS["failures"]).is_file()
        raise SpecError(str(folder), "the run did not finish (it has no manifest.json, which a run writes last): "
                        "its files are what it wrote before it stopped, or an earlier run's",
                        hint=(f"if it stopped on an error, {folder / ARTIFACTS['failures']} holds each failed "
                              "record's error; " if stopped else "")
                        + "rerun the same command to resume (what finished is cached)")


def finished_run_manifest(run_dir: Path, needs: Iterable[str] = (), fix: str = FINISHED_RUN_FIX) -> dict[str, Any]:
    """The manifest of a run folder that a command needs finished (replay, export, cache export, optimize
    --from), holding each dotted key of `needs` (its value may be null); else a SpecError, exit 2: a run
    that did not finish (`refuse_unfinished`), no manifest, an unreadable or damaged one (`read_run_json`),
    or one of another shape."""
    from ..errors import SpecError

    refuse_unfinished(run_dir)
    path = Path(run_dir) / ARTIFACTS["manifest"]
    if not path.is_file():
        raise SpecError(str(run_dir), "not a finished run (no manifest.json)", hint=fix)
    manifest = read_run_json(path)
    for key in needs:
        value = manifest
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise SpecError(str(path), f"not a codeclm run manifest (no {key})", hint=fix)
            value = value[part]
    if not isinstance(manifest, dict):
        raise SpecError(str(path), "not a codeclm run manifest (not a JSON object)", hint=fix)
    return manifest


DAMAGE_HINT = "pass a run folder `codeclm run` wrote, unedited; or write it again: rerun, or `codeclm replay` it"


def damaged_run(folder: Path, exc: BaseException) -> Exception:
    """The error to show for a run folder a reader choked on (`exc`, a ValueError, KeyError, ...):
    the first file and line that is not UTF-8 JSON, else the shape the reader did not expect. Run
    folders are inputs too: a damaged one is a message (exit 2), never a traceback."""
    from ..errors import SpecError

    found = _first_damage(sorted(Path(folder).glob("*.json*")))
    return found or SpecError(str(folder), f"a file of this run folder does not hold what codeclm wrote "
                              f"({type(exc).__name__}: {exc})", hint=DAMAGE_HINT)


def check_intact(folder: Path) -> None:
    """Raise the SpecError (exit 2) naming the first file and line of the run's JSON files that is not what
    codeclm wrote. The readers here skip such lines, so `report` and `inspect` would show a truncated manifest
    or dataset as a smaller run; a user's own file in the folder is not the run's and is not read."""
    names = {ARTIFACTS["manifest"], *own_files(Path(folder))}
    paths = sorted(Path(folder) / name for name in names if name.endswith((".json", ".jsonl")))
    found = _first_damage(path for path in paths if path.is_file())
    if found is not None:
        raise found


def _first_damage(paths: Iterable[Path]) -> Exception | None:
    """The SpecError for the first of `paths` (JSON, or JSONL by its suffix) that is not UTF-8 JSON objects."""
    from ..errors import SpecError

    for path in paths:
        if not path.is_file() or path.suffix not in (".json", ".jsonl"):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as bad:
            line = path.read_bytes()[:bad.start].count(b"\n") + 1
            return SpecError(str(path), f"damaged: not UTF-8 (byte {bad.start})", line=line, hint=DAMAGE_HINT)
        if path.suffix == ".json" and not text.strip():  # a JSON file is one object: empty is damage, not none
            return SpecError(str(path), "damaged: empty", line=1, hint=DAMAGE_HINT)
        chunks = [text] if path.suffix == ".json" else text.splitlines()
        for number, chunk in enumerate(chunks, 1):
            if not chunk.strip():
                continue
            try:
                value = json.loads(chunk)
            except (ValueError, RecursionError) as bad:
                return SpecError(str(path), f"damaged: not JSON ({bad})", line=number, hint=DAMAGE_HINT)
            if not isinstance(value, dict):
                return SpecError(str(path), f"damaged: a {type(value).__name__} where a JSON object belongs",
                                 line=number, hint=DAMAGE_HINT)
    return None


def outcomes(manifest: dict[str, Any], statuses: dict[str, int]) -> dict[str, int]:
    """What became of the run's records, as the printed run summary counts them, so the report, `inspect`
    and the card add up to failures.jsonl: the statuses of the records the dataset reads (kept, dropped
    and failed always), `failed upstream` (at an earlier node, so no status above counts them),
    `filtered out` (by a filter, dedup or when:), and, named for a user, the other statuses."""
    stages = [row for row in ((manifest.get("counts") or {}).get("stages") or {}).values() if isinstance(row, dict)]
    failed = statuses.get("failed", 0)
    found = {"kept": statuses.get("kept", 0), "dropped": statuses.get("dropped", 0), "failed": failed,
             "failed upstream": max(0, sum(_int(row.get("failed")) for row in stages) - failed),
             "filtered out": sum(_int(row.get("removed")) for row in stages)}
    pairs = declares_dataset(manifest)
    for status, count in statuses.items():
        if status not in ("kept", "dropped", "failed"):
            found[status_label(status, pairs)] = found.get(status_label(status, pairs), 0) + count
    return {k: v for k, v in found.items() if v or k in ("kept", "dropped", "failed")}


def node_flow(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the run's loops decided and its filters removed, from the manifest's counts (any spec's):
    `loops`, per loop node, its records, failures, each switch's cases (count, exit, and per iteration for
    a case that goes on), the exits, the records that ran to `max`, and the mean iterations of the records
    that did not fail (a loop in a rounds body: all its rounds' copies together); `filters`,
    per filter, dedup or `when:` node, the records it saw and those it let no further. Empty without them."""
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    stages = counts.get("stages") if isinstance(counts.get("stages"), dict) else {}
    decisions = {str(k): v for k, v in (counts.get("decisions") or {}).items() if isinstance(v, int)} \
        if isinstance(counts.get("decisions"), dict) else {}
    nodes = dict(spec_nodes(ordered_spec(manifest)))
    loops = {name: node for name, node in nodes.items() if node.get("type") == "loop"}
    switches = {name: _switches(node) for name, node in loops.items()}
    names = Counter(case for found in switches.values() for cases in found.values() for case in cases)
    in_rounds = {str(name) for node in nodes.values() if node.get("type") == "rounds"
                 and isinstance(node.get("body"), dict) for name in node["body"]}
    # a manifest without node counts (hand-made, or older) does not say how many records reached a loop
    rows = {name: _loop_stage(name, stages, name in in_rounds, set(nodes)) if "stages" in counts else None
            for name in loops}
    flow: dict[str, Any] = {}
    loop_rows = {name: _loop_flow(loops[name], switches[name], rows[name], decisions, names)
                 for name in loops if switches[name] or rows[name]}
    if loop_rows:
        flow["loops"] = loop_rows
    filters = {}
    for stage, row in sorted(stages.items(), key=lambda item: _graph_place(str(item[0]), list(nodes))):
        node = nodes.get(str(stage)) or nodes.get(str(stage).rpartition("_")[0]) or {}  # a round's copy: its node
        if isinstance(row, dict) and (node.get("type") in ("filter", "dedup") or _int(row.get("removed"))):
            filters[str(stage)] = {"type": str(node.get("type") or "node"), "records": _int(row.get("done")),
                                   "removed": _int(row.get("removed"))}
    if filters:
        flow["filters"] = filters
    return flow


def _graph_place(stage: str, names: list[str]) -> tuple[int, int, str]:
    """Where a stage comes in the run: its round (a rounds node's copies are NODE_ROUND), then its node's
    place in the spec."""
    base, _, round_ = stage.rpartition("_")
    if stage not in names and base in names and round_.isdigit():
        return int(round_), names.index(base), stage
    return 0, names.index(stage) if stage in names else len(names), stage


def _loop_stage(name: str, stages: dict[str, Any], in_rounds: bool, spec_names: set[str]) -> dict[str, int]:
    """A loop's stage row. A loop in a rounds body ran as one copy per round (NAME_1, NAME_2, ...): their rows
    added up, as its decisions are (by case name); a node of the spec's own named so is no copy. A node gets
    its row when its first record reaches it, so a loop without one had no record (a budget or earlier
    failures stopped them all before it): none done."""
    if not in_rounds:
        return stages[name] if isinstance(stages.get(name), dict) else {"done": 0, "failed": 0}
    copies = [row for stage, row in stages.items() if isinstance(row, dict) and stage not in spec_names
              and (parts := str(stage).rpartition("_"))[0] == name and parts[2].isdigit()]
    return {key: sum(_int(row.get(key)) for row in copies) for key in ("done", "failed")}


def _switches(loop: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """A loop body's switches, in body order, each as {case: its exit or None}."""
    body = loop.get("body") if isinstance(loop.get("body"), dict) else {}
    return {str(name): {str(case["name"]): case.get("exit") if isinstance(case.get("exit"), str) else None
                        for case in node.get("cases") or [] if isinstance(case, dict) and "name" in case}
            for name, node in body.items() if isinstance(node, dict) and node.get("type") == "switch"}


def _loop_flow(loop: dict[str, Any], switches: dict[str, dict[str, str | None]], stage: dict[str, Any] | None,
               decisions: dict[str, int], names: Counter) -> dict[str, Any]:
    """One loop's figures. Its iterations are those that reached its first switch (which decides once in
    each), so a failed iteration is not counted; the mean is theirs per record that did not fail (exact
    when none failed; a failed record's iterations before its failure count too). The records that ran
    to `max` are those that neither failed nor took an exit."""
    stage = stage or {}
    records, failed = (_int(stage.get("done")), _int(stage.get("failed"))) if stage else (None, None)
    cases = {switch: {case: _case_row(case, exit_name, decisions, names[case] > 1) for case, exit_name in found.items()}
             for switch, found in switches.items()}
    rows = [row for found in cases.values() for row in found.values()]
    exits: dict[str, int | None] = {}
    for row in rows:
        if row["exit"]:
            known = exits.get(row["exit"], 0)
            exits[row["exit"]] = None if known is None or row["count"] is None else known + row["count"]
    counted = None if any(row["count"] is None for row in rows) else sum(v or 0 for v in exits.values())
    first = list(next(iter(cases.values()), {}).values())
    iterations = sum(r["count"] for r in first) if first and all(r["count"] is not None for r in first) else None
    finished = None if records is None else records - (failed or 0)  # the records that did not fail
    return {"records": records, "failed": failed, "switches": cases, "exits": exits,
            "at_max": None if finished is None or counted is None else max(0, finished - counted),
            "exhausted": str(loop.get("exhausted", "dropped")), "emit": str(loop.get("emit", "last")),
            "iterations": iterations,
            "mean_iterations": round(iterations / finished, 2) if iterations is not None and finished else None}


def _case_row(case: str, exit_name: str | None, decisions: dict[str, int], shared: bool) -> dict[str, Any]:
    """A switch case: how often it was taken, from the manifest's decisions (`case` for a case that exits,
    `case@ITERATION` for one that goes on). They count cases by name, so a name two loops' switches share
    cannot be told apart: its count is None."""
    if shared:
        return {"exit": exit_name, "count": None}
    if exit_name:
        return {"exit": exit_name, "count": decisions.get(case, 0)}
    per = {int(at): count for key, count in decisions.items()
           if (parts := key.rpartition("@"))[0] == case and (at := parts[2]).isdigit()}
    return {"exit": None, "count": sum(per.values()), "by_iteration": dict(sorted(per.items()))}


def status_label(status: str, pairs: bool = True) -> str:
    """A status as a user reads it: `ok` at the dataset's node is a record its `where:` left out."""
    return "not in the dataset" if status == "ok" and pairs else status.replace("_", " ")


def declares_dataset(manifest: dict[str, Any]) -> bool:
    """Whether the run's spec writes a dataset of pairs (True when its manifest does not say)."""
    outputs = resolved_spec(manifest).get("outputs") if isinstance(manifest.get("spec"), dict) else None
    return not isinstance(outputs, dict) or not outputs or "dataset" in outputs


def top_failures(manifest: dict[str, Any], count: int) -> tuple[list[tuple[str, int]], int]:
    """The `count` most common failure causes (ties by name: the manifest's JSON holds them A-Z), and how
    many failures the rest of the causes, those the manifest left out included, account for."""
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    reasons = counts.get("failure_reasons") if isinstance(counts.get("failure_reasons"), dict) else {}
    ranked = sorted(((str(k), v) for k, v in reasons.items() if isinstance(v, int)), key=lambda kv: (-kv[1], kv[0]))
    left_out = counts.get("failure_reasons_left_out") if isinstance(counts.get("failure_reasons_left_out"), dict) \
        else {}
    return ranked[:count], sum(v for _, v in ranked[count:]) + _int(left_out.get("failures"))


def has_judge(manifest: dict[str, Any]) -> bool:
    """Whether the run's spec has a judge node (CodecLM's Contrastive Filtering keeps by its verdict)."""
    return any(node.get("type") == "judge" for _, node in spec_nodes(resolved_spec(manifest)))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def declares_histories(manifest: dict[str, Any]) -> bool | None:
    """Whether the run's spec declares CodecLM's instruction histories as its `instructions` output
    (one with `iterations`): True, False (an output of another shape), or None (no manifest says)."""
    outputs = resolved_spec(manifest).get("outputs") if isinstance(manifest.get("spec"), dict) else None
    if not isinstance(outputs, dict):
        return None
    output = outputs.get("instructions")
    fields = output.get("fields") if isinstance(output, dict) else None
    return isinstance(fields, dict) and "iterations" in fields


def resolved_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The spec the run ran, as its manifest records it ({} when it records none). A `spec` that is not
    a mapping raises AttributeError, which the run readers report as a damaged run folder."""
    resolved = (manifest.get("spec") or {}).get("resolved")
    return resolved if isinstance(resolved, dict) else {}


def ordered_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """`resolved_spec` in the order it was written, where a loop body's order matters; the sorted one when
    the manifest has no readable copy."""
    written = written_spec(manifest)
    return written if written is not None else resolved_spec(manifest)


def written_spec(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's YAML copy of the spec, in the order it was written (its JSON copy is sorted); None
    when it has none or a damaged one (nested too deep for the parser: a RecursionError)."""
    text = (manifest.get("spec") or {}).get("resolved_yaml")
    try:
        written = yaml.safe_load(text) if isinstance(text, str) else None
    except (yaml.YAMLError, RecursionError):
        return None
    return written if isinstance(written, dict) else None


def spec_nodes(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, mapping) of every node of a resolved spec, loop and rounds bodies included."""
    def walk(nodes: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, node in nodes.items() if isinstance(nodes, dict) else ():
            if isinstance(node, dict):
                yield str(name), node
                yield from walk(node.get("body"))

    return walk(spec.get("nodes"))


def file_sources(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The source nodes of a resolved spec that read a file (`path:`)."""
    return [node for _, node in spec_nodes(spec) if node.get("type") == "source" and isinstance(node.get("path"), str)]


def source_fields(source: dict[str, Any]) -> dict[str, str]:
    """A source node's fields as {name: file field} ({} when the mapping holds neither list nor mapping)."""
    fields = source.get("fields", ["instruction"])
    if isinstance(fields, list):
        return {str(f): str(f) for f in fields}
    return {str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {}

"""The run directory's record files, as the spec's `outputs:` declares them.

Each output writes one line per record of its `from` node that its `where` keeps, holding
its `fields` (expressions over the record's lineage; a key whose value does not exist, such
as a node that did not run, is left out). Lines stream to journals and are sorted by the
records' structural order at the end, so a file's bytes never depend on timing. Every failed
record also goes to failures.jsonl, with its error and raw text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2

from ..artifacts.store import RunStore
from ..lang.expressions import evaluate_present
from ..lang.spec import Spec
from ..redact import redact_text
from .nodes import NodeFailed
from .records import Record, View, lineage_scope, nearest_values, record_view

FAILURES = "failures"


class OutputWriter:
    def __init__(self, spec: Spec, store: RunStore | None):
        self.spec, self.store, self.graph = spec, store, spec.graph
        self.by_node: dict[str, list[Any]] = {}
        for output in self.graph.outputs.values():
            for position, source in enumerate(output.sources):
                self.by_node.setdefault(source, []).append((output, position))
        self.failure_reasons: Counter = Counter()  # "node: error" -> records that failed so
        self.without_messages: Counter = Counter()  # output -> lines whose `messages` had no value
        main = self.graph.outputs.get("dataset") or next(iter(self.graph.outputs.values()))
        self.main = main.name
        self.counted = set(main.sources)  # every round's node, with rounds: each makes records of its own
        self.statuses: Counter = Counter()  # statuses of the records of the nodes the dataset reads
        self.opened = False

    @property
    def folder(self) -> Path | None:
        return self.store.folder if self.store else None

    def file_of(self, node: str) -> str | None:
        outputs = self.by_node.get(node)
        if not self.store:
            return None
        return str(self.store.path(outputs[0][0].name if outputs else FAILURES))

    def open(self) -> None:
        """Journals open at the first record, so a run that stops before writing leaves the folder alone."""
        if self.store and not self.opened:
            for name in [*self.graph.outputs, FAILURES]:
                self.store.open_journal(name)
        self.opened = True

    async def write(self, node: str, record: Record,
                    joins: Callable[[str, Record], Awaitable[dict[str, Any]]]) -> None:
        if not self.store:  # a dry run: its failures are cache misses, each naming its item, and unread
            if node in self.counted:
                self.statuses[record.status] += 1
            return
        self.open()
        self.store.note_calls((record.order, node), record.calls)
        if not record.ok:
            self._fail((record.order, node), node, record, record.failure or {})
        lines: dict[str, Any] = {}
        status = record.status
        for output, position in self.by_node.get(node, []):
            if not record.ok and "messages" in output.fields:
                continue  # a chat line of a failed record has no messages to train on: failures.jsonl has it
            try:
                scope = await joins(f"{output.name}:{node}", record)
            except NodeFailed:  # a join this record needed failed: what the lineage shows still counts
                scope = {"params": View(dict(self.spec.params)), **lineage_scope(record)}
            scope.update(record=record_view(record), outputs=View(lines), lineage=nearest_values(record))
            try:
                if output.where is not None and not _holds(output.where, scope):
                    continue
                line = evaluate_present(output.fields, scope)
                # written here, in the try: a value no JSON line can hold (NaN from `'nan' | float`) fails the record
                self.store.append(output.name, (position, *record.order), line)
            except (TypeError, ValueError, ArithmeticError, jinja2.TemplateError) as exc:  # 1/0, "x" * 10**9
                error = f"its fields or where: failed: {type(exc).__name__}: {exc}"
                self._fail((record.order, node, output.name), node, record,
                           {"stage": f"output {output.name}", "error": error, "raw": None})
                status = "failed" if output.name == self.main else status  # the dataset could not take it
                continue
            lines[output.name] = line
            if "messages" in output.fields and "messages" not in line:
                self.without_messages[output.name] += 1  # said at the end: such a line trains nothing
        if node in self.counted:  # a record the dataset took counts as kept, whatever its node called it;
            # one its where: left out is not kept, whatever its node called it (`ok`: not in the dataset)
            self.statuses["kept" if "dataset" in lines else "ok" if status == "kept" else status] += 1

    def _fail(self, order: tuple, node: str, record: Record, failure: dict[str, Any]) -> None:
        """A record's failure, in failures.jsonl (at `order`) and the manifest's reasons."""
        self.failure_reasons[f"{failure.get('stage')}: {failure.get('error')}"[:160]] += 1
        self.store.append(FAILURES, order, {"id": record.id, "node": node, **failure, "calls": record.calls})

    def finish(self) -> dict[str, int]:
        """Sort the journals into their files; the dataset gets LLaMA-Factory's description. Returns the
        statuses of the records the dataset reads (`kept`: those it wrote)."""
        if self.store:
            self.open()
            self.store.finish_journals()
            dataset = self.graph.outputs.get("dataset")
            if dataset is not None and "messages" in dataset.fields:
                self.store.write_dataset_info(self.spec.name)
        return dict(self.statuses)

    def hold(self) -> None:
        if self.store:
            self.store.hold()

    def release(self) -> None:
        if self.store:
            self.store.release()

    def abandon(self) -> None:
        if self.store:
            self.store.abandon()

    def write_stopped(self, error: str) -> None:
        """Beside the records that finished, why the run stopped: `inspect` and `report` show a stopped run's
        folder (one with no manifest and no such record is an interrupted one, which they refuse)."""
        if self.store:
            self.store.write_json("stopped", {"stopped": "error", "error": redact_text(error)})

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        if self.store:
            self.store.write_json("manifest", manifest)


def _holds(expression: Any, scope: dict[str, Any]) -> bool:
    try:
        return bool(expression.evaluate(scope))
    except jinja2.UndefinedError:
        return False

"""What each node type does to a record. `NodeRunner.run(node, record)` returns the records the
node makes from one input record: none (filtered), one, or several (an explode).

Failure is data: a node that fails on a record returns that record marked failed, with the
error and the raw model text; the run goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2

from ..errors import CodecError
from ..lang.expressions import Expression, evaluate_present, evaluate_value
from ..lang.nodes import (
    DedupNode,
    FilterNode,
    JudgeNode,
    LLMNode,
    LoopNode,
    MixNode,
    Node,
    PickNode,
    SourceNode,
    SwitchNode,
)
from ..lang.rouge import rouge_l, tokens
from ..lang.seeds import stream_records
from ..lang.spec import Spec
from ..models.hub import ModelHub
from .checks import check_seeds_option
from .drawn import chained
from .llm import NodeModule, StepResult
from .progress import Progress
from .records import Record, View, field_of, lineage_scope, rng_for, view

Join = Callable[[str, Record], Awaitable[Record]]
Iteration = tuple[dict[str, Any], str | None, dict[str, Any] | None, list[dict[str, Any]]]


class NodeFailed(Exception):
    """A node could not run on a record (an input had no value, a join failed): becomes its failure."""

    def __init__(self, failure: dict[str, Any]):
        super().__init__(failure.get("error"))
        self.failure = failure


class NodeRunner:
    def __init__(self, spec: Spec, hub: ModelHub, modules: dict[str, NodeModule], progress: Progress,
                 options: Any, observe: Any, join: Join):
        self.spec, self.graph, self.hub, self.modules = spec, spec.graph, hub, modules
        self.progress, self.options, self.observe, self.join = progress, options, observe, join
        self.params = View(dict(spec.params))
        self.join_targets = {j for joins in self.graph.joins.values() for j in joins}
        # the names each node reads (a loop body's node waits for the siblings it reads), listed once
        self.reads = {name: {r.root for _, r in node.references()} for name, node in self.graph.every.items()}
        self._inline_plans: dict[tuple[str, ...], tuple[bool, ...]] = {}

    def inline_plan(self, segment: list[Node]) -> tuple[bool, ...]:
        """Per node of a loop body's segment: whether every sibling after it reads it (itself, or through
        others): such a node can run in the segment's own task, since nothing after it could start sooner."""
        names = tuple(n.name for n in segment)
        plan = self._inline_plans.get(names)
        if plan is None:
            waits_for = {name: self.reads[name] & set(names) for name in names}
            for name in names:  # close over siblings: what a sibling it waits for waits for, and so on
                pending = list(waits_for[name])
                while pending:
                    more = waits_for[pending.pop()] - waits_for[name]
                    waits_for[name] |= more
                    pending += more
            plan = tuple(all(name in waits_for[later] for later in names[i + 1:]) for i, name in enumerate(names))
            self._inline_plans[names] = plan
        return plan

    # -- scopes ---------------------------------------------------------------------------------

    async def scope(self, node_name: str, record: Record | None, extra: dict[str, Any] | None = None,
                    lineage: dict[str, Any] | None = None) -> dict:
        """Everything a node's expressions may read for a record: params, the lineage, its joins.
        `lineage`: params and the record's lineage scope, when the caller keeps them (a loop's body)."""
        scope = self.unjoined_scope(record, extra, lineage)
        await self.add_joins(node_name, record, scope)
        return scope

    def unjoined_scope(self, record: Record | None, extra: dict[str, Any] | None,
                       lineage: dict[str, Any] | None) -> dict:
        """`scope` before its joins."""
        if lineage is None:
            return {"params": self.params, **lineage_scope(record), **(extra or {})}
        return {**lineage, **(extra or {})}

    async def add_joins(self, node_name: str, record: Record | None, scope: dict[str, Any]) -> None:
        """The views of the node's joins, each made on first need, added to its scope."""
        for joined, anchor_node in self.graph.joins.get(node_name, {}).items():
            anchor = record.find(anchor_node) if record else None
            if anchor is None:
                continue
            made = await self.join(joined, anchor)
            if not made.ok:
                raise NodeFailed(made.failure or {})
            scope[joined] = view(made)

    async def output_joins(self, output: str, record: Record) -> dict[str, Any]:
        return await self.scope(f"output:{output}", record)

    @staticmethod
    def value(expression: Any, scope: dict[str, Any], what: str) -> Any:
        try:  # most values are one expression: evaluated without evaluate_value's frame and checks
            return expression.evaluate(scope) if type(expression) is Expression else evaluate_value(expression, scope)
        except jinja2.UndefinedError as exc:
            raise NodeFailed({"error": f"{what}: {exc.message}", "raw": None}) from None
        except (TypeError, ValueError, ArithmeticError, jinja2.TemplateError) as exc:  # 1/0, 2.0 ** 10**8
            raise NodeFailed({"error": f"{what}: {type(exc).__name__}: {exc}", "raw": None}) from None

    @staticmethod
    def present(tree: dict[str, Any], scope: dict[str, Any], what: str) -> dict[str, Any]:
        """`value` for a mapping whose absent keys are left out (a loop's trace): a field that fails
        fails the record, as in `value`, rather than the run."""
        try:
            return evaluate_present(tree, scope)
        except (TypeError, ValueError, ArithmeticError, jinja2.TemplateError) as exc:
            raise NodeFailed({"error": f"{what}: {type(exc).__name__}: {exc}", "raw": None}) from None

    # -- dispatch -------------------------------------------------------------------------------

    async def run(self, node: Node, record: Record, extra: dict[str, Any] | None = None,
                  item: str | None = None, lineage: dict[str, Any] | None = None) -> list[Record]:
        """The records `node` makes from `record` (in a loop body, `extra` holds state, loop and siblings,
        and `lineage` the loop's params and lineage scope, as `scope` takes them)."""
        if not node.loop:  # body nodes count in their loop's line
            self.progress.expect(node.name, 1)
        try:
            scope = self.unjoined_scope(record, extra, lineage)
            if self.graph.joins.get(node.name):  # most nodes have none: no coroutine made for them
                await self.add_joins(node.name, record, scope)
            if node.when is not None and not self.value(node.when, scope, "when"):
                made = [] if not node.loop else [record.child(node.name, {}, status="skipped")]
                if not node.loop:  # the record goes no further, as past a filter
                    self.progress.remove(node.name)
            else:
                made = self._run(node, record, scope, item or record.id)
                if not isinstance(made, list):
                    made = await made
        except NodeFailed as failed:
            made = [record.child(node.name, {}, failure={"stage": node.name, **failed.failure}, status="failed")]
        if not node.loop:
            self.progress.advance(node.name, all(r.ok for r in made))
        return made

    def _run(self, node: Node, record: Record, scope: dict[str, Any],
             item: str) -> list[Record] | Awaitable[list[Record]]:
        """The records the node makes, or for a node that calls models or loops, the coroutine that makes
        them: awaited by `run` itself, since every pause of a model call passes through each frame above it."""
        if isinstance(node, JudgeNode):
            return self.judge(node, record, scope, item)
        if isinstance(node, LLMNode):
            return self.llm(node, record, scope, item)
        if isinstance(node, PickNode):
            return [self.pick(node, record, scope)]
        if isinstance(node, FilterNode):
            if self.value(node.where_, scope, "where"):
                return [record.child(node.name, {})]
            if not node.loop:
                self.progress.remove(node.name)
            return []
        if isinstance(node, SwitchNode):
            return [self.switch(node, record, scope)]
        if isinstance(node, LoopNode):
            return LoopRun(self, node, record, scope).run()
        raise CodecError(f"node '{node.name}' of type {node.type} cannot run per record")

    # -- model calls ----------------------------------------------------------------------------

    def inputs(self, node: LLMNode, scope: dict[str, Any]) -> dict[str, Any]:
        return {name: self.value(expr, scope, f"input '{name}'") for name, expr in node.inputs.items()}

    def call(self, node: LLMNode, item: str, slot: int, inputs: dict[str, Any]) -> Awaitable[StepResult]:
        """One model call of a node, to await (an observer, such as `optimize`, sees its inputs now): the
        module's own coroutine, not one around it, since every pause of a call passes through each frame."""
        if self.observe:
            self.observe(node.name, inputs)
        return self.modules[node.name].run(item, slot, inputs)

    async def llm(self, node: LLMNode, record: Record, scope: dict[str, Any], item: str) -> list[Record]:
        result = await self.call(node, item, record.slot, self.inputs(node, scope))
        if not result.ok:
            return [_failed(record, node.name, result)]
        if node.explode is None:
            return [record.child(node.name, result.values, calls=result.calls)]
        items = result.values[node.explode.field]
        if not isinstance(items, list):
            return [_failed(record, node.name, StepResult(False, error=f"{node.explode.field} is not a list",
                                                          raw=result.raw, calls=result.calls))]
        if node.explode.limit is not None:
            items = items[: self.value(node.explode.limit, scope, "explode.limit")]
        # Exploded records are new texts: their calls need no slot of their own.
        return [record.child(node.name, {node.explode.as_: text}, id=f"{record.id}.i{j:02d}",
                             order=(*record.order, j), slot=0, calls=result.calls)
                for j, text in enumerate(items)]

    async def judge(self, node: JudgeNode, record: Record, scope: dict[str, Any], item: str) -> list[Record]:
        """Pointwise: one score. Pairwise: the pair scored in each order, the scores averaged, and
        gap = a - b; `unparsable: tie` turns an unparsable judgement into a gap of 0. One record, as a list."""
        low, high = self.graph.static(node.scale)
        inputs = {**self.inputs(node, scope), "scale_low": low, "scale_high": high}
        if not node.pair:
            result = await self.call(node, item, record.slot, inputs)
            return [record.child(node.name, result.values, calls=result.calls) if result.ok else
                    _failed(record, node.name, result)]
        a, b = (self.value(p, scope, "pair") for p in node.pair)
        first = self.call(node, item, record.slot, {**inputs, "answer_1": a, "answer_2": b})  # observed first
        swapped = None  # the second order beside the first, in a task of its own; the first in this one
        if self.graph.static(node.both_orders):
            swapped = _background(self.call(node, item, record.slot, {**inputs, "answer_1": b, "answer_2": a}))
        try:
            results = [await first]
            if swapped is not None:
                results.append(await swapped)
        except BaseException:
            await _stop([swapped] if swapped is not None else [])
            raise
        calls = [c for r in results for c in r.calls]
        bad = next((r for r in results if not r.ok), None)
        if bad is not None:
            if self.graph.static(node.unparsable) == "tie":
                values = {"a": None, "b": None, "gap": 0.0, "a_first": None, "b_first": None}
                return [record.child(node.name, values, calls=calls)]
            return [_failed(record, node.name, StepResult(False, error=bad.error, raw=bad.raw, calls=calls))]
        pairs = [(r.values["score_1"], r.values["score_2"]) for r in results]
        a_scores = [pairs[0][0], *([pairs[1][1]] if len(pairs) > 1 else [])]
        b_scores = [pairs[0][1], *([pairs[1][0]] if len(pairs) > 1 else [])]
        a_mean, b_mean = sum(a_scores) / len(a_scores), sum(b_scores) / len(b_scores)
        values = {"a": a_mean, "b": b_mean, "gap": a_mean - b_mean, "a_first": list(pairs[0]),
                  "b_first": list(pairs[1]) if len(pairs) > 1 else None}
        return [record.child(node.name, values, calls=calls)]

    # -- seeded draws and checks ----------------------------------------------------------------

    def pick(self, node: PickNode, record: Record, scope: dict[str, Any]) -> Record:
        choices = self.value(node.choices, scope, "from")
        if not choices:
            raise NodeFailed({"error": "nothing to pick from", "raw": None})
        loop = scope.get("loop")
        purpose = f"{node.name}/{loop['index']}" if loop is not None else node.name
        return record.child(node.name, {"value": rng_for(self.spec.seed, record.id, purpose).choice(list(choices))})

    def switch(self, node: SwitchNode, record: Record, scope: dict[str, Any]) -> Record:
        """The first case whose `when` holds (a case without `when` always does)."""
        for case in node.cases:
            if case.when is None or self.value(case.when, scope, f"case {case.name}"):
                values = {"case": case.name,
                          **{k: self.value(v, scope, f"case {case.name} set.{k}") for k, v in case.set.items()}}
                return record.child(node.name, values, status=case.exit or "ok")
        raise NodeFailed({"error": "no case matched", "raw": None})

    def source(self, node: SourceNode, options: Any) -> Iterator[Record]:
        """A file's records (ids from id_field, else their position), or the spec's inline records.
        The file is checked whole now; its records are then made one at a time as the run takes
        them, so memory does not grow with the file."""
        rows: Iterable[dict[str, Any]]
        if node.records is not None:
            rows = [{"id": str(r.get("id", f"r{i:04d}")), **{k: r.get(k) for k in node.fields}}
                    for i, r in enumerate(node.records)]
            count, sourced = len(rows), False
        else:
            path = seed_file(self.spec, node, options.seeds)
            count, rows = stream_records(path, node.fields, node.id_field, options.limit)
            sourced = True
        self.progress.expect(node.name, count)
        return self._source_records(node, rows, sourced)

    def _source_records(self, node: SourceNode, rows: Iterable[dict[str, Any]], sourced: bool) -> Iterator[Record]:
        for i, row in enumerate(rows):
            values = {k: row[k] for k in node.fields}
            yield Record(row["id"], node.name, values, order=(i,), sources=(row["id"],) if sourced else ())
            self.progress.advance(node.name)

    def mix(self, node: MixNode, collections: dict[str, Sequence[Record]],
            explain_empty: Callable[[str], str | None]) -> Iterator[Record]:
        """`count` records, each drawn with its own RNG (seed, record id, node): first each sample's
        size, then each field in order; identical records get distinct sample slots. Made one at a
        time as the run takes them (the checks are made now). A draw reads its collections as one,
        in order (a rounds pool: the earlier rounds' records); one from none (the pool of round 1)
        gives [] and draws nothing, so the other fields are drawn as if it were not there."""
        drawn = {name: chained([collections[n] for n in d.nodes]) for name, d in node.draws.items()}
        pools = {name: _sample_pool(drawn[name], d) for name, d in node.draws.items() if d.kind == "sample"}
        empty = [d.nodes for name, d in node.draws.items()
                 if d.nodes and (not drawn[name] or (d.kind == "sample" and not pools[name]))]
        if empty:
            if self.options.dry_run:  # a dry run stops where the cache ends
                return iter(())
            why = next(filter(None, map(explain_empty, empty[0])), None)
            names = "', '".join(empty[0])
            raise CodecError(why or f"node '{node.name}': nothing to draw from '{names}'")
        return self._mixed(node, drawn, pools)

    def _mixed(self, node: MixNode, drawn: dict[str, Sequence[Record]],
               pools: dict[str, list[tuple[Any, tuple[str, ...]]]]) -> Iterator[Record]:
        count = self.graph.static(node.count)
        self.progress.expect(node.name, count)  # counted as a source's records are (the manifest, the report)
        seen: dict[tuple, int] = {}
        for index in range(count):
            record_id = f"{node.id_prefix}{index:04d}"
            rng = rng_for(self.spec.seed, record_id, node.name)
            sizes = {}
            for name, draw in node.draws.items():
                if draw.kind == "sample" and draw.nodes:
                    low, high = _range(self.graph.static(draw.k))
                    sizes[name] = min(rng.randint(low, high), len(pools[name]))
            values: dict[str, Any] = {}
            sources: list[str] = []
            for name, draw in node.draws.items():
                if draw.kind == "choice":
                    chosen = rng.choice(drawn[name])
                    values[name] = field_of(chosen, draw.field)
                    sources += chosen.sources
                else:
                    picked = rng.sample(pools[name], sizes.get(name, 0))
                    values[name] = [value for value, _ in picked]
                    sources += [s for _, origin in picked for s in origin]
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items())
            slot = seen.get(key, 0)
            seen[key] = slot + 1
            self.progress.advance(node.name)
            yield Record(record_id, node.name, values, order=(index,), sources=tuple(dict.fromkeys(sources)), slot=slot)

    def dedup(self, node: DedupNode, records: list[Record], collections: dict[str, list[Record]]) -> list[Record]:
        """Keep a record when its text's ROUGE-L against every earlier kept text (and the `against`
        collections) stays below the threshold; stable order, so the result never depends on timing."""
        threshold = self.graph.static(node.threshold)
        pool = [tokens(str(field_of(r, f))) for other, f in node.against for r in collections[other]]
        kept = []
        for record in records:
            scope = {"params": self.params, **lineage_scope(record)}
            try:
                text = str(self.value(node.key, scope, "field"))
            except NodeFailed:
                continue
            mine = tokens(text)
            similarity = max((rouge_l(mine, other) for other in pool), default=0.0)
            if similarity < threshold:
                pool.append(mine)
                kept.append(record.child(node.name, {"similarity": similarity}))
        self.progress.expect(node.name, len(records))
        for _ in records:
            self.progress.advance(node.name)
        self.progress.remove(node.name, len(records) - len(kept))
        return kept


class LoopRun:
    """One loop record: iterations of the body until an exit case, a failure or `max`."""

    def __init__(self, runner: NodeRunner, node: LoopNode, record: Record, scope: dict[str, Any]):
        self.runner, self.node, self.record, self.scope = runner, node, record, scope
        self.trace: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        # every body node's scope starts from the same record's lineage: walked once, not per node and iteration
        self.lineage = {"params": runner.params, **lineage_scope(record)}

    async def run(self) -> list[Record]:
        node, runner = self.node, self.runner
        maximum = runner.graph.static(node.max)
        state = {k: runner.value(v, self.scope, f"state.{k}") for k, v in node.state.items()}
        emitted: list[Record] = []
        exit_name, failure, shown = None, None, {}
        for index in range(1, maximum + 1):
            loop = {"index": index, "first": index == 1, "last": index == maximum, "max": maximum}
            shown, exit_name, failure, calls = await self.iteration(state, loop)
            self.calls += calls
            after = {**self.scope, **shown, "loop": View({**loop, "calls": calls})}  # what `next` and the trace read
            following = None
            if not (exit_name or failure):
                try:
                    following = {**state, **{k: runner.value(v, after, f"next.{k}") for k, v in node.next.items()}}
                except NodeFailed as failed:  # fails the record, which keeps the iterations that ran and their calls
                    failure = {"stage": node.name, **failed.failure}
            if failure:
                after["loop"] = View({**loop, "calls": calls, "failure": failure})
            try:
                self.trace.append(runner.present(node.trace, after, "trace"))
            except NodeFailed as failed:
                failure = failure or {"stage": node.name, **failed.failure}
            if node.emit == "each":
                emitted.append(self.emit(index, exit_name, failure, _below(shown, state), each=True))
            if exit_name or failure:
                break
            state = following
        else:
            exit_name = node.exhausted
        if node.emit == "each":
            return emitted
        return [self.emit(len(self.trace), exit_name, failure, _below(shown, state))]

    def emit(self, iteration: int, exit_name: str | None, failure: dict | None, views: dict[str, Any],
             each: bool = False) -> Record:
        values = {"exit": exit_name if not failure else "failed", "iteration": iteration,
                  "iterations": list(self.trace)}
        changes: dict[str, Any] = {"calls": list(self.calls), "below": views,
                                   "status": "failed" if failure else exit_name or "ok", "failure": failure}
        if each:
            changes.update(id=f"{self.record.id}@{iteration}", order=(*self.record.order, iteration))
        return self.record.child(self.node.name, values, **changes)

    async def iteration(self, state: dict[str, Any], loop: dict[str, Any]) -> Iteration:
        """One pass of the body: nodes between checkpoints run concurrently as their inputs allow;
        a switch runs after everything declared before it, and its exit ends the iteration.
        Returns (what it showed: state, loop and the views of the body's records; exit name, failure,
        calls), the exit and failure None when absent."""
        node, runner = self.node, self.runner
        done: dict[str, Record] = {}
        item = f"{self.record.id}@{loop['index']}"
        # state, loop, and a view of each body record a sibling may read, added as each finishes
        extra: dict[str, Any] = {"state": View(state), "loop": View(loop)}
        segment: list[Node] = []
        for body_node in [*node.body.values(), None]:  # None: the end of the body closes the last segment
            if body_node is not None and not isinstance(body_node, SwitchNode):
                segment.append(body_node)
                continue
            await self.run_segment(segment, done, extra, item)
            segment = []
            failure = _first_failure(node, done)
            if failure or body_node is None:
                return extra, None, failure, _calls(node, done)
            (decided,) = await runner.run(body_node, self.record, extra, item, self.lineage)
            _finished(done, extra, body_node.name, decided)
            if not decided.ok:
                return extra, None, decided.failure, _calls(node, done)
            exits = decided.status != "ok"
            runner.progress.decide(decided.values["case"] if exits else f"{decided.values['case']}@{loop['index']}")
            if exits:
                return extra, decided.status, None, _calls(node, done)
        raise AssertionError("unreachable: the body's end returns")

    async def run_segment(self, segment: list[Node], done: dict[str, Record], extra: dict[str, Any],
                          item: str) -> None:
        """The segment's nodes, each as soon as the siblings it reads have finished. A node every later
        sibling waits for runs in this task, not a task of its own: nothing could start beside it, and a
        task is most of a small node's cost (CodecLM's body needs one task an iteration, not five)."""
        finished = {n.name: asyncio.get_running_loop().create_future() for n in segment}

        async def one(body_node: Node) -> None:
            outcome = finished[body_node.name]
            try:
                needs = self.runner.reads[body_node.name] & finished.keys()
                for name in needs:
                    await finished[name]
                if needs and any(done[name].status in ("failed", "blocked") for name in needs):
                    done[body_node.name] = self.record.child(body_node.name, {}, status="blocked")
                else:  # its scope is built from `extra` before the node's first pause: what has finished by then
                    (made,) = await self.runner.run(body_node, self.record, extra, item, self.lineage)
                    _finished(done, extra, body_node.name, made)
            except BaseException as exc:  # the run stops (a replay miss, Ctrl-C): siblings waiting on it too
                if not outcome.done():  # a waiter cancelled (Ctrl-C) cancels what it waits on
                    outcome.set_exception(exc)
                    outcome.exception()  # retrieved: whoever waits on it gets it, and no one waiting is fine
                raise
            if not outcome.done():
                outcome.set_result(None)

        started: list[asyncio.Future[Any]] = []
        try:
            for body_node, inline in zip(segment, self.runner.inline_plan(segment), strict=True):
                if inline:
                    await one(body_node)
                else:
                    started.append(_background(one(body_node)))
            for task in started:
                await task
        except BaseException:
            await _stop(started)
            raise


def _background(coroutine: Awaitable[Any]) -> asyncio.Future[Any]:
    """A task whose failure, if no one awaits it after another failure stopped its caller, is not
    logged as never retrieved: the caller's failure is the one that stops the run."""
    task = asyncio.ensure_future(coroutine)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def _stop(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel the tasks a record's work started beside it, and wait for them: its task stops (Ctrl-C, a
    fatal error), and the run closes its models and cache only once nothing is calling them."""
    unfinished = [task for task in tasks if not task.done()]
    for task in unfinished:
        task.cancel()
    if unfinished:
        await asyncio.wait(unfinished)


def seed_file(spec: Spec, node: SourceNode, replacement: Path | None) -> Path:
    """The file a source reads: its `path`, or `--seeds FILE` when the spec reads one file only."""
    if replacement is None:
        return node.path
    check_seeds_option(spec)
    return replacement


def _below(shown: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """What a loop record shows its descendants: the views of its last iteration's body, and its state."""
    return {**{k: v for k, v in shown.items() if k not in ("state", "loop")}, "state": View(state)}


def _shown(record: Record) -> bool:
    """Whether a body record is seen by its siblings, the trace and `next` (a skipped or blocked node is not)."""
    return record.ok and record.status not in ("skipped", "blocked")


def _finished(done: dict[str, Record], extra: dict[str, Any], name: str, record: Record) -> None:
    """A body node's record, and its view in the scope of the siblings that start after it."""
    done[name] = record
    if _shown(record):
        extra[name] = view(record)


def _first_failure(node: LoopNode, done: dict[str, Record]) -> dict[str, Any] | None:
    """The failure of the first body node, in declared order, that failed."""
    for name in node.body:
        record = done.get(name)
        if record is not None and record.failure is not None:
            return record.failure
    return None


def _calls(node: LoopNode, done: dict[str, Record]) -> list[dict[str, Any]]:
    """This iteration's calls, in the body's declared order."""
    return [c for name in node.body if name in done for c in done[name].calls]


def _failed(record: Record, node: str, result: StepResult) -> Record:
    return record.child(node, {}, calls=result.calls, failure=result.failure(node), status="failed")


def _range(k: Any) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else (k[0], k[1])


def _sample_pool(records: Iterable[Record], draw: Any) -> list[tuple[Any, tuple[str, ...]]]:
    """(value, sources) to sample from: list fields flattened, each value once when unique (its
    sources those of the first record that has it)."""
    pool: dict[Any, tuple[str, ...]] = {}
    values: list[tuple[Any, tuple[str, ...]]] = []
    for record in records:
        field_value = field_of(record, draw.field)
        items = field_value if draw.flatten and isinstance(field_value, list) else [field_value]
        for item in items:
            if draw.unique:
                pool.setdefault(item, record.sources)
            else:
                values.append((item, record.sources))
    return list(pool.items()) if draw.unique else values


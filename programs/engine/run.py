"""Run a checked graph: records stream from node to node, concurrently, on one event loop.

A record moves on as soon as its node is done with it. The only waits are the ones the
spec asks for: a node that reads a whole collection (a mix's `from`, a dedup) starts when
every record of that collection exists, and a join (CodecLM's rubrics, per pool entry) is
made on first need and shared. The hub bounds the calls per model; a window bounds the
records being worked on at once, so memory stays flat as the dataset grows.

The executor is this one class on asyncio; records are independent units of work (per-record
seeds, a content-addressed cache), so another executor can spread them over processes.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..artifacts.bundle import recorded_calls
from ..artifacts.manifest import build_manifest, code_sha
from ..artifacts.rundata import read_run_json
from ..artifacts.store import RunStore, check_out_folder
from ..errors import RUN_REPLAY_FIX, CodecError, SpecError, SpecErrors
from ..lang.nodes import DedupNode, LLMNode, MixNode, Node, SourceNode
from ..lang.spec import Spec
from ..models.backends import missing_key
from ..models.budget import BudgetTracker
from ..models.cache import CallCache, default_cache_dir
from ..models.hub import ModelHub
from . import event_loop
from .checks import check_source_files
from .drawn import DrawnCollection
from .llm import build_modules
from .nodes import NodeRunner
from .outputs import OutputWriter
from .progress import Progress
from .records import Record


@dataclass
class RunOptions:
    out: Path | None = None
    cache_dir: Path | None = None
    cache_mode: str = "live"  # live | replay | refresh
    seeds: Path | None = None  # replaces the path of the spec's file source
    limit: int | None = None  # records read per file source
    concurrency: int | None = None
    dry_run: bool = False
    overrides: list[str] = field(default_factory=list)
    progress: Progress | None = None
    recorded_run: Path | None = None  # in replay, a run to compare a cache miss with
    replay_fix: str = RUN_REPLAY_FIX  # what a replay's miss tells the user to do: the command's own words


@dataclass
class RunResult:
    out: Path | None
    counts: dict[str, int]
    manifest: dict[str, Any]
    calls: dict[str, Any]


def run_spec(spec: Spec, options: RunOptions, hub: ModelHub | None = None,
             observe: Any = None) -> RunResult:
    """Run a spec to completion and write its run directory (or, dry, count its calls).
    `observe(node, inputs)`, if given, sees every llm node's inputs (optimize collects them so)."""
    raise_open_file_limit()
    with run_gc():
        return event_loop.run(_run(spec, options, hub, observe))


def raise_open_file_limit(wanted: int = 8192) -> None:
    """Every call in flight holds a socket, and a run's files come on top: a soft limit of 256 (macOS)
    or 1024 ran out at a few hundred calls in flight. Raised towards the hard limit, once; best effort."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


# A run makes and drops container objects at a high rate (records, scopes, futures), nearly all
# freed young by reference counting; a young collection every 700 net allocations (Python's
# default) walked the records in flight again and again: 7% of the CPU of a 7,500-call run.
GC_YOUNG_THRESHOLD = 10_000


def gc_for_runs() -> tuple[int, ...]:
    """The garbage collector as a run wants it: the imports frozen, the youngest generation collected
    every GC_YOUNG_THRESHOLD allocations. Returns the thresholds it replaced."""
    freeze_imports()
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])
    return before


@contextmanager
def run_gc() -> Iterator[None]:
    """`gc_for_runs()` for the length of one run."""
    before = gc_for_runs()
    try:
        yield
    finally:
        gc.set_threshold(*before)


@lru_cache(maxsize=1)
def freeze_imports() -> None:
    """Move what exists before the first run (the imports: DSPy, aiohttp, Jinja, the spec) out of
    the cyclic garbage collector's sight, once per process. Each full collection walks every object
    it tracks, and these live as long as the process: frozen, the collector costs a third of what it
    did per call (benchmarks/RESULTS.md). No collection first: it cost 66 ms of CPU a run to free some
    600 objects of import-time garbage, which are now kept, frozen, for the life of the process."""
    gc.freeze()


async def _run(spec: Spec, options: RunOptions, hub: ModelHub | None, observe: Any) -> RunResult:
    check_source_files(spec, options.seeds)
    if not options.dry_run:  # before the cache folder is made: a refused run leaves nothing behind
        check_run_folders(run_folder(spec, options), None if hub else cache_folder(spec, options.cache_dir),
                          options.recorded_run)
    if options.cache_mode in ("live", "refresh") and not options.dry_run and hub is None:  # a hub given is the caller's
        check_keys(spec)
    async with opened_hub(spec, options.cache_dir, options.cache_mode, options.concurrency, hub,
                          dry_run=options.dry_run) as live_hub:
        live_hub.replay_fix = options.replay_fix
        manifest = options.recorded_run / "manifest.json" if options.recorded_run else None
        if manifest and manifest.is_file():
            live_hub.recorded = recorded_calls(options.recorded_run)
            recorded = read_run_json(manifest)
            recorded = recorded if isinstance(recorded, dict) else {}
            live_hub.code_changed = recorded.get("code_sha256") not in (None, code_sha())
            live_hub.recorded_stop = recorded.get("stopped")
        live_hub.budget = BudgetTracker(spec.budget) if spec.budget and not options.dry_run else None
        return await Engine(spec, options, live_hub, observe).run()


def run_folder(spec: Spec, options: RunOptions) -> Path:
    return options.out or Path("runs") / spec.name


def cache_folder(spec: Spec, cache_dir: Path | None) -> Path:
    """The cache a run opens: --cache-dir, else the spec's `cache:`, else the shared one."""
    return cache_dir or spec.cache_dir or default_cache_dir()


def check_run_folders(out: Path, cache_dir: Path | None, recorded_run: Path | None) -> None:
    """The run folder may be written (check_out_folder), and the cache folder is not inside it: a run folder
    holds the run's own files, so a cache made in it made the folder one codeclm would not write into."""
    check_out_folder(out, recorded_run)
    if cache_dir is None:
        return
    cache, run = Path(cache_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    if cache == run or run in cache.parents:
        raise SpecError(str(cache_dir), f"the cache folder is inside the run folder {out}: a run folder holds "
                        "only the run's own files", hint="pass a --cache-dir outside it (e.g. runs/.cache), "
                        f"or leave it out (the shared cache: {default_cache_dir()})")


def check_keys(spec: Spec) -> None:
    """Before a live run calls anything: every model it calls has its key in the environment (else
    every call would fail, one record at a time). A SpecError per model, at its line (exit 2)."""
    roles = sorted({node.model for node in spec.graph.model_nodes()})
    errors = [SpecError(str(spec.path), problem, line=spec.models[role].line,
                        hint="export the variable (or name another with api_key_env); --replay needs no key")
              for role in roles if (problem := missing_key(spec.models[role])) is not None]
    if errors:
        raise SpecErrors(errors)


@asynccontextmanager
async def opened_hub(spec: Spec, cache_dir: Path | None, cache_mode: str, concurrency: int | None,
                     hub: ModelHub | None = None, dry_run: bool = False) -> AsyncIterator[ModelHub]:
    """The given hub, or one on the spec's cache; closed (connections, cache) at the end."""
    cache = None
    if hub is None:
        cache = CallCache(cache_folder(spec, cache_dir), cache_mode)
        hub = ModelHub(spec.models, cache, concurrency=concurrency, dry_run=dry_run)
    try:
        yield hub
    finally:
        await hub.aclose()
        if cache is not None:
            cache.close()
        else:  # a hub of the caller's, which may never close its cache: write the last batch now
            hub.cache.flush()


def slim_fields(graph: Any) -> dict[str, set[str]]:
    """Collections whose readers only draw fields from them (mixes, a dedup's `against`): the
    fields read. Their records are kept on disk as just those values (no lineage, no calls), which
    is all a draw reads, so a collection of 100k encodings costs little. A dedup's own records stay whole."""
    whole = {n.for_each for n in graph.every.values() if isinstance(n, DedupNode)}
    fields: dict[str, set[str]] = {}
    for node in graph.every.values():
        if isinstance(node, MixNode):
            for draw in node.draws.values():
                for drawn in draw.nodes:
                    fields.setdefault(drawn, set()).add(draw.field)
            for source in node.sources:
                fields.setdefault(source, set())
        elif isinstance(node, DedupNode):
            for other, field_name in node.against:
                fields.setdefault(other, set()).add(field_name)
    return {name: wanted for name, wanted in fields.items() if name not in whole}


class _Ticket:
    """A root record's admission place: given back when every task its emission led to has ended."""

    __slots__ = ("release", "open", "closed")

    def __init__(self, release: Any):
        self.release, self.open, self.closed = release, 0, False

    def opened(self, task: asyncio.Task) -> None:
        self.open += 1
        task.add_done_callback(self._ended)

    def _ended(self, _task: asyncio.Task) -> None:
        self.open -= 1
        if self.open == 0 and self.closed:
            self.release()

    def close(self) -> None:
        """The root record is emitted (its first tasks exist): release once they, and theirs, end."""
        self.closed = True
        if self.open == 0:
            self.release()


_TICKET: ContextVar[_Ticket | None] = ContextVar("codeclm_root_ticket", default=None)


class Window:
    """Records worked on at once (a place each), and the records waiting for a place. A record is
    handed on to the next node only while fewer than `size` wait: a node that fans each record out
    into many (an explode) would otherwise queue a task for every record of every admitted root at
    once, and the run's memory would grow with the fan-out instead of staying within the window.
    A record counts as waiting from the moment its task is made (`queued`), not from when it runs."""

    def __init__(self, size: int):
        self.size, self.waiting = size, 0
        self.places = asyncio.Semaphore(size)
        self.blocked: deque[asyncio.Future] = deque()  # emitters waiting for room, first come first

    async def until_room(self) -> None:
        """Until fewer than `size` records wait. Each freed unit of room wakes one blocked emitter
        (waking them all made each wait several times over in a full window); checked again after
        the wake-up, since an emitter that never blocked may have taken the room first."""
        while self.waiting >= self.size:
            woken = asyncio.get_running_loop().create_future()
            self.blocked.append(woken)
            await woken

    def queued(self) -> None:
        self._waiting(+1)

    def unqueued(self) -> None:
        """A queued record stops waiting: it has its place, or needs none (a join made on first need)."""
        self._waiting(-1)

    def place(self) -> _Place:
        """A queued record's place (`async with`): it stops waiting once it has one."""
        return _Place(self)

    def _waiting(self, change: int) -> None:
        self.waiting += change
        room = self.size - self.waiting
        while room > 0 and self.blocked:
            woken = self.blocked.popleft()
            if not woken.done():  # not cancelled
                woken.set_result(None)
                room -= 1


class _Place:
    """`Window.place()`. A class, not an @asynccontextmanager: entered once per record, it costs a
    third as much (0.6 against 1.5 us)."""

    __slots__ = ("window",)

    def __init__(self, window: Window):
        self.window = window

    async def __aenter__(self) -> None:
        try:
            await self.window.places.acquire()
        finally:
            self.window.unqueued()

    async def __aexit__(self, *exc_info: object) -> None:
        self.window.places.release()


def item_window(spec: Spec, concurrency: int | None) -> int:
    """Records worked on at once: enough to keep every model busy, few enough that memory does
    not grow with the dataset (finished records go straight to disk)."""
    calls_in_flight = sum(concurrency or m.concurrency for m in spec.models.values())
    return max(64, 4 * calls_in_flight)


class Engine:
    """One run of a graph: starts the nodes that run once (sources, mixes, dedups), then every
    record a node emits is handed to the nodes that run per its records, as soon as it exists."""

    def __init__(self, spec: Spec, options: RunOptions, hub: ModelHub, observe: Any = None):
        self.spec, self.options, self.hub, self.graph = spec, options, hub, spec.graph
        self.progress = options.progress or Progress(stream=None)
        store = None if options.dry_run else RunStore(run_folder(spec, options),
                                                      protect=options.recorded_run)
        if store is not None:
            store.check_outputs(self.graph.outputs)
        self.outputs = OutputWriter(spec, store)
        self.nodes = NodeRunner(spec, hub, build_modules(spec, hub), self.progress, options, observe, self.join)
        self.collections = {c for n in self.graph.every.values() for c in n.collections}
        self.slim = slim_fields(self.graph)
        self.collected: dict[str, list[Record] | DrawnCollection] = {
            name: DrawnCollection(self.slim[name]) if name in self.slim else [] for name in self.collections}
        self.failed: Counter = Counter()
        self.first_failure: dict[str, str] = {}
        self.done = {name: asyncio.Event() for name in self.graph.nodes}
        self.pending: Counter = Counter()
        self.joined: dict[tuple[str, str], asyncio.Task] = {}
        self.window = Window(item_window(spec, options.concurrency))
        # root records (a source's, a mix's, a dedup's) whose work is under way: a 100k-line seed
        # file is read and emitted as places free up, so memory does not grow with it
        self.admission = asyncio.Semaphore(item_window(spec, options.concurrency))
        self.tasks: set[asyncio.Task] = set()
        self.error: BaseException | None = None

    async def run(self) -> RunResult:
        started = time.time()
        try:
            self.outputs.hold()  # before the first call: a second run into the folder is refused at once
            for node in self.graph.nodes.values():
                if node.for_each is None or isinstance(node, DedupNode):
                    self.spawn(self.start(node))
            try:
                if not await self.drain():
                    if self.hub.fatal is None and isinstance(self.error, CodecError) and self.outputs.opened:
                        self.outputs.finish()  # the records that did finish (and their failures) say why it stopped
                        self.outputs.write_stopped(str(self.error))
                    raise self.hub.fatal or self.error
                if self.hub.fatal:
                    raise self.hub.fatal
                counts = self.outputs.finish()
            finally:
                self.close_collections()  # no node reads them any more, whether the run ended or stopped
            # The data-quality metrics are a report on the written data (`codeclm report`, `inspect`,
            # the dataset card), not part of making it: a run does not load an embedding model for them.
            manifest = build_manifest(self.spec, self.options, self.hub, counts, time.time() - started,
                                      self.progress, self.outputs.failure_reasons, self.outputs.without_messages)
            self.outputs.write_manifest(manifest)
        except BaseException:  # a failure, a replay miss, Ctrl-C: the journals it began go, finished files stay
            self.outputs.abandon()
            raise
        finally:
            self.outputs.release()
        return RunResult(self.outputs.folder, counts, manifest, manifest["calls"])

    # -- tasks -----------------------------------------------------------------------------------

    async def drain(self) -> bool:
        """Wait until every spawned task is done; on the first error, cancel the rest. True if none failed."""
        try:
            while self.tasks and self.error is None:
                await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:  # Ctrl-C, SIGTERM: stop every record's task before the hub closes
            await self.cancel_tasks()  # (else they meet closed connections and are written as failures)
            raise
        if self.error is None:
            return True
        await self.cancel_tasks()
        return False

    async def cancel_tasks(self) -> None:
        """Stop every record's task, and the joins they started (each in a task of its own, shared): a join
        left running made its call after the run had stopped and wrote to the journals it had closed."""
        running = [*self.tasks, *(join for join in self.joined.values() if not join.done())]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def spawn(self, work: Any) -> None:
        """Run `work` as a task of this run: the first task that raises stops the run."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        ticket = _TICKET.get()  # set while a root record is emitted; its tasks' tasks inherit it
        if ticket is not None:
            ticket.opened(task)

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()

    # -- roots and barriers --------------------------------------------------------------------

    async def start(self, node: Node) -> None:
        """A node with no for_each (a source, a mix) or a dedup: waits for its collections, then emits."""
        for name in node.collections:
            if name:
                await self.done[name].wait()
        if not isinstance(node, SourceNode) and self.hub.budget is not None and self.hub.budget.reached:
            records = []  # the budget stopped the run: the collection may lack records, so do not draw from it
            self.hub.budget.nodes_not_started.add(node.name)  # the stop message and the manifest name it
        elif isinstance(node, SourceNode):
            records = self.nodes.source(node, self.options)
        elif isinstance(node, MixNode):
            records = self.nodes.mix(node, {n: self.records_of(n) for n in node.collections}, self.explain_empty)
        else:
            records = self.nodes.dedup(node, self.records_of(node.for_each), {n: self.records_of(n)
                                                                          for n in node.collections if n})
        for record in records:  # each root record and all the work it leads to hold one admission place
            await self.admission.acquire()
            ticket = _Ticket(self.admission.release)
            token = _TICKET.set(ticket)
            try:
                await self.emit(node, record)
            finally:
                _TICKET.reset(token)
                ticket.close()
        self.done[node.name].set()
        self.settle_children(node.name)

    def records_of(self, name: str) -> Sequence[Record]:
        """A whole collection, in its records' stable order (never the order they finished in)."""
        collected = self.collected[name]
        if isinstance(collected, DrawnCollection):
            return collected.in_order()
        return sorted(collected, key=lambda r: r.order)

    def close_collections(self) -> None:
        for collected in self.collected.values():
            if isinstance(collected, DrawnCollection):
                collected.close()
        self.collected.clear()

    def explain_empty(self, name: str) -> str | None:
        """Why a collection is empty: its node's failures (the run stops with the first of them)."""
        if not self.failed[name]:
            return None
        where = self.outputs.file_of(name)
        return (f"node '{name}': all {self.failed[name]} records failed, the first with: {self.first_failure[name]}"
                + (f"; each failure is in {where}" if where else ""))

    # -- records flowing ------------------------------------------------------------------------

    async def emit(self, node: Node, record: Record) -> None:
        """A record a node finished: to the outputs, to collections, and on to the nodes per its records."""
        await self.outputs.write(node.name, record, self.nodes.output_joins)
        if not record.ok:
            self.failed[node.name] += 1
            self.first_failure.setdefault(node.name, str((record.failure or {}).get("error")))
            return
        if node.name in self.collections:
            self.collected[node.name].append(record)  # a DrawnCollection keeps what draws read
        for child in self.graph.children.get(node.name, []):
            target = self.graph.every[child]
            if isinstance(target, DedupNode) or (isinstance(target, LLMNode) and target.lazy):
                continue
            self.pending[child] += 1
            await self.window.until_room()  # the emitter holds no place: the records waiting for one go first
            self.hand_on(target, record)

    def hand_on(self, node: Node, record: Record) -> None:
        """A task for `node` to run on `record`, counted as waiting for a place until it has one."""
        self.window.queued()
        self.spawn(self.process(node, record))

    async def process(self, node: Node, record: Record) -> None:
        try:
            if node.name in self.nodes.join_targets:
                self.window.unqueued()
                results = [await self.join(node.name, record)]
            else:
                async with self.window.place():
                    results = await self.nodes.run(node, record)
            for result in results:
                await self.emit(node, result)
        finally:
            self.pending[node.name] -= 1
            self.settle(node.name)

    async def join(self, name: str, anchor: Record) -> Record:
        """The record of per-record node `name` for `anchor`: made once, on first need, then shared."""
        key = (name, anchor.id)
        if key not in self.joined:
            node = self.graph.every[name]
            self.joined[key] = asyncio.ensure_future(self._made_join(node, anchor))
        return await asyncio.shield(self.joined[key])

    async def _made_join(self, node: Node, anchor: Record) -> Record:
        (record,) = await self.nodes.run(node, anchor)
        if isinstance(node, LLMNode) and node.lazy:  # an eager join is emitted by `process`
            await self.outputs.write(node.name, record, self.nodes.output_joins)
        return record

    def settle(self, name: str) -> None:
        node = self.graph.every[name]
        if node.for_each and self.done[node.for_each].is_set() and self.pending[name] == 0 \
                and not self.done[name].is_set() and not isinstance(node, DedupNode):
            self.done[name].set()
            self.settle_children(name)

    def settle_children(self, name: str) -> None:
        for child in self.graph.children.get(name, []):
            self.settle(child)



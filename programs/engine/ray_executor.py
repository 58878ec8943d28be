"""The Ray executor (`codeclm run --executor ray`): the same graph, the same dataset, more processes.

What runs where
---------------
- The driver (this process) runs the local `Engine` unchanged for everything that needs every
  record at once: sources, mixes, dedups (the barriers), the outputs and the manifest.
- Every record a barrier emits is a unit of work: `(child node, record)`. A `RecordWorker` actor
  (its own asyncio loop, its own DSPy modules and HTTP clients) runs the unit through the
  barrier-free part of the graph below it (loops and lazy joins included) with the engine's own
  `Engine.process`/`emit` code, and sends back every record it made, in the order it made them,
  with its progress events and call accounting. The driver writes those records to the outputs
  and collections exactly as the local engine would have. Records are identified structurally and
  every draw is seeded by (seed, record id, purpose), and outputs are sorted by structural order
  at the end, so which worker ran what, and when, cannot change a byte of the dataset.

One cache of record: a coordinator actor owns it
------------------------------------------------
`CallCoordinator` is one async actor, pinned to the driver's node, that owns the run's diskcache
folder (the same `CallCache` the local executor opens), so SQLite only ever lives on the
driver's local disk, never on a network file system, and after the run a local `--replay` (no
Ray) reads the very folder. The same actor is

- the in-flight dedup: a worker `claim`s a key; the first claimant owns the call, later ones wait
  for its result (or its error, which becomes their failure, as in the local hub), so identical
  calls anywhere in the cluster reach the model once;
- the global limiter: a model's `concurrency` is one semaphore per role in the actor, held across
  the attempt exactly where the local hub holds its own, and `rpm` is one schedule per role; so
  the limits hold across all workers, not per worker;
- the fault boundary: claims and slots are held per worker (`owner`); when a worker dies the
  driver calls `forget(owner)`, which frees its slots and hands its in-flight keys to the next
  claimant. Only the dead worker's in-flight calls are lost; its units are run again elsewhere,
  and everything it finished is already in the cache.

A model call costs a claim (which also takes the slot of the first attempt when one is free) and a
put (which also frees the slot of the attempt that succeeded); a worker sends the claims and the
puts of one turn of its event loop as one message each (`_Batches`); a key in flight elsewhere, a
slot that is not free and a retry's slot each cost a message of their own.

Why an actor and not per-worker caches merged by content key at the end: those give no
cross-worker dedup while running (the limits would need an actor anyway), lose a killed worker's
finished calls unless its folder survives it, and need the merge before a replay can read one
folder. The actor's price, measured on this 2-core VM (benchmarks/RESULTS.md, "The Ray
executor"): about 1 ms per round trip, 9,900 calls/s (claim and put) when batched, and 0.8-2.1 ms
of CPU per call in all of Ray's processes against 0.55 ms for the local executor; negligible next
to a model call of 100 ms or more, and the serial point at 1M calls on many nodes (one event
loop: about 10,000 calls/s for the whole cluster), where sharding it by key prefix comes next.

The seam
--------
Nothing in the engine's files knows about Ray: `cli.py` calls `run_on_ray` for `--executor ray`.
The price is that `RayEngine` and `UnitEngine` subclass `Engine` and rely on its per-record
methods (`process`, `emit`, `join`, `_made_join`, `spawn`, `settle`) and the attributes they read;
tests/test_ray_executor.py compares every output with the local executor's, so a change there
that breaks this shows up as a failing test, not as a different dataset.

What is not the same as the local executor
------------------------------------------
- Replay misses in a Ray run say only that the call is missing (`codeclm replay` locally explains
  what changed); a dry run (`--dry-run`) and `optimize` always run locally.
- "A model that never answered fails its queued calls at once" is tracked per worker.
- Accounting of a worker that was killed: the calls it made and cached before dying are not in
  the manifest's call counts (they are in the cache, and the rerun of its units counts them as
  cache hits).
- Progress moves when a unit comes back (a pool entry's whole loop, in CodecLM), not per call.
- A join needed by records of two different units is made in both (its calls reach the model
  once: the second is answered by the first, counted as shared), so shared calls can exceed the
  local run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CodecError, ModelCallError, ModelCrashed, ReplayMiss, SpecError
from ..lang.nodes import DedupNode, LLMNode, Node
from ..lang.spec import Spec, load_spec
from ..models.backends import CallParams
from ..models.cache import CallCache, CallIdentity, default_cache_dir
from ..models.hub import CallContext, ModelHub, _LoopState, is_recorded_failure
from ..redact import redact_text
from . import event_loop
from .checks import check_source_files
from .llm import build_modules
from .nodes import NodeRunner
from .progress import Progress
from .records import Record
from .run import Engine, RunOptions, RunResult, Window, check_keys, gc_for_runs, raise_open_file_limit, run_gc

WORKERS_ENV = "CODECLM_RAY_WORKERS"  # worker actors [default: the cluster's CPUs]
MAX_REPLACEMENTS = 8  # dead workers replaced per run before the run gives up

_LIVE_WORKERS: list[Any] = []  # the current run's worker handles (tests kill one; operators may look)
# the last Ray run's own figures: workers_ready_s, replaced (dead workers), peak (slots in use per role),
# left (slots still held at the end, and claims open: none when nothing leaked)
LAST_RUN: dict[str, Any] = {}


def live_workers() -> list[Any]:
    return list(_LIVE_WORKERS)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError("--executor", "the Ray executor needs Ray, which is not installed",
                        hint="pip install 'codeclm[ray]'") from None
    return ray


# -- the coordinator: cache of record, in-flight dedup, global limits --------------------------------

class CallCoordinator:
    """One per run, an async Ray actor on the driver's node (see the module docstring)."""

    def __init__(self, cache_dir: str, mode: str, limits: dict[str, tuple[int, int | None]]):
        self.cache = CallCache(Path(cache_dir), mode)
        self.mode = mode
        self.inflight: dict[str, tuple[str, asyncio.Future]] = {}
        self.limits = limits
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        self.held: dict[str, Counter] = defaultdict(Counter)  # owner -> role -> slots held
        self.in_use: Counter = Counter()
        self.max_in_use: Counter = Counter()
        self.next_slot_at: dict[str, float] = defaultdict(float)
        self.dead: set[str] = set()
        self.failed: dict[str, str] = {}  # call key -> error: the calls of this run that failed for good
        # hash() of each call key answered in this run -> the worker it was answered to first (a dead one's
        # accounting is lost with it: its units' rerun counts the call again, as a cache hit)
        self.served: dict[int, str] = {}

    def _semaphore(self, role: str) -> asyncio.Semaphore:
        if role not in self.semaphores:
            self.semaphores[role] = asyncio.Semaphore(self.limits[role][0])
        return self.semaphores[role]

    async def claim(self, key: str, owner: str, role: str | None = None) -> tuple[str, Any]:
        """("hit", entry) | ("dedup", entry: answered before in this run) | ("error", exc) | in replay
        ("failed", the recorded run's error) or ("miss", None) | ("own", slot):
        the caller makes the call; with `role`, the slot of its first attempt comes with it (True), one
        round trip instead of two."""
        while True:
            entry = self.cache.get(key)
            if entry is not None:
                return self._hit(key, owner), entry
            if self.mode == "replay" or key in self.failed:
                return self._unanswered(key)
            if key in self.inflight:
                outcome = await asyncio.shield(self.inflight[key][1])
                if outcome[0] == "retry":  # its owner died: claim again
                    continue
                return outcome
            if owner in self.dead:  # a claim of a dead worker that waited: it must not own a key nobody will settle
                return "error", ModelCallError("this worker was declared dead by the driver")
            self.inflight[key] = (owner, asyncio.get_running_loop().create_future())
            return "own", (await self.acquire(role, owner)) if role else False

    async def claim_many(self, items: list[tuple[str, str | None]], owner: str) -> list[tuple[str, Any]]:
        """The claims a worker made in one turn of its loop, in one message. Each is answered without
        waiting: ("wait", None) for a key in flight elsewhere (the worker then claims it alone, and
        waits there), ("own", False) when no slot is free now (its first attempt waits for one)."""
        answers = []
        for key, role in items:
            entry = self.cache.get(key)
            if entry is not None:
                answers.append((self._hit(key, owner), entry))
            elif self.mode == "replay" or key in self.failed:
                answers.append(self._unanswered(key))
            elif key in self.inflight:
                answers.append(("wait", None))
            elif owner in self.dead:
                answers.append(("error", ModelCallError("this worker was declared dead by the driver")))
            else:
                self.inflight[key] = (owner, asyncio.get_running_loop().create_future())
                free = role is not None and not self._semaphore(role).locked()
                answers.append(("own", (await self.acquire(role, owner)) if free else False))  # never waits
        return answers

    def put_many(self, puts: list[tuple[str, str, dict[str, Any], str | None]], owner: str) -> None:
        for key, model, entry, release in puts:
            self.put(key, owner, model, entry, release)

    def put(self, key: str, owner: str, model: str, entry: dict[str, Any], release: str | None = None) -> None:
        """Store a completion, hand it to the waiters, and free the slot its attempt held (`release`)."""
        if release:
            self.release(release, owner)
        self.cache.put(key, model, entry)
        self.served[hash(key)] = owner
        self._settle(key, owner, ("dedup", entry))

    def _hit(self, key: str, owner: str) -> str:
        """A cached call's kind, as ModelHub.first_answer tells it: "hit" its first time in this run,
        "dedup" (counted shared) after, unless the worker that counted it first has died since."""
        fingerprint = hash(key)
        first = self.served.get(fingerprint)
        if first is not None and first not in self.dead:
            return "dedup"
        self.served[fingerprint] = owner
        return "hit"

    def _unanswered(self, key: str) -> tuple[str, Any]:
        """A call the cache holds no answer for, in replay or after it failed earlier in this run (one
        outcome per call in a run): its recorded failure, or a miss."""
        if key in self.failed:
            return "failed", self.failed[key]
        failed = self.cache.failure(key)
        return ("miss", None) if failed is None else ("failed", failed["error"])

    def abandon(self, key: str, owner: str, error: BaseException | None, model: str = "?") -> None:
        """The owner's call failed (its error is the waiters' failure too, and kept for replay) or was
        cancelled (they retry). A worker that no longer owns the call (declared dead, its call handed on)
        settles nothing, and its error is not the call's."""
        held = self.inflight.get(key)
        if held is None or held[0] != owner:
            return
        if error is not None and is_recorded_failure(error):
            self.failed[key] = redact_text(str(error))
            self.cache.put_failure(key, model, self.failed[key])
        self._settle(key, owner, ("error", error) if error is not None else ("retry", None))

    def _settle(self, key: str, owner: str, outcome: tuple[str, Any]) -> None:
        held = self.inflight.get(key)
        if held is not None and held[0] == owner:
            del self.inflight[key]
            held[1].set_result(outcome)

    async def acquire(self, role: str, owner: str) -> bool:
        await self._semaphore(role).acquire()
        if owner in self.dead:  # it died while waiting: the slot goes back at once
            self._semaphore(role).release()
            return False
        self.held[owner][role] += 1
        self.in_use[role] += 1
        self.max_in_use[role] = max(self.max_in_use[role], self.in_use[role])
        return True

    def release(self, role: str, owner: str) -> None:
        if self.held[owner][role] > 0:
            self.held[owner][role] -= 1
            self.in_use[role] -= 1
            self._semaphore(role).release()

    def rpm_delay(self, role: str) -> float:
        """Seconds to wait before the next request to `role`, on one schedule for the whole cluster."""
        rpm = self.limits[role][1]
        if not rpm:
            return 0.0
        now = time.monotonic()
        start = max(now, self.next_slot_at[role])
        self.next_slot_at[role] = start + 60.0 / rpm
        return start - now

    def forget(self, owner: str) -> None:
        """A worker died: free its slots, and let the next claimant of each of its keys make the call."""
        self.dead.add(owner)
        for role, count in self.held.pop(owner, Counter()).items():
            for _ in range(count):
                self.in_use[role] -= 1
                self._semaphore(role).release()
        for key, (holder, _) in list(self.inflight.items()):
            if holder == owner:
                self._settle(key, owner, ("retry", None))

    def peak(self) -> dict[str, int]:
        return dict(self.max_in_use)

    def in_flight(self) -> dict[str, int]:
        """Slots held now (0 for every role once a run is over: none leaked)."""
        return {role: n for role, n in self.in_use.items() if n} | {f"calls:{len(self.inflight)}": 0}

    def close(self) -> None:
        self.cache.close()


# -- the hub a worker (and the driver) calls through -------------------------------------------------

class _RemoteCache:
    """What the manifest and the hub read of a cache the coordinator owns."""

    def __init__(self, folder: Path, mode: str):
        self.folder, self.mode = folder, mode


@dataclass
class _CallSlot:
    """One call's slot bookkeeping: the first attempt's slot came with the claim (`prepaid`); the
    slot of the attempt that succeeded is freed by the `put` that stores its result (`owed`)."""

    prepaid: bool = False
    succeeded: bool = False
    owed: bool = False


_CALL_SLOT: ContextVar[_CallSlot | None] = ContextVar("codeclm_ray_slot", default=None)


class _GlobalSlot:
    """`async with` one of a role's slots in the coordinator (the local hub's semaphore, cluster-wide)."""

    def __init__(self, hub: CoordinatedHub, role: str):
        self.hub, self.role = hub, role

    async def __aenter__(self) -> None:
        call = _CALL_SLOT.get()
        if call is not None:
            call.succeeded = False
            if call.prepaid:
                call.prepaid = False
                return
        if not await self.hub.coordinator.acquire.remote(self.role, self.hub.owner):
            raise ModelCallError("this worker was declared dead by the driver")

    async def __aexit__(self, exc_type: Any, *exc: object) -> None:
        call = _CALL_SLOT.get()
        if call is not None and exc_type is None and call.succeeded:
            call.owed = True  # released by the put, one round trip less
            return
        self.hub.coordinator.release.remote(self.role, self.hub.owner)


class _Batches:
    """A worker's claims and puts of one turn of its event loop, sent as one message each
    (`claim_many`, `put_many`): fewer messages, the same answers. Puts are not awaited one by one;
    `drain` waits for them (a unit returns only once its calls are in the cache of record)."""

    def __init__(self, hub: CoordinatedHub):
        self.hub = hub
        self.claims: list[tuple[str, str, asyncio.Future]] = []
        self.puts: list[tuple[str, str, dict[str, Any], str | None]] = []
        self.sent: list[Any] = []  # put_many refs not yet known to have arrived
        self.scheduled = False

    def claim(self, key: str, role: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.claims.append((key, role, future))
        self._schedule()
        return future

    def put(self, key: str, model: str, entry: dict[str, Any], release: str | None) -> None:
        self.puts.append((key, model, entry, release))
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        claims, puts, self.claims, self.puts = self.claims, self.puts, [], []
        coordinator, owner = self.hub.coordinator, self.hub.owner
        if puts:  # before the claims: a claim of a key this worker just stored is a hit
            self.sent.append(coordinator.put_many.remote(puts, owner))
        if claims:
            asyncio.ensure_future(self._answer(coordinator.claim_many.remote([(k, r) for k, r, _ in claims], owner),
                                               claims))

    @staticmethod
    async def _answer(ref: Any, claims: list[tuple[str, str, asyncio.Future]]) -> None:
        try:
            answers = await ref
        except BaseException as exc:  # noqa: BLE001 - every claim of the message fails with it
            for _, _, future in claims:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), answer in zip(claims, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    async def drain(self) -> None:
        if self.puts:
            self._flush()
        sent, self.sent = self.sent, []
        await asyncio.gather(*sent)


class CoordinatedHub(ModelHub):
    """The local hub's call path (retries, timeouts, accounting) with the cache, the in-flight
    dedup and the limits moved into the coordinator. `lookup` records the call and defers the cache
    read to `fetch`, which is async and so can ask the coordinator without blocking the loop."""

    def __init__(self, spec: Spec, coordinator: Any, owner: str, cache_dir: Path, mode: str,
                 concurrency: int | None):
        super().__init__(spec.models, _RemoteCache(cache_dir, mode), concurrency=concurrency)  # type: ignore[arg-type]
        self.coordinator, self.owner = coordinator, owner
        self.batches = _Batches(self)

    def lookup(self, role: str, messages: list[dict[str, str]], params: dict[str, Any],
               ctx: CallContext) -> tuple[CallIdentity, dict[str, Any] | None]:
        return self.record_call(self.backend(role), messages, params, ctx), None

    async def fetch(self, role: str, identity: CallIdentity, messages: list[dict[str, str]], params: dict[str, Any],
                    ctx: CallContext) -> dict[str, Any]:
        backend = self.backend(role)
        stat = (ctx.stage, role)
        kind, value = await self.batches.claim(identity.key, role)
        if kind == "wait":  # in flight elsewhere: wait for it alone, not in a batch
            kind, value = await self.coordinator.claim.remote(identity.key, self.owner, role)
        if kind in ("hit", "dedup"):  # the coordinator tells a call's first answer in the run from a repeat
            if kind == "hit":
                self.count_hit(stat, backend.name, value)
            else:
                self._count(stat, "shared")
            ctx.raw = value["text"]
            return value
        if kind == "error":
            raise value
        if kind == "failed":  # the call failed for good in the recorded run (replay) or earlier in this one
            self._count(stat, "failures")
            raise ModelCallError(value)
        if kind == "miss":
            self.fatal = self.fatal or ReplayMiss(ctx.stage, ctx.item, backend.name,
                                                  "the cache of record does not hold it (run `codeclm replay "
                                                  "RUN_DIR` without Ray to see what changed)")
            raise self.fatal
        call = _CallSlot(prepaid=bool(value))
        token, entry = _CALL_SLOT.set(call), None
        try:
            completion = await self._with_retries(role, backend, messages, CallParams(params, identity.seed()), stat)
            entry = completion.to_entry()
        except ModelCrashed as exc:
            self.coordinator.abandon.remote(identity.key, self.owner, exc)
            self.fatal = self.fatal or exc
            raise self.fatal from None
        except asyncio.CancelledError:
            self.coordinator.abandon.remote(identity.key, self.owner, None)
            raise
        except Exception as exc:
            self.coordinator.abandon.remote(identity.key, self.owner, exc, backend.name)
            raise
        finally:
            _CALL_SLOT.reset(token)
            if call.prepaid or (call.owed and entry is None):  # a slot no attempt gave back
                self.coordinator.release.remote(role, self.owner)
        self.batches.put(identity.key, backend.name, entry, role if call.owed else None)
        ctx.raw = entry["text"]
        return entry

    async def _attempt(self, *args: Any, **kwargs: Any) -> Any:
        completion = await super()._attempt(*args, **kwargs)
        call = _CALL_SLOT.get()
        if call is not None:
            call.succeeded = True
        return completion

    def _state(self) -> _LoopState:
        state = super()._state()
        state.semaphores = {role: _GlobalSlot(self, role) for role in self.models}  # type: ignore[misc]
        return state

    async def _respect_rpm(self, role: str, spec: Any, state: _LoopState) -> None:
        if spec.rpm:
            delay = await self.coordinator.rpm_delay.remote(role)
            if delay > 0:
                await asyncio.sleep(delay)

    def take_accounting(self) -> tuple[dict, dict, dict]:
        """The counters since the last take (each unit returns what accrued while it ran)."""
        with self._lock:
            taken = ({k: dict(v) for k, v in self.stats.items()}, dict(self.cost), dict(self.saved))
            self.stats.clear()
            self.cost.clear()
            self.saved.clear()
        return taken

    def add_accounting(self, stats: dict, cost: dict, saved: dict) -> None:
        with self._lock:
            for key, counter in stats.items():
                self.stats[key].update(counter)
            for key, value in cost.items():
                self.cost[key] += value
            for key, value in saved.items():
                self.saved[key] += value


# -- a worker: runs units --------------------------------------------------------------------------

class _Recording(Progress):
    """A unit's progress, as events for the driver's display and manifest."""

    def __init__(self) -> None:
        super().__init__(stream=None)
        self.events: list[tuple[str, tuple]] = []

    def expect(self, stage: str, count: int) -> None:
        self.events.append(("expect", (stage, count)))

    def advance(self, stage: str, ok: bool = True) -> None:
        self.events.append(("advance", (stage, ok)))

    def decide(self, decision: str) -> None:
        self.events.append(("decide", (decision,)))


class _Collector:
    """The outputs, as a worker sees them: every record emitted, in order, for the driver."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, Record]] = []

    async def write(self, node: str, record: Record, joins: Any) -> None:
        self.emitted.append((node, record))


class UnitEngine(Engine):
    """The engine's per-record path (`process`, `emit`, `join`) for one unit: no store, no barriers."""

    def __init__(self, spec: Spec, hub: ModelHub, modules: dict, options: RunOptions):
        self.spec, self.options, self.hub, self.graph = spec, options, hub, spec.graph
        self.progress = _Recording()
        self.outputs = _Collector()  # type: ignore[assignment]
        self.nodes = NodeRunner(spec, hub, modules, self.progress, options, None, self.join)
        self.collections: set[str] = set()
        self.collected: dict[str, list[Record]] = {}
        self.slim: dict[str, set[str]] = {}
        self.failed: Counter = Counter()
        self.first_failure: dict[str, str] = {}
        self.pending: Counter = Counter()
        self.joined: dict[tuple[str, str], asyncio.Task] = {}
        self.window = Window(1 << 20)  # the driver bounds the units in flight
        self.tasks: set[asyncio.Task] = set()
        self.error: BaseException | None = None

    def settle(self, name: str) -> None:  # barriers are the driver's
        pass

    async def run_unit(self, node: Node, record: Record) -> dict[str, Any]:
        self.hand_on(node, record)
        if not await self.drain():
            raise self.hub.fatal or self.error
        lazy = {name for name, n in self.graph.every.items() if isinstance(n, LLMNode) and n.lazy}
        return {"emitted": [(n, r) for n, r in self.outputs.emitted if n not in lazy],
                "joined": {key: task.result() for key, task in self.joined.items()},
                "progress": self.progress.events}


def _portable(exc: BaseException) -> tuple[str, Any]:
    """An error that stops the run, in a form that crosses processes (ReplayMiss has its own init)."""
    if isinstance(exc, ReplayMiss):
        return "replay", (exc.stage, exc.item, exc.model, exc.reason, exc.fix)
    if isinstance(exc, CodecError):
        return "codec", (type(exc).__name__, str(exc))
    return "other", f"{type(exc).__name__}: {exc}"


def _restored(fatal: tuple[str, Any]) -> BaseException:
    kind, value = fatal
    if kind == "replay":
        return ReplayMiss(*value)
    if kind == "codec":
        return ModelCrashed(value[1]) if value[0] == "ModelCrashed" else CodecError(value[1])
    return CodecError(f"a Ray worker failed: {value}")


class RecordWorker:
    """A Ray actor: its own event loop, modules and model clients; runs units as they come."""

    def __init__(self, spec_path: str, overrides: list[str], cwd: str, coordinator: Any, owner: str,
                 cache_dir: str, mode: str, concurrency: int | None):
        os.chdir(cwd)  # the spec's relative paths, as the driver reads them
        self.spec = load_spec(spec_path, overrides)
        self.hub = CoordinatedHub(self.spec, coordinator, owner, Path(cache_dir), mode, concurrency)
        self.modules = build_modules(self.spec, self.hub)
        self.options = RunOptions(cache_mode=mode, concurrency=concurrency)
        gc_for_runs()  # as in a local run, for the life of this process (it runs only units)

    def ready(self) -> int:
        return os.getpid()

    async def run_unit(self, node_name: str, record: Record) -> dict[str, Any]:
        try:
            done = await UnitEngine(self.spec, self.hub, self.modules, self.options).run_unit(
                self.spec.graph.every[node_name], record)
        except Exception as exc:  # noqa: BLE001 - the driver stops the run on it, with the cause
            done = {"fatal": _portable(self.hub.fatal or exc)}
        await self.hub.batches.drain()  # its calls are in the cache of record before the driver hears of it
        done["accounting"] = self.hub.take_accounting()
        return done

    async def close(self) -> None:
        await self.hub.aclose()


# -- the driver ------------------------------------------------------------------------------------

@dataclass
class _Worker:
    handle: Any
    owner: str
    running: int = 0
    dead: bool = False


class WorkerPool:
    def __init__(self, ray: Any, make: Any, size: int):
        self.ray, self.make, self.replaced = ray, make, 0
        self.workers = [self._new() for _ in range(size)]

    def _new(self) -> _Worker:
        owner = uuid.uuid4().hex
        worker = _Worker(self.make(owner), owner)
        _LIVE_WORKERS.append(worker.handle)
        return worker

    def pick(self) -> _Worker:
        return min((w for w in self.workers if not w.dead), key=lambda w: w.running)

    def lost(self, worker: _Worker, coordinator: Any) -> None:
        if worker.dead:
            return
        worker.dead = True
        if worker.handle in _LIVE_WORKERS:
            _LIVE_WORKERS.remove(worker.handle)
        coordinator.forget.remote(worker.owner)
        if self.replaced >= MAX_REPLACEMENTS:
            if not any(not w.dead for w in self.workers):
                raise CodecError(f"Ray workers keep dying ({self.replaced} replaced); rerun the same "
                                 "command to resume from the cache")
            return
        self.replaced += 1
        self.workers.append(self._new())

    def live(self) -> Iterable[_Worker]:
        return [w for w in self.workers if not w.dead]


class RayEngine(Engine):
    """The local engine for barriers and outputs; each record a node would process is sent to a worker
    with everything below it that needs no barrier."""

    def __init__(self, spec: Spec, options: RunOptions, hub: CoordinatedHub, ray: Any, pool: WorkerPool,
                 coordinator: Any):
        super().__init__(spec, options, hub)
        self.ray, self.pool, self.coordinator = ray, pool, coordinator
        self.lazy = {name for name, n in self.graph.every.items() if isinstance(n, LLMNode) and n.lazy}
        errors = ray.exceptions
        self.lost_worker = tuple(getattr(errors, name) for name in ("RayActorError", "WorkerCrashedError",
                                                                    "ActorUnavailableError") if hasattr(errors, name))

    def below(self, name: str) -> list[str]:
        """The per-record nodes a unit started at `name` runs (itself excluded), parents first."""
        found, queue = [], [name]
        while queue:
            for child in self.graph.children.get(queue.pop(0), []):
                target = self.graph.every[child]
                if isinstance(target, DedupNode) or child in self.lazy or child in found:
                    continue
                found.append(child)
                queue.append(child)
        return found

    async def process(self, node: Node, record: Record, *_: Any, **__: Any) -> None:
        """The engine's `process` for a record of a barrier: one unit on a worker, then its records here."""
        below = self.below(node.name)
        for name in below:
            self.pending[name] += 1
        try:
            async with self.window.place():
                done = await self.dispatch(node, record)
            new = [key for key, made in done["joined"].items() if await self.receive_join(*key, made)]
            for name, made in done["emitted"]:
                if name in self.nodes.join_targets and (name, made.id) not in new:
                    continue  # an eager join another unit made (and emitted) first
                await self.receive(name, made)
        finally:
            self.pending[node.name] -= 1
            for name in below:
                self.pending[name] -= 1
            self.settle(node.name)
            for name in below:
                self.settle(name)

    async def dispatch(self, node: Node, record: Record) -> dict[str, Any]:
        while True:
            worker = self.pool.pick()
            worker.running += 1
            try:
                done = await worker.handle.run_unit.remote(node.name, record)
            except self.lost_worker:
                self.pool.lost(worker, self.coordinator)
                continue
            finally:
                worker.running -= 1
            break
        self.hub.add_accounting(*done["accounting"])
        for method, args in done.get("progress", []):
            getattr(self.progress, method)(*args)
        if "fatal" in done:
            self.hub.fatal = self.hub.fatal or _restored(done["fatal"])
            raise self.hub.fatal
        return done

    async def receive_join(self, name: str, anchor_id: str, made: Record) -> bool:
        """A join a worker made: shared from now on (outputs read it); False if one was made before."""
        key = (name, anchor_id)
        if key in self.joined:
            return False
        future = asyncio.get_running_loop().create_future()
        future.set_result(made)
        self.joined[key] = future  # type: ignore[assignment]
        if name in self.lazy:
            await self.outputs.write(name, made, self.nodes.output_joins)
        return True

    async def receive(self, name: str, record: Record) -> None:
        """A record a worker emitted: what `Engine.emit` does, but its children already ran."""
        await self.outputs.write(name, record, self.nodes.output_joins)
        if not record.ok:
            self.failed[name] += 1
            self.first_failure.setdefault(name, str((record.failure or {}).get("error")))
            return
        if name in self.collections:
            self.collected[name].append(record)


def ray_workers(ray: Any) -> int:
    if os.environ.get(WORKERS_ENV):
        return max(1, int(os.environ[WORKERS_ENV]))
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_on_ray(spec: Spec, options: RunOptions) -> RunResult:
    """Run a spec with Ray workers; connects to RAY_ADDRESS, or starts (and stops) a local instance."""
    if getattr(spec, "budget", None) is not None and options.cache_mode != "replay":
        raise SpecError("--executor", "a budget is enforced by the local executor only, not yet on Ray",
                        hint="drop --executor ray, or the budget (budget:, --budget-usd, --budget-tokens)")
    check_source_files(spec, options.seeds)  # as the local executor does, before a worker starts
    if options.cache_mode in ("live", "refresh"):
        check_keys(spec)
    raise_open_file_limit()
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        with run_gc():
            return event_loop.run(_run(ray, spec, options))
    finally:
        if started:
            ray.shutdown()


async def _run(ray: Any, spec: Spec, options: RunOptions) -> RunResult:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cache_dir = Path(options.cache_dir or spec.cache_dir or default_cache_dir()).expanduser().resolve()
    limits = {role: (options.concurrency or m.concurrency, m.rpm) for role, m in spec.models.items()}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    coordinator = ray.remote(CallCoordinator).options(num_cpus=0, max_concurrency=10_000,
                                                     scheduling_strategy=here).remote(
        str(cache_dir), options.cache_mode, limits)
    actor = ray.remote(RecordWorker).options(num_cpus=1, max_concurrency=10_000)
    args = (str(spec.path.resolve()), list(options.overrides), os.getcwd(), coordinator)

    def make(owner: str) -> Any:
        return actor.remote(*args, owner, str(cache_dir), options.cache_mode, options.concurrency)

    _LIVE_WORKERS.clear()
    pool = WorkerPool(ray, make, ray_workers(ray))
    stream = getattr(options.progress, "stream", None)
    if stream is not None:
        stream.write(f"Ray executor: {len(pool.workers)} workers, cache of record {cache_dir} "
                     f"(Ray at {ray.get_runtime_context().gcs_address})\n")
    hub = CoordinatedHub(spec, coordinator, "driver-" + uuid.uuid4().hex, cache_dir, options.cache_mode,
                         options.concurrency)
    LAST_RUN.clear()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(w.handle.ready.remote() for w in pool.live()))
        LAST_RUN["workers_ready_s"] = time.perf_counter() - started
        result = await RayEngine(spec, options, hub, ray, pool, coordinator).run()
        LAST_RUN.update(replaced=pool.replaced, peak=await coordinator.peak.remote(),
                        left=await coordinator.in_flight.remote())
        return result
    finally:
        for worker in pool.live():
            with contextlib.suppress(Exception):  # a worker already gone has nothing to close
                await worker.handle.close.remote()
            ray.kill(worker.handle)
        with contextlib.suppress(Exception):
            await hub.batches.drain()
        await hub.aclose()
        await coordinator.close.remote()
        ray.kill(coordinator)
        _LIVE_WORKERS.clear()

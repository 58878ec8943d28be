"""The model hub: every model call of a run goes through `ModelHub.complete`.

In order: identity -> cache -> (replay: a miss stops the run) -> in-flight dedup ->
concurrency and rate limits -> the backend, with retries, backoff and a timeout ->
cache -> accounting. DSPy reaches the hub through `HubEngine`, a dspy.LM engine object.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..errors import RUN_REPLAY_FIX, CodecError, ModelCallError, ModelCrashed, ReplayMiss
from ..lang.spec import ModelSpec
from ..redact import redact_text
from .backends import Backend, CallParams, build_backend
from .budget import BudgetReached, BudgetTracker
from .cache import CallCache, CallIdentity
from .deadlines import TASK_SCOPES, Deadlines, Scope
from .pricing import cost_of

# calls: completions a model gave; cache_hits: calls the cache answered, each call once (its first time in the run);
# shared: a call answered again in the same run, while in flight or after (duplicate seeds, prompts a round
# repeats): the same call as the one counted, not one more, so calls + cache_hits are the calls behind the data.
STAT_KEYS = ("calls", "cache_hits", "shared", "failures", "retries", "truncated", "prompt_tokens", "completion_tokens")
# A remote call may spend at most this many times its model's `timeout` waiting on the model, over
# all its attempts (queueing for a slot, the rpm limit and backoff sleeps do not count): a server
# that accepts and never answers fails a call after two timeouts, not after `retries` + 1 of them.
CALL_BUDGET = 2


@dataclass
class CallContext:
    """Who is calling: set by a stage around its DSPy call, read by the hub."""

    stage: str
    item: str
    slot: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)  # provenance: the calls behind this step
    raw: str | None = None  # the last raw completion, kept for failure records
    parse_error: str | None = None  # why the parser refused it


CURRENT_CALL: ContextVar[CallContext | None] = ContextVar("codeclm_call", default=None)


class DryRunMiss(CodecError):
    """Raised in a dry run where a call is not cached: the item's path stops there."""


class _LoopState:
    """asyncio primitives belong to one event loop; the hub keeps one set per loop."""

    def __init__(self, models: dict[str, ModelSpec], concurrency: int | None):
        self.semaphores = {role: asyncio.Semaphore(concurrency or spec.concurrency) for role, spec in models.items()}
        self.inflight: dict[str, asyncio.Future | None] = {}  # a call in flight: the future its waiters wait on
        self.next_slot_at: dict[str, float] = defaultdict(float)
        self.deadlines = Deadlines()  # every attempt's timeout, one timer between them


class ModelHub:
    def __init__(self, models: dict[str, ModelSpec], cache: CallCache, *, concurrency: int | None = None,
                 dry_run: bool = False, backends: dict[str, Backend] | None = None):
        self.models, self.cache, self.concurrency, self.dry_run = models, cache, concurrency, dry_run
        self._backends: dict[str, Backend] = dict(backends or {})
        self._loops: dict[int, _LoopState] = {}
        self._lock = threading.Lock()
        self.stats: dict[tuple[str, str], Counter] = defaultdict(Counter)
        self.cost: dict[tuple[str, str], float] = defaultdict(float)
        self.saved: dict[tuple[str, str], float] = defaultdict(float)
        self.served: set[int] = set()  # hash() of each call key answered in this run: a repeat is shared
        self.fatal: CodecError | None = None  # a replay miss: the runner stops on it
        # a recorded run's calls, to compare a miss with (None: there is no recorded run, as in `evaluate`)
        self.recorded: dict[tuple[str, str], list[dict[str, Any]]] | None = None
        self.replay_fix = RUN_REPLAY_FIX  # what a miss tells the user to do: the command's own words
        self.code_changed = False  # whether codeclm's code changed since that run (its manifest's code_sha256)
        self.recorded_stop: str | None = None  # why that run stopped early ("budget"), if it did
        self.backoff_base = 0.5
        self.answered: set[str] = set()  # roles whose model has answered a call in this run
        self.unresponsive: dict[str, str] = {}  # role -> why: its calls time out and none was ever answered
        self.failed: dict[str, str] = {}  # call key -> error: the calls of this run that failed for good
        self.budget: BudgetTracker | None = None  # the run's budget (budget.py): no new call once it is spent
        self.on_lookup: Any = None  # (stage, role, messages, entry or None): the dry run's estimate watches calls

    def __deepcopy__(self, memo: dict[int, Any]) -> ModelHub:
        return self  # a shared service (one cache, one set of limits), not state: DSPy copies modules

    # -- the call --------------------------------------------------------------------------

    def backend(self, role: str) -> Backend:
        backend = self._backends.get(role)  # twice a call: the lock only to build one
        if backend is None:
            with self._lock:
                if role not in self._backends:
                    self._backends[role] = build_backend(self.models[role])
                backend = self._backends[role]
        return backend

    @staticmethod
    def record_call(backend: Backend, messages: list[dict[str, str]], params: dict[str, Any],
                    ctx: CallContext) -> CallIdentity:
        """The call's identity, noted on the item (its provenance and the replay-miss diagnosis)."""
        identity = CallIdentity.of(backend.name, messages, params, ctx.slot)
        ctx.calls.append({"stage": ctx.stage, "item": ctx.item, "model": backend.name, "key": identity.key,
                          "params": dict(identity.params), "messages_sha": identity.messages_sha})
        return identity

    def lookup(self, role: str, messages: list[dict[str, str]], params: dict[str, Any],
               ctx: CallContext) -> tuple[CallIdentity, dict[str, Any] | None]:
        """Record the call on the item and read the cache; the entry, or None on a miss."""
        backend = self.backend(role)
        identity = self.record_call(backend, messages, params, ctx)
        entry = self.cache.get(identity.key)
        if self.on_lookup is not None:
            self.on_lookup(ctx.stage, role, messages, entry)
        if entry is not None:
            if self.first_answer(identity.key):
                self.count_hit((ctx.stage, role), backend.name, entry)
            else:
                self._count((ctx.stage, role), "shared")
            ctx.raw = entry["text"]
        return identity, entry

    async def complete(self, role: str, messages: list[dict[str, str]], params: dict[str, Any],
                       ctx: CallContext) -> dict[str, Any]:
        identity, entry = self.lookup(role, messages, params, ctx)
        if entry is not None:
            return entry
        return await self.fetch(role, identity, messages, params, ctx)

    async def fetch(self, role: str, identity: CallIdentity, messages: list[dict[str, str]], params: dict[str, Any],
                    ctx: CallContext) -> dict[str, Any]:
        """A call `lookup` missed: stop in replay (and dry runs), else call the model once and cache it.
        Separate from `lookup` so the engine renders and hashes each call once."""
        backend = self.backend(role)
        if self.cache.mode == "replay":
            failed = self.cache.failure(identity.key)
            if failed is not None:  # the recorded run's call failed: so does the replay's, with its error
                self._count((ctx.stage, role), "failures")
                raise ModelCallError(failed["error"])
            self.fatal = self.fatal or ReplayMiss(ctx.stage, ctx.item, backend.name,
                                                  self._what_changed(identity, ctx), self.replay_fix)
            raise self.fatal
        if self.dry_run:
            raise DryRunMiss(f"{ctx.stage} {ctx.item}")
        try:
            entry = await self._deduplicated(role, backend, identity, messages, params, (ctx.stage, role))
        except ModelCrashed as exc:  # no later call can succeed: stop the run, keep what is cached
            self.fatal = self.fatal or exc
            raise self.fatal from None
        ctx.raw = entry["text"]
        return entry

    async def _deduplicated(self, role: str, backend: Backend, identity: CallIdentity,
                            messages: list[dict[str, str]], params: dict[str, Any],
                            stat: tuple[str, str]) -> dict[str, Any]:
        """Identical calls in flight at once reach the model once; the others wait for it."""
        state = self._state()
        key, inflight = identity.key, state.inflight
        if key in inflight:
            future = inflight[key]
            if future is None:  # the first to wait for this call makes the future the call answers
                future = inflight[key] = asyncio.get_running_loop().create_future()
            try:
                entry = await asyncio.shield(future)
            except BaseException as exc:
                if is_recorded_failure(exc):  # a failure per ask, as a replay of the run counts it
                    self._count(stat, "failures")
                raise
            self._count(stat, "shared")
            return entry
        failed = self.failed.get(key)
        if failed is not None:  # failed for good earlier in this run: one outcome per call, as a replay gives
            self._count(stat, "failures")
            raise ModelCallError(failed)
        if self.budget is not None:  # waiting for an identical call in flight costs nothing; a new one may not start
            self._within_budget(role)
        inflight[key] = None  # no future until a second caller waits: most calls have none
        error: BaseException | None = None
        try:
            completion = await self._with_retries(role, backend, messages, CallParams(params, identity.seed()), stat,
                                                  state)
            entry = completion.to_entry()
            self.first_answer(key)  # a later identical call in this run is shared, not a cache hit: marked before
            self.cache.put(key, backend.name, entry)  # the put, after which another thread's lookup finds it
            return entry
        except BaseException as exc:
            error = exc
            if is_recorded_failure(exc):
                self.failed[key] = redact_text(str(exc))
                self.cache.put_failure(key, backend.name, self.failed[key])
            raise
        finally:
            future = inflight.pop(key)
            if future is not None:  # the waiters get its outcome
                if error is None:
                    future.set_result(entry)
                else:
                    future.set_exception(error)
                    future.exception()  # mark retrieved

    async def _with_retries(self, role: str, backend: Backend, messages: list[dict[str, str]],
                            params: CallParams, stat: tuple[str, str], state: _LoopState | None = None) -> Any:
        spec = self.models[role]
        state = state if state is not None else self._state()
        budget = None if spec.is_local else CALL_BUDGET * spec.timeout  # seconds waiting on the model
        spent, timeouts, timed_out = 0.0, 0, False
        for attempt in range(spec.retries + 1):
            async with state.semaphores[role]:
                if attempt == 0 and self.budget is not None:  # one that waited for its slot while the budget
                    self._within_budget(role)                  # ran out never starts
                if role in self.unresponsive and role not in self.answered:  # do not wait out the budget again
                    self._count(stat, "failures")
                    raise ModelCallError(f"{self.unresponsive[role]} (not tried: no call to this model has been "
                                         "answered in this run)")
                if spec.rpm:
                    await self._respect_rpm(role, spec, state)
                started, timed_out = time.monotonic(), False
                try:
                    timeout = spec.timeout if budget is None else min(spec.timeout, budget - spent)
                    completion = await self._attempt(backend, spec, messages, params, timeout, state.deadlines)
                    self._account(stat, backend.name, completion)
                    self.answered.add(role)
                    return completion
                except asyncio.TimeoutError:
                    timeouts, timed_out = timeouts + 1, True
                    error = ModelCallError(f"{backend.name}: no answer within {timeout:g}s", retryable=True)
                except ModelCallError as exc:
                    error = exc
                finally:
                    spent += time.monotonic() - started
            out_of_time = budget is not None and spent >= budget - 0.05 * spec.timeout
            if not error.retryable or attempt == spec.retries or out_of_time:
                self._count(stat, "failures")
                if timed_out:  # say which model and endpoint, and what to change
                    error = ModelCallError(self._timeout_message(role, backend, attempt + 1, timeouts, spent))
                    self.unresponsive.setdefault(role, str(error))
                raise error
            self._count(stat, "retries")
            delay = error.retry_after if error.retry_after is not None else self.backoff_base * 2**attempt
            await asyncio.sleep(min(60.0, delay) * (1 + 0.25 * random.random()))  # jitter spreads retries
        raise AssertionError("unreachable")

    def _within_budget(self, role: str) -> None:
        why = self.budget.refuse(role) if self.budget is not None else None
        if why is not None:
            raise BudgetReached(why)

    def _timeout_message(self, role: str, backend: Backend, attempts: int, timeouts: int, spent: float) -> str:
        spec = self.models[role]
        endpoint = getattr(backend, "endpoint", None)
        where = f"{backend.name} (model '{role}')" + (f" at {endpoint}" if endpoint else "")
        return (f"{where}: no answer within the {spec.timeout:g}s timeout ({timeouts} of {attempts} attempts "
                f"timed out, {spent:.1f}s waiting in all; a call waits at most {CALL_BUDGET} x timeout). "
                f"If the server is up but slow, raise models.{role}.timeout")

    async def _attempt(self, backend: Backend, spec: ModelSpec, messages: list[dict[str, str]],
                       params: CallParams, timeout: float, deadlines: Deadlines) -> Any:
        """One attempt; asyncio.TimeoutError when a remote model gives no answer within `timeout`. The
        attempt runs in the caller's task (wait_for would wrap every call in a task of its own)."""
        if spec.is_local:  # generation in a thread cannot be cancelled; a timeout would only leak it
            completion = await backend.complete(messages, params)
        elif TASK_SCOPES:  # `within`, without a coroutine of its own
            with Scope(deadlines, max(timeout, 0.001)):
                completion = await backend.complete(messages, params)
        else:
            completion = await deadlines.within(max(timeout, 0.001), backend.complete(messages, params))
        if backend.retry_empty and not completion.text.strip():
            raise ModelCallError(f"{backend.name}: empty completion", retryable=True)
        return completion

    async def _respect_rpm(self, role: str, spec: ModelSpec, state: _LoopState) -> None:
        """Wait for the role's next slot under its `rpm` (called only where it has one)."""
        now = time.monotonic()
        start = max(now, state.next_slot_at[role])
        state.next_slot_at[role] = start + 60.0 / spec.rpm
        if start > now:
            await asyncio.sleep(start - now)

    # -- bookkeeping -----------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop_id = id(asyncio.get_running_loop())
        state = self._loops.get(loop_id)  # twice a call: the lock only for a new loop
        if state is None:
            with self._lock:
                state = self._loops.setdefault(loop_id, _LoopState(self.models, self.concurrency))
        return state

    def first_answer(self, key: str) -> bool:
        """Note that the call `key` was answered in this run; False if it already was (a repeat). A hash, not
        the key: some 80 bytes a distinct call (80 MB at a million calls), half what the keys would take."""
        fingerprint = hash(key)
        with self._lock:
            if fingerprint in self.served:
                return False
            self.served.add(fingerprint)
            return True

    def count_hit(self, stat: tuple[str, str], model: str, entry: dict[str, Any]) -> None:
        """A call the cache answered, its first time in this run. The dollars it would have cost count as
        saved; a shared call's never do: the call it repeats is already in this run's cost_usd (made) or
        saved_usd (a hit), so counting it again would make spent + saved, what the data cost, too high."""
        self._count(stat, "cache_hits")
        saved = cost_of(model, **entry["usage"], price=self.models[stat[1]].price)
        if saved:
            with self._lock:
                self.saved[stat] += saved

    def _count(self, stat: tuple[str, str], name: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[stat][name] += amount

    def _account(self, stat: tuple[str, str], model: str, completion: Any) -> None:
        with self._lock:
            counter = self.stats[stat]
            counter["calls"] += 1
            counter["prompt_tokens"] += completion.prompt_tokens
            counter["completion_tokens"] += completion.completion_tokens
            counter["truncated"] += completion.finish_reason == "length"
            cost = cost_of(model, completion.prompt_tokens, completion.completion_tokens, self.models[stat[1]].price)
            if cost:
                self.cost[stat] += cost
        if self.budget is not None:
            self.budget.charge(stat[1], completion.prompt_tokens + completion.completion_tokens, cost or 0.0)

    def _what_changed(self, identity: CallIdentity, ctx: CallContext) -> str:
        """Compare a missed call with what the recorded run called for the same stage and item."""
        if not len(self.cache.store):
            return "the cache is empty: nothing was recorded in this cache folder"
        if identity.key in self.cache.damaged_keys:
            return "nothing: the cache holds this call, but its entry is damaged and cannot be read"
        if self.recorded is None:
            return ("no earlier call to compare it with: this cache holds no answer for it (another input, model, "
                    "parameter or template, another --limit, or another cache folder)")
        recorded = self.recorded.get((ctx.stage, ctx.item), [])
        made = any(call["key"] == identity.key for call in recorded)  # the very call, asked for by the recorded run
        if self.recorded_stop == "budget" and (made or not recorded):
            return ("nothing: the recorded run's budget stopped it before this call was made, and a replay stops "
                    "where the cache ends; run the spec live with a larger budget to finish it, then replay")
        if made:
            return ("nothing: the recorded run asked for this very call, but the cache holds no answer for it (the "
                    "call failed in a run older than the failures the cache keeps, or its entry was cleared)")
        if not recorded:
            return (f"the recorded run made no '{ctx.stage}' call for item '{ctx.item}': an input upstream "
                    "changed (a seed, a parameter, or a parse) or the stage is new" + self._code_changed())
        before, now = recorded[0], {"model": identity.model, "params": dict(identity.params),
                                    "messages_sha": identity.messages_sha}
        changes = []
        if before["model"] != now["model"]:
            changes.append(f"model {before['model']} -> {now['model']}")
        if before["params"] != now["params"]:
            changes.append(f"decoding parameters {before['params']} -> {now['params']}")
        if before["messages_sha"] != now["messages_sha"]:
            changes.append("the rendered prompt (its template, the stage's instructions or demos, or its inputs)")
        return ("; ".join(changes) or "the sample slot (identical metadata entries) differs") + self._code_changed()

    def _code_changed(self) -> str:
        if not self.code_changed:
            return ""
        return ("; and codeclm's code changed since that run (its parsers read the cached text anew, "
                "so their output and what follows can differ)")

    def summary(self) -> dict[str, Any]:
        """Per stage and role: the counters, dollars spent and dollars the cache saved."""
        rows = {}
        for (stage, role), counter in sorted(self.stats.items()):
            row = {k: counter.get(k, 0) for k in STAT_KEYS}
            row["model"] = self.models[role].model
            row["cost_usd"] = round(self.cost.get((stage, role), 0.0), 6)
            row["saved_usd"] = round(self.saved.get((stage, role), 0.0), 6)
            rows[f"{stage}/{role}"] = row
        return rows

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()


def is_recorded_failure(exc: BaseException) -> bool:
    """A call's failure that the cache keeps for replay: the model's or endpoint's answer after every
    retry. Not a budget stop or an interrupt (nothing was answered: a resumed run makes the call)."""
    return isinstance(exc, ModelCallError) and not isinstance(exc, BudgetReached)


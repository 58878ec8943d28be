"""Timeouts for the model calls in flight on one event loop, with one timer between them.

`asyncio.timeout` schedules a timer per call and cancels it when the call ends: a heap push,
a cancelled handle, and a scope object, a few microseconds of a call's CPU at hundreds of calls a
second. Here every call's deadline sits in one dict, and one timer is set for the earliest. Most
calls end long before their deadline, so the timer seldom fires; when it does, it cancels the
tasks whose deadline has passed, which leave their scope with TimeoutError, as asyncio.timeout's
do (Python 3.11's task cancel counting tells a timeout from a Ctrl-C that came at the same time).
"""

from __future__ import annotations

import asyncio
import math
import sys
from types import TracebackType
from typing import Any

# Python 3.11's task cancel counting: a Scope can time the caller's own task out (3.10: asyncio.wait_for)
TASK_SCOPES = sys.version_info >= (3, 11)


class Deadlines:
    """The deadlines of one event loop's calls (create it on that loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.pending: dict[Scope, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf

    async def within(self, seconds: float, call: Any) -> Any:
        """Await `call`, raising TimeoutError (asyncio.TimeoutError) after `seconds`."""
        if not TASK_SCOPES:  # no task cancel counting: wait_for's task of its own
            return await asyncio.wait_for(call, seconds)
        with Scope(self, seconds):
            return await call

    def add(self, scope: Scope, deadline: float) -> None:
        self.pending[scope] = deadline
        if deadline < self.timer_at:
            self._set_timer(deadline)

    def _set_timer(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_at = self.loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        self.timer, self.timer_at = None, math.inf
        now = self.loop.time()
        for scope, deadline in list(self.pending.items()):
            if deadline <= now:
                del self.pending[scope]
                scope.expire()
        if self.pending:
            self._set_timer(min(self.pending.values()))


class Scope:
    """One call's deadline, as `async with asyncio.timeout(seconds)` is one; a plain `with` (in a
    coroutine, around its await: nothing in it awaits, and a coroutine each to enter and leave cost more
    than the rest of the scope)."""

    __slots__ = ("deadlines", "seconds", "task", "cancelling", "expired")

    def __init__(self, deadlines: Deadlines, seconds: float):
        self.deadlines, self.seconds, self.expired = deadlines, seconds, False

    def __enter__(self) -> Scope:
        task = asyncio.current_task()
        assert task is not None, "a deadline needs a task to cancel"
        self.task, self.cancelling = task, task.cancelling()
        self.deadlines.add(self, self.deadlines.loop.time() + self.seconds)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deadlines.pending.pop(self, None)
        # asyncio.timeout's rule: a cancel of its own becomes TimeoutError; one from elsewhere stays a cancel
        if self.expired and self.task.uncancel() <= self.cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()

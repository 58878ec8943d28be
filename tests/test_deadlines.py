"""The hub's call timeouts (models/deadlines.py): one timer for many calls, asyncio.timeout's semantics."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from codeclm.programs.models.deadlines import Deadlines

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 uses asyncio.wait_for")


async def _answer(after: float, value: str) -> str:
    await asyncio.sleep(after)
    return value


def test_each_call_times_out_at_its_own_deadline_and_the_others_answer() -> None:
    async def calls() -> list[object]:
        deadlines = Deadlines()
        started = time.monotonic()

        async def one(timeout: float, after: float) -> tuple[object, float]:
            try:
                outcome: object = await deadlines.within(timeout, _answer(after, "answer"))
            except TimeoutError:
                outcome = "timeout"
            return outcome, time.monotonic() - started

        # a long deadline first, so the timer is set again for the shorter ones after it
        results = await asyncio.gather(one(5.0, 0.1), one(0.2, 1.0), one(0.4, 1.0), one(1.0, 0.3))
        assert not deadlines.pending
        return results

    results = asyncio.run(calls())
    assert [outcome for outcome, _ in results] == ["answer", "timeout", "timeout", "answer"]
    (_, short), (_, longer) = results[1], results[2]
    assert 0.2 <= short < 0.4 + 0.3 and 0.4 <= longer < 0.4 + 0.3 and short < longer  # each at its own, not later


def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def cancelled() -> None:
        deadlines = Deadlines()
        task = asyncio.ensure_future(deadlines.within(5.0, _answer(1.0, "answer")))
        await asyncio.sleep(0.05)
        task.cancel()  # Ctrl-C, or a run stopping: not a timeout
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not deadlines.pending

    asyncio.run(cancelled())


def test_an_error_in_the_call_is_the_calls_own() -> None:
    async def failing() -> None:
        async def broken() -> None:
            raise ValueError("the call's own error")

        deadlines = Deadlines()
        with pytest.raises(ValueError, match="own error"):
            await deadlines.within(1.0, broken())
        assert not deadlines.pending

    asyncio.run(failing())

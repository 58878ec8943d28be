"""The event loop every command runs on: uvloop's where it is installed, asyncio's otherwise.

A run is one event loop serving every call in flight, and at 32 calls in flight per model the
loop's own bookkeeping (ready queue, timers, socket callbacks) is a real part of a call's CPU.
uvloop does that work in C: on the paper graph over HTTP a call counts 5% fewer instructions
(benchmarks/RESULTS.md, tenth pass). It installs with codeclm on Linux and macOS;
on Windows, or with CODECLM_EVENT_LOOP=asyncio, the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..errors import SpecError, Terminated

T = TypeVar("T")
CHOICES = ("uvloop", "asyncio")


def loop_name() -> str:
    """The loop a command will run on: CODECLM_EVENT_LOOP if set, else uvloop when it imports."""
    wanted = os.environ.get("CODECLM_EVENT_LOOP", "").strip().lower()
    if wanted not in ("", *CHOICES):
        raise SpecError("CODECLM_EVENT_LOOP", f"unknown event loop {wanted!r}",
                        hint=f"one of {', '.join(CHOICES)}, or unset it (uvloop where installed)")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise SpecError("CODECLM_EVENT_LOOP", "uvloop is asked for but not installed",
                            hint="pip install uvloop (it has no Windows build), or unset CODECLM_EVENT_LOOP") from None
        return "asyncio"
    return "uvloop"


def new_event_loop() -> asyncio.AbstractEventLoop:
    return _factory()()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coroutine)` on the chosen loop (the same Ctrl-C handling and clean-up); SIGTERM
    cancels it as Ctrl-C does, then raises Terminated."""
    try:
        name = loop_name()
    except SpecError:
        coroutine.close()  # never started: no "never awaited" warning after the message
        raise
    terminated: list[int] = []
    try:
        if name == "uvloop":
            import uvloop

            return uvloop.run(_cancelled_by_sigterm(coroutine, terminated))
        return asyncio.run(_cancelled_by_sigterm(coroutine, terminated))
    except asyncio.CancelledError:
        if terminated:
            raise Terminated() from None
        raise


async def _cancelled_by_sigterm(coroutine: Coroutine[Any, Any, T], terminated: list[int]) -> T:
    """Await `coroutine`, cancelled by SIGTERM in the loop's own time. A handler raising at the signal
    raises inside whatever task runs at that moment, and where Ctrl-C is ignored (nohup, `codeclm run &`
    in a script) asyncio installs no Ctrl-C handler to hand it to: the stop landed in an HTTP request's
    task ("Task exception was never retrieved", a traceback) instead of cancelling the run."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        loop.add_signal_handler(signal.SIGTERM, lambda: (terminated.append(signal.SIGTERM), task.cancel()))
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        return await coroutine
    try:
        return await coroutine
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # which sets SIG_DFL: the CLI's handler comes back
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop

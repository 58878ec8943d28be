"""A one-line progress display per stage, on stderr: done/total, failures, decisions."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter, defaultdict
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = sys.stderr, interval: float = 0.5):
        self.stream = stream
        self.tty = bool(stream and stream.isatty())
        self.interval = interval if self.tty else 10.0
        self.total: dict[str, int] = defaultdict(int)
        self.done: dict[str, int] = defaultdict(int)
        self.failed: dict[str, int] = defaultdict(int)
        self.removed: dict[str, int] = defaultdict(int)  # records a filter or dedup let no further
        self.decisions: Counter = Counter()
        self.started = time.monotonic()
        self._last = 0.0

    def expect(self, stage: str, count: int) -> None:
        self.total[stage] += count
        self.tick()

    def advance(self, stage: str, ok: bool = True) -> None:
        self.done[stage] += 1
        if not ok:
            self.failed[stage] += 1
        self.tick()

    def remove(self, stage: str, count: int = 1) -> None:
        self.removed[stage] += count

    def decide(self, decision: str) -> None:
        self.decisions[decision] += 1

    def line(self) -> str:
        parts = []
        for stage, total in self.total.items():
            failed = f" ({self.failed[stage]} failed)" if self.failed[stage] else ""
            parts.append(f"{stage} {self.done[stage]}/{total}{failed}")
        if self.decisions:
            parts.append(" ".join(f"{k}={v}" for k, v in sorted(self.decisions.items())))
        return f"[{time.monotonic() - self.started:6.1f}s] " + " | ".join(parts)

    def tick(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            # a line wider than the terminal wraps, and \033[K clears only its last row: every update left the rest
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\033[K" + self.line()[:width])
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.tick(force=True)
        if self.stream is not None and self.tty:
            self.stream.write("\n")

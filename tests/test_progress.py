"""The progress line on stderr."""

from __future__ import annotations

import io

from codeclm.programs.engine.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_fits_the_terminal(monkeypatch):
    """At 80 columns a ~170-character line wrapped, and each update's \\033[K cleared only its last row."""
    monkeypatch.setenv("COLUMNS", "80")
    stream = Terminal()
    progress = Progress(stream=stream)
    for stage in ("encode", "augment", "improve_use_case", "improve_skills", "answer_strong", "answer_target"):
        progress.expect(stage, 1000)
    progress.tick(force=True)
    updates = stream.getvalue().split("\r\033[K")[1:]
    assert max(len(update) for update in updates) == 79, updates

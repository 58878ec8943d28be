"""The language's checks a user review found missing or unhelpful: each a spec error at its line, with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.spec import load_spec
from conftest import base_spec, write_spec


def errors_of(path: Path, overrides: list[str] | None = None) -> list[SpecError]:
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(path, overrides)
    return caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_loop_without_max_is_refused_at_its_line(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    del data["nodes"]["refine"]["max"], data["params"]["max_iterations"]  # ran once: improve and next unused
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert "loop 'refine' needs max:" in error.message and error.line == line_of(path, "refine:")
    assert "max: 3" in error.hint

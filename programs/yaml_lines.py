"""YAML loading that remembers the line of every key, so errors can point at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

Path_ = tuple[str | int, ...]


def load_with_lines(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse a YAML file safely; return the data and a map from key path to 1-based line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), f"cannot read file: {exc.strerror}", hint="check the path") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            str(path),
            f"invalid YAML: {problem}",
            line=mark.line + 1 if mark else None,
            hint="check indentation, colons and quotes on this line and the one before",
        ) from None
    lines: dict[Path_, int] = {}
    if node is not None:
        _collect(node, (), lines)
    return data, lines


def _collect(node: yaml.Node, prefix: Path_, lines: dict[Path_, int]) -> None:
    lines[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            _collect(value_node, key, lines)
            lines[key] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect(item, (*prefix, index), lines)

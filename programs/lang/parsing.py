"""Named parsers: what an llm node's `parse:` can name, and what each one returns.

A parser reads a raw completion and returns either one value (given to the node's single
declared output) or a mapping (whose keys are the node's declared outputs). It raises
ParseError with the reason; the engine records the failure with the raw text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .parsers import ParseError, parse_answer, parse_instruction, parse_list, parse_metadata, parse_rubrics


@dataclass(frozen=True)
class Parser:
    name: str
    read: Callable[..., Any]  # (text, outputs, **args) -> value or mapping
    fixed_outputs: tuple[str, ...] | None  # the mapping's keys, or None: one value, or the declared names
    args: tuple[str, ...] = ()  # arguments the parser takes (`parse: {name: rubrics, count: ...}`)
    doc: str = ""  # what it reads, for the unknown-parser message

    @property
    def maps(self) -> bool:
        """True when the parser returns a mapping over several outputs."""
        return self.fixed_outputs is not None or self.name in ("fields", "json")


def _fields(text: str, outputs: list[str]) -> dict[str, str]:
    """`Name: value` lines; names compare without case, spaces as underscores."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*[*#_\s-]*([A-Za-z][\w \-]{0,40}?)[*_\s]*:[*_\s]*(.*\S)?\s*$", line)
        if match:
            key = re.sub(r"[\s\-]+", "_", match.group(1).strip().lower())
            if key in outputs and key not in found and match.group(2):
                found[key] = match.group(2).strip()
    missing = [name for name in outputs if name not in found]
    if missing:
        raise ParseError(f"no '{missing[0]}:' line")
    return found


def _json(text: str, outputs: list[str]) -> dict[str, Any]:
    """A JSON object, bare or in a ``` fence, holding every declared output."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text[text.find("{"): text.rfind("}") + 1]
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a "\ud800" escape: not text any file can hold
    except ParseError:
        raise
    except json.JSONDecodeError as exc:
        raise ParseError(f"not a JSON object: {exc.msg}") from None
    except RecursionError:
        raise ParseError("JSON nested too deeply to read") from None
    except UnicodeEncodeError:
        raise ParseError("the JSON holds a lone surrogate escape (\\ud800-\\udfff), not text") from None
    except ValueError as exc:  # an integer of more digits than Python reads
        raise ParseError(f"unreadable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ParseError("not a JSON object")
    missing = [name for name in outputs if name not in value]
    if missing:
        raise ParseError(f"the JSON object has no '{missing[0]}'")
    return {name: value[name] for name in outputs}


def _refuse_constant(name: str) -> None:
    """NaN and Infinity, which Python's json reads but no JSON file may hold (the run's lines would not be JSON)."""
    raise ParseError(f"the JSON holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    """A JSON number as a float; 1e400 (infinity once read) is no number a file can hold."""
    value = float(text)
    if not math.isfinite(value):
        raise ParseError(f"the JSON holds {text[:40]}, past what a float holds")
    return value


def _score(text: str, outputs: list[str], scale: list[float] | None = None) -> float:
    """The first number of the completion, within the scale when one is given."""
    match = re.search(r"(?<![\w.])-?\d+(?:\.\d+)?", text)
    if not match:
        raise ParseError("no score")
    score = float(match.group(0))
    if not math.isfinite(score):  # 400 digits read as a float are infinity, which no JSON line may hold
        raise ParseError(f"score of {len(match.group(0))} digits is not a number a file can hold")
    if scale and not scale[0] <= score <= scale[1]:
        raise ParseError(f"score {score} outside the scale {scale[0]}-{scale[1]}")
    return score


def _yes_no(text: str, outputs: list[str]) -> bool:
    """`yes` or `no` (also true/false), the first such word of the completion."""
    match = re.search(r"\b(yes|no|true|false)\b", text, re.IGNORECASE)
    if not match:
        raise ParseError("neither yes nor no")
    return match.group(1).lower() in ("yes", "true")


PARSERS: dict[str, Parser] = {p.name: p for p in (
    Parser("text", lambda text, outputs: parse_answer(text), None, doc="the whole completion, stripped"),
    Parser("list", lambda text, outputs: parse_list(text), None, doc="numbered or bulleted items, as a list"),
    Parser("instruction", lambda text, outputs: parse_instruction(text), None,
           doc="one instruction, an echoed label ('Improved instruction:') removed"),
    Parser("fields", _fields, None, doc="`Name: value` lines, one per declared output"),
    Parser("json", _json, None, doc="a JSON object holding every declared output"),
    Parser("score", _score, None, ("scale",), doc="the first number, checked against `scale` when given"),
    Parser("yes_no", _yes_no, None, doc="true for yes/true, false for no/false"),
    Parser("metadata", lambda text, outputs: parse_metadata(text), ("use_case", "skills"),
           doc="CodecLM's `Use case:` / `Skills:` lines"),
    Parser("rubrics", lambda text, outputs, count: parse_rubrics(text, count), ("rubrics", "actions"), ("count",),
           doc="CodecLM's `Rubrics:` and `Actions:` lists, at most `count` of each"),
)}

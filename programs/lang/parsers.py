"""Lenient parsers for the loose text formats of the paper's prompts.

Each parser takes a raw completion and returns plain data, or raises ParseError with
the reason; the caller records the failure together with the raw text.
"""

from __future__ import annotations

import re


class ParseError(ValueError):
    """A completion that does not have the expected shape."""


_BULLET = re.compile(r"^\s*(?:\(?\d{1,3}[.):\]]|[-*•]|#{1,4}\s*\d{1,3}[.):]?)\s+(.*\S)\s*$")
_LABEL = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])?[*#_\s]*(use\s*case|task|skills?)[*_\s]*[:：\-][*_\s]*(.*)$",
                    re.IGNORECASE)
_NUMBER = r"((?<![\w.])-?\d+(?:\.\d+)?)"  # a sign only where it cannot be a dash between numbers
_LABEL_WORDS = r"(?:assistant|system|answer|response)"
_WRAPPERS = ("**", "__", "*", "_", "`", '"', "'")


def _clean(text: str) -> str:
    """Strip whitespace and markup that wraps the whole text (never half of a pair)."""
    text = text.strip()
    for mark in _WRAPPERS:
        if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark) \
                and mark not in text[len(mark):-len(mark)]:
            text = text[len(mark):-len(mark)].strip()
    return text


def parse_metadata(text: str, max_skills: int = 3) -> dict[str, object]:
    """`Use case: ...` (or `Task: ...`) and `Skills: a, b` -> {use_case, skills}."""
    use_case, skills = None, None
    for line in text.splitlines():
        match = _LABEL.match(line)
        if not match:
            continue
        label, value = match.group(1).lower(), _clean(match.group(2))
        if label.startswith("skill") and skills is None:
            skills = [s for s in (_clean(p) for p in _split_skills(value)) if s]
        elif not label.startswith("skill") and use_case is None and value:
            use_case = value
    if not use_case:
        raise ParseError("no 'Use case:' (or 'Task:') line")
    if not skills:
        raise ParseError("no 'Skills:' line with at least one skill")
    return {"use_case": use_case.rstrip("."), "skills": [s.rstrip(".") for s in skills[:max_skills]]}


def _split_skills(value: str) -> list[str]:
    """`a, b and c` or `a; b` -> parts. A lone `x and y` stays one skill ("compare and contrast")."""
    parts = re.split(r"[,;]", value)
    if len(parts) > 1:
        parts[-1:] = re.split(r"^\s*and\s+|\s+and\s+", parts[-1])
    return parts


def parse_list(text: str) -> list[str]:
    """Numbered or bulleted lines -> their texts. A line right under an item continues it;
    text after a blank line (closing chatter) does not."""
    items: list[str] = []
    continues = False
    for line in text.splitlines():
        match = _BULLET.match(line)
        if match:
            items.append(_clean(match.group(1)))
            continues = True
        elif not line.strip() or line.rstrip().endswith(":"):
            continues = False
        elif items and continues:
            items[-1] = f"{items[-1]} {line.strip()}"
    items = [item for item in items if item]
    if not items:
        raise ParseError("no numbered or bulleted items")
    return items


# A line that starts with a rubric/action label: `1. Rubric: ...`, `**Action 2:** ...`, `- Rubrics`,
# `## Actions`, `Improving action - ...`. Group `label`, then `rest` (what follows the separator).
_RUBRIC_LABEL = re.compile(
    r"^\s*(?:(?:\(?\d{1,3}[.):\]]|[-*•])\s+)?[*_#\s]*"
    r"(?P<label>rubrics?|(?:(?:corresponding|improving|improvement|suggested)\s+)?actions?)"
    r"(?P<number>\s*#?\d{1,3})?[*_]*"
    r"(?:\s*[:：][*_]*|\s+[-–—]\s|(?<=\d)[.)][*_]*\s|[*_\s]*$)"
    r"(?P<rest>.*)$",
    re.IGNORECASE)
# `... Action: ...` inside a rubric's line (the pair on one line), after the end of a sentence, a
# separator or bold markup: `Depth. Action: ...`, `Depth | **Action:** ...` (not `call to action: ...`).
_INLINE_ACTION = re.compile(r"(?:(?<=[.!?)])\s+|\s*[|;–—]\s*|\s+-\s+|\s*(?=\*\*|__))"
                            r"[*_]*action(?:\s*#?\d{1,3})?[*_]*\s*[:：][*_]*\s*", re.IGNORECASE)


def parse_rubrics(text: str, count: int) -> dict[str, list[str]]:
    """Rubrics and their improving actions -> {rubrics, actions}, at most `count` each.

    Two layouts, as models write them:
    - sections: `Rubrics:` then a list, `Actions:` then a list (the prompt's format; the
      `Rubrics:` header may be missing, items before `Actions:` are rubrics);
    - interleaved pairs: `1. Rubric: ...` then `Action: ...`, once per rubric (numbered or not,
      labels in bold or with a number, `Rubric 1:` alone with its text on the next line).
    Anything else (an action before any rubric, pairs mixed with sections, a rubric left
    without its action in the pairs layout) is refused: reading it would turn rubric text into
    actions."""
    items: list[list[str]] = []  # [kind, text]
    section: str | None = None  # set by a header line (`Actions:`), for unlabelled list items
    continues = False  # the line below an item (or a bare label) continues it
    for line in text.splitlines():
        label = _RUBRIC_LABEL.match(line)
        bullet = _BULLET.match(line)
        if label:
            kind = "action" if "action" in label.group("label").lower() else "rubric"
            rest = label.group("rest").strip()
            inner = _BULLET.match(rest)
            if not rest or _clean(rest) in ("", ":"):  # `Actions:` or `Rubric 1:` alone: a header
                section = kind
                single = label.group("number") or not label.group("label").lower().endswith("s")
                if single:  # `Rubric 1:` alone: its text is on the lines below (unless a list follows)
                    items.append([kind, ""])
                continues = bool(single)
            elif inner and label.group("label").lower().endswith("s"):  # `Actions: 1. a1`
                section = kind
                items.append([kind, _clean(inner.group(1))])
                continues = True
            else:  # `Rubric: text`, maybe with `Action: text` on the same line
                parts = _INLINE_ACTION.split(rest, maxsplit=1) if kind == "rubric" else [rest]
                items.append([kind, _clean(parts[0])])
                if len(parts) == 2:
                    items.append(["action", _clean(parts[1])])
                continues = True
        elif bullet:
            items.append([section or "rubric", _clean(bullet.group(1))])
            continues = True
        elif not line.strip() or line.rstrip().endswith(":"):
            continues = False
        elif items and continues:
            items[-1][1] = f"{items[-1][1]} {line.strip()}".strip()
    items = [item for item in items if item[1]]
    kinds = "".join("r" if kind == "rubric" else "a" for kind, _ in items)
    rubrics = [value for kind, value in items if kind == "rubric"]
    actions = [value for kind, value in items if kind == "action"]
    if not actions:
        if section == "action":
            raise ParseError("no actions listed after 'Actions:'")
        raise ParseError("no 'Actions:' section (nor `Rubric: ...` / `Action: ...` pairs)")
    if not rubrics:
        raise ParseError("no rubrics listed before 'Actions:'")
    if not (re.fullmatch(r"r+a+", kinds) or re.fullmatch(r"(?:ra)+", kinds)):
        raise ParseError(f"rubrics and actions are mixed ({kinds.upper()}): neither all rubrics then all "
                         "actions, nor rubric/action pairs")
    return {"rubrics": rubrics[:count], "actions": actions[:count]}


def parse_instruction(text: str) -> str:
    """An improved instruction, with any echoed label removed."""
    text = re.sub(r"^\s*[*#_\s]*(improved|new|rewritten)\s+instruction[*_\s]*:[*_\s]*", "", text.strip(),
                  flags=re.IGNORECASE)
    text = _clean(text)
    if not text:
        raise ParseError("empty instruction")
    return text


def parse_answer(text: str) -> str:
    """A response to an instruction: any non-empty text."""
    if not text.strip():
        raise ParseError("empty answer")
    return text.strip()


def parse_scores(text: str, scale: tuple[float, float] = (1, 10)) -> tuple[float, float]:
    """Two scores: `7 3`, `7, 3`, `7/10 and 3/10`, or `Assistant 1: 7` / `Assistant 2: 3`
    (small models also write `System 1:` or `Answer 1:`)."""
    low, high = scale
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and re.search(_LABEL_WORDS + r"\s*[12]", lines[0], re.IGNORECASE):
        scores = _labelled_scores("\n".join(lines[:2]))  # `Assistant 1: 7` / `Assistant 2: 3`
    else:  # the paper's format; labels later on are the explanation's, unless nothing else is found
        scores = _leading_scores(lines) or _labelled_scores(text)
    if scores is None:
        raise ParseError("the first line does not hold two scores")
    if not all(low <= s <= high for s in scores):
        raise ParseError(f"scores {scores} outside the scale {low}-{high}")
    return scores


def _labelled_scores(text: str) -> tuple[float, float] | None:
    """`Assistant 1: 7` ... `Assistant 2: 3` (also `scores 7`, `System 1`, `Answer 1`)."""
    label = (rf"{_LABEL_WORDS}\s*([12])\W{{0,4}}"
             rf"(?:(?:scores?|gets|receives|rated|rating)\W{{0,3}})?{_NUMBER}")
    found: dict[int, float] = {}
    for match in re.finditer(label, text, re.IGNORECASE):
        found.setdefault(int(match.group(1)), float(match.group(2)))
    return (found[1], found[2]) if 1 in found and 2 in found else None


def _leading_scores(lines: list[str]) -> tuple[float, float] | None:
    """`7 3`, `7, 3`, `7/10 3/10` on the first line, or `7` and `3` on the first two lines."""
    numbers = re.findall(rf"{_NUMBER}(?:\s*/\s*\d+)?", lines[0]) if lines else []
    if len(numbers) == 1 and len(lines) > 1:
        numbers += re.findall(rf"^\s*{_NUMBER}\W*$", lines[1])
    return (float(numbers[0]), float(numbers[1])) if len(numbers) >= 2 else None

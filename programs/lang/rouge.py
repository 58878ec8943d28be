"""ROUGE-L between two texts, as Self-Instruct uses it to drop near-duplicate instructions."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens (Self-Instruct's rouge_score tokenizer keeps [a-z0-9] words)."""
    return _TOKEN.findall(str(text).lower())


def rouge_l(a: str | list[str], b: str | list[str]) -> float:
    """The F-measure of the longest common subsequence of the two token lists."""
    x = a if isinstance(a, list) else tokens(a)
    y = b if isinstance(b, list) else tokens(b)
    if not x or not y:
        return 0.0
    lcs = _lcs(x, y)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(y), lcs / len(x)
    return 2 * precision * recall / (precision + recall)


def _lcs(x: list[str], y: list[str]) -> int:
    previous = [0] * (len(y) + 1)
    for token in x:
        current = [0]
        for j, other in enumerate(y, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]

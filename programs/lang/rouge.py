"""ROUGE-L between two texts: Self-Instruct's near-duplicate test (the dedup node) and the
diversity and closeness figures of a run's quality metrics, from one implementation."""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    """Lowercase runs of letters and digits: rouge-score's tokens on ASCII text (Self-Instruct uses
    rouge-score); words of other scripts count too, where rouge-score drops them."""
    return _TOKEN.findall(str(text).lower())


def words(text: str) -> int:
    """Words as a reader counts them, split on whitespace: the spec helper `words()` and the report's and
    quality metrics' lengths in words (tokens() above splits off punctuation too, for ROUGE-L)."""
    return len(str(text).split())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): one pass over b, with
    a's positions as the bits of an integer. Same result as the quadratic table, far faster in Python."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) of two texts or token lists; 0 when either is empty."""
    ta = tokens(a) if isinstance(a, str) else a
    tb = tokens(b) if isinstance(b, str) else b
    lcs = lcs_length(ta, tb)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(tb), lcs / len(ta)
    return 2 * precision * recall / (precision + recall)

"""Data-quality metrics of a run's kept data, defined in one place.

`quality_metrics(run_dir)` is what the manifest, `codeclm inspect --json`, `codeclm report` and the
export's dataset card show. Each metric is a small function here with a unit test on hand-made
inputs (tests/test_quality.py):

- diversity: distinct-1 and distinct-2 of the kept instructions (unique n-grams / all n-grams,
  over the whole set, Li et al. 2016); mean and max pairwise ROUGE-L among kept instructions;
- near duplicates: pairs of kept instructions with ROUGE-L >= 0.7 (Self-Instruct's filter), the
  instructions in at least one such pair, and exact duplicates (same tokens);
- closeness to the seeds: for each kept instruction, its ROUGE-L to its nearest seed; the mean and
  max of those. With `wordllama` installed (`pip install 'codeclm[quality]'`; its weights ship in
  its wheel), the same with the cosine similarity of WordLlama embeddings;
- metadata coverage: the use cases and skills of the pool, and how many of them kept pairs carry;
- the judge: position bias (mean score of the same answer shown first minus shown second) and
  order agreement (share of judgements whose two orders prefer the same answer, a tie being a
  verdict too).

ROUGE-L is the F-measure of the longest common subsequence of tokens, as `rouge-score` computes it
(beta = 1, no stemming). Tokens are lowercase runs of letters and digits: the same tokens as
rouge-score's on ASCII text, and other scripts count too (rouge-score drops them).
Pairwise ROUGE-L costs n^2/2 comparisons: above MAX_PAIRS pairs, a deterministic sample of
MAX_PAIRS pairs is compared (`sampled: true`, and `pairs_compared` says how many); the
near-duplicate counts are then counts among the sampled pairs. Closeness to seeds is bounded the
same way (a deterministic sample of kept instructions).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from statistics import mean
from typing import Any

from .rundata import Judged, RunData

NEAR_DUPLICATE = 0.7  # Self-Instruct drops a new instruction whose ROUGE-L to any kept one is >= 0.7
MAX_PAIRS = 100_000  # ROUGE-L comparisons per measure, at most (a deterministic sample above it): a few seconds
SAMPLE_SEED = 0

_TOKEN = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    """Lowercase runs of letters and digits: rouge-score's tokens on ASCII text."""
    return _TOKEN.findall(text.lower())


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Unique n-grams over all n-grams of all texts (a text shorter than n adds none); None if none."""
    total, unique = 0, set()
    for text in texts:
        words = tokens(text)
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


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


def _pairs(n: int, limit: int) -> tuple[list[tuple[int, int]], bool]:
    """All (i, j), i < j, or a deterministic sample of `limit` of them."""
    total = n * (n - 1) // 2
    if total <= limit:
        return [(i, j) for i in range(n) for j in range(i + 1, n)], False
    rng = random.Random(SAMPLE_SEED)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < limit:
        i, j = rng.randrange(n), rng.randrange(n)
        if i != j:
            chosen.add((min(i, j), max(i, j)))
    return sorted(chosen), True


def pairwise_rouge(texts: Sequence[str], max_pairs: int = MAX_PAIRS,
                   threshold: float = NEAR_DUPLICATE) -> dict[str, Any]:
    """Mean and max ROUGE-L over pairs of texts, and the near duplicates among them."""
    toks = [tokens(t) for t in texts]
    pairs, sampled = _pairs(len(toks), max_pairs)
    scores, near, members = [], 0, set()
    for i, j in pairs:
        score = rouge_l(toks[i], toks[j])
        scores.append(score)
        if score >= threshold:
            near += 1
            members.update((i, j))
    exact = sum(count - 1 for count in Counter(tuple(t) for t in toks).values() if count > 1)
    return {"mean": _round(mean(scores)) if scores else None, "max": _round(max(scores)) if scores else None,
            "pairs_compared": len(pairs), "pairs_total": len(toks) * (len(toks) - 1) // 2, "sampled": sampled,
            "near_duplicate_pairs": near, "near_duplicate_instructions": len(members),
            "exact_duplicates": exact, "threshold": threshold}


def seed_closeness(texts: Sequence[str], seeds: Sequence[str], max_pairs: int = MAX_PAIRS) -> dict[str, Any]:
    """Each text's ROUGE-L to its nearest seed; the mean and max over texts."""
    seed_tokens = [t for t in (tokens(s) for s in seeds) if t]
    indices = list(range(len(texts)))
    sampled = False
    if seed_tokens and len(indices) * len(seed_tokens) > max_pairs:
        keep = max(1, max_pairs // len(seed_tokens))
        indices, sampled = sorted(random.Random(SAMPLE_SEED).sample(indices, keep)), True
    nearest = []
    for i in indices if seed_tokens else []:
        words = tokens(texts[i])
        nearest.append(max(rouge_l(words, s) for s in seed_tokens))
    return {"seeds": len(seed_tokens), "compared": len(nearest), "sampled": sampled,
            "rouge_l_mean": _round(mean(nearest)) if nearest else None,
            "rouge_l_max": _round(max(nearest)) if nearest else None}


@lru_cache(maxsize=1)
def _wordllama() -> Any:
    """WordLlama's default model, from the weights and tokenizer inside its wheel (never downloaded);
    None when the package is not installed or cannot load offline."""
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError:
        return None
    try:  # the package folder holds weights/ and tokenizers/: load from there, downloads off
        return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
    except Exception:  # noqa: BLE001 - any failure to load means: no embeddings
        return None


def embedding_closeness(texts: Sequence[str], seeds: Sequence[str]) -> dict[str, Any]:
    """Each text's cosine similarity to its nearest seed under WordLlama embeddings, and the mean
    pairwise similarity among the texts; a note instead when wordllama is not available."""
    model = _wordllama()
    if model is None:
        return {"embedding": None, "note": "embedding similarity skipped: install wordllama "
                                           "(pip install 'codeclm[quality]') to measure it offline"}
    texts, seeds = [t for t in texts if t.strip()], [s for s in seeds if s.strip()]
    result: dict[str, Any] = {"embedding": "wordllama l2_supercat 256"}
    if not texts:
        return result
    kept = model.embed(list(texts), norm=True)
    if seeds:
        nearest = (kept @ model.embed(list(seeds), norm=True).T).max(axis=1)
        result.update(embedding_mean=_round(float(nearest.mean())), embedding_max=_round(float(nearest.max())))
    if len(texts) > 1:
        sims = kept @ kept.T
        n = len(texts)
        result["embedding_mean_pairwise"] = _round(float((sims.sum() - sims.trace()) / (n * (n - 1))))
    return result


def coverage(pool: Iterable[dict[str, Any]], kept: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Use cases and skills of the pool, and how many of them appear in the kept pairs' metadata."""
    pool, kept = list(pool), list(kept)
    found: dict[str, Any] = {}
    for name, read in (("use_cases", _use_cases), ("skills", _skills)):
        have = {v for entry in pool for v in read(entry)}
        got = {v for entry in kept for v in read(entry)}
        found[name] = {"pool": len(have), "kept": len(have & got), "share": _round(len(have & got) / len(have))
                       if have else None, "missing": sorted(have - got)[:20]}
    return found


def _use_cases(entry: dict[str, Any]) -> list[str]:
    value = entry.get("use_case")
    return [value] if isinstance(value, str) else []


def _skills(entry: dict[str, Any]) -> list[str]:
    value = entry.get("skills")
    return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []


def judge_consistency(judgements: Iterable[Judged]) -> dict[str, Any]:
    """Position bias and order agreement over judgements scored in both orders.

    A judgement has (a, b) with answer A first and (b', a') with B first. Position bias is the mean,
    over both answers of every judgement, of (score shown first - score shown second): positive
    means the judge favours whichever answer it reads first. A verdict is which answer scored
    higher in one order (or a tie); order agreement is the share of judgements whose two verdicts
    are the same, and order conflicts the share where one order prefers A and the other B."""
    both = [j for j in judgements if j.a_first and j.b_first]
    diffs, agree, conflict = [], 0, 0
    for j in both:
        (a1, b2), (b1, a2) = j.a_first, j.b_first
        diffs += [a1 - a2, b1 - b2]
        first, second = _verdict(a1, b2), _verdict(a2, b1)
        agree += first == second
        conflict += {first, second} == {"a", "b"}
    return {"judged_both_orders": len(both),
            "position_bias": _round(mean(diffs)) if diffs else None,
            "order_agreement": _round(agree / len(both)) if both else None,
            "order_conflicts": _round(conflict / len(both)) if both else None}


def _verdict(a: float, b: float) -> str:
    return "a" if a > b else "b" if b > a else "tie"


def lengths(pairs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    pairs = list(pairs)
    inst = [len(tokens(p["instruction"])) for p in pairs]
    resp = [len(tokens(p["response"])) for p in pairs if isinstance(p.get("response"), str)]
    return {"instruction_words_mean": _round(mean(inst)) if inst else None,
            "response_words_mean": _round(mean(resp)) if resp else None}


def quality_metrics(run_dir: Path | str | RunData, embeddings: bool = True) -> dict[str, Any]:
    """Every metric of a run folder's kept data (see the module docstring). Absent artifacts give
    None for what they would have measured, with a note; never an exception for missing data."""
    run = run_dir if isinstance(run_dir, RunData) else RunData.open(run_dir)
    kept = run.kept
    texts = [p["instruction"] for p in kept]
    seeds = [s["text"] for s in run.seeds]
    notes = []
    rouge = pairwise_rouge(texts)
    closeness = seed_closeness(texts, seeds)
    if embeddings:
        closeness.update(embedding_closeness(texts, seeds))
    if closeness.get("note"):
        notes.append(closeness.pop("note"))
    if rouge["sampled"] or closeness["sampled"]:
        notes.append(f"ROUGE-L on a deterministic sample of at most {MAX_PAIRS} pairs")
    if not seeds:
        notes.append("no seed texts in this run (metadata.jsonl absent or hand-written metadata)")
    pool = run.pool
    if pool is None:
        notes.append("no pool.jsonl: metadata coverage not measured")
    judge = judge_consistency(run.judgements)
    if not judge["judged_both_orders"]:
        notes.append("no judgement scored in both orders: position bias and order agreement not measured")
    return {
        "kept": len(kept),
        "distinct_1": _round(distinct_n(texts, 1)),
        "distinct_2": _round(distinct_n(texts, 2)),
        "rouge_l": {k: rouge[k] for k in ("mean", "max", "pairs_compared", "pairs_total", "sampled")},
        "near_duplicates": {k: rouge[k] for k in ("threshold", "near_duplicate_pairs",
                                                  "near_duplicate_instructions", "exact_duplicates")},
        "seed_closeness": closeness,
        "coverage": coverage(pool, [p["metadata"] for p in kept]) if pool is not None else None,
        "judge": judge,
        "lengths": lengths(kept),
        "notes": notes,
    }


def format_quality(metrics: dict[str, Any]) -> list[str]:
    """The metrics as short lines of text (inspect, the dataset card)."""
    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    rouge, near, seeds, judge = (metrics.get(k) or {} for k in ("rouge_l", "near_duplicates", "seed_closeness",
                                                                  "judge"))
    lines = [f"diversity           distinct-1 {f(metrics.get('distinct_1'))}, "
             f"distinct-2 {f(metrics.get('distinct_2'))},"
             f" pairwise ROUGE-L mean {f(rouge.get('mean'))} max {f(rouge.get('max'))}"
             + (f" ({rouge.get('pairs_compared')} sampled pairs)" if rouge.get("sampled") else ""),
             f"near duplicates     {near.get('near_duplicate_pairs', '-')} pairs with ROUGE-L >= "
             f"{near.get('threshold', NEAR_DUPLICATE)} ({near.get('near_duplicate_instructions', '-')} instructions),"
             f" {near.get('exact_duplicates', '-')} exact",
             f"closeness to seeds  ROUGE-L to the nearest seed mean {f(seeds.get('rouge_l_mean'))} "
             f"max {f(seeds.get('rouge_l_max'))}"
             + (f"; embedding mean {f(seeds.get('embedding_mean'))} max {f(seeds.get('embedding_max'))}"
                if seeds.get("embedding_mean") is not None else "")]
    cover = metrics.get("coverage")
    if cover:
        lines.append("coverage            " + ", ".join(
            f"{name.replace('_', ' ')} {row['kept']}/{row['pool']}" for name, row in cover.items()))
    if judge.get("judged_both_orders"):
        lines.append(f"judge               position bias {f(judge['position_bias'])} (first - second), "
                     f"order agreement {f(judge['order_agreement'])} over {judge['judged_both_orders']} judgements")
    return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

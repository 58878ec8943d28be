"""Data-quality metrics of a run's kept data, defined in one place.

`quality_metrics(run_dir)` is what `codeclm inspect --json`, `codeclm report`, `compare` and the
export's dataset card show, computed from the run's files when asked (a run does not compute
them). Each metric is a small function here with a unit test on hand-made inputs
(tests/test_quality.py), but the mean lengths, which `quality_metrics` sums in its one pass over
the kept pairs:

- diversity: distinct-1 and distinct-2 of the kept instructions (unique n-grams / all n-grams,
  over the whole set, Li et al. 2016); mean and max pairwise ROUGE-L among kept instructions;
- near duplicates: pairs of kept instructions with ROUGE-L >= 0.7 (Self-Instruct's filter), the
  instructions in at least one such pair, and exact duplicates (same tokens);
- closeness to the seeds: for each kept instruction, its ROUGE-L to its nearest seed; the mean and
  max of those. With `wordllama` installed (`pip install 'codeclm[quality]'`; its weights ship in
  its wheel), the same with the cosine similarity of WordLlama embeddings;
- metadata coverage: the use cases and skills of the pool, and how many of them kept pairs carry
  (none for a pool whose entries carry neither, another spec's);
- the judge: position bias (mean score of the same answer shown first minus shown second) and
  order agreement (share of judgements whose two orders prefer the same answer, a tie being a
  verdict too).

ROUGE-L is the F-measure of the longest common subsequence of tokens, as `rouge-score` computes it
(beta = 1, no stemming). Tokens are lowercase runs of letters and digits: the same tokens as
rouge-score's on ASCII text, and other scripts count too (rouge-score drops them).
Pairwise ROUGE-L costs n^2/2 comparisons: above MAX_PAIRS pairs, a deterministic sample of
MAX_PAIRS distinct pairs is compared (`sampled: true`, and `pairs_compared` says how many); the
near-duplicate counts are then counts among the sampled pairs. Closeness to seeds is bounded the
same way (a deterministic sample of kept instructions, each against every seed). A comparison costs
about len(a) x len(b) / 64 steps, so both measures compare the first MAX_TOKENS tokens of each
text (a note says how many texts are longer): a few seconds per measure at worst, where 3,000-word
texts took minutes. Exact duplicates compare whole texts. Embeddings read the first EMBED_WORDS
words of each text.

Memory does not grow with the seeds, and grows with the dataset only by its instruction tokens
(as integer ids): the artifacts are streamed, the sampled pairs are generated, never stored (an
affine walk over the pair indices: distinct pairs spread over the whole triangle), scores are
running sums, seeds are read and compared one at a time, and embeddings go in chunks (the mean
pairwise cosine is exact from the sum of the unit vectors).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from statistics import mean
from typing import Any

from ..lang.rouge import rouge_l, tokens, words
from .rundata import Judged, RunData, has_judge
from .store import ARTIFACTS

NEAR_DUPLICATE = 0.7  # Self-Instruct drops a new instruction whose ROUGE-L to any kept one is >= 0.7
MAX_PAIRS = 20_000  # ROUGE-L comparisons per measure, at most (a deterministic sample above it)
MAX_TOKENS = 256  # tokens of each text a ROUGE-L comparison reads: nearly every instruction whole; MAX_PAIRS
# comparisons of such long texts take some 2.5 s (100 tokens: 1 s, but longer instructions compared by a prefix)
EMBED_WORDS = 500  # words of each text embedded: the cost grows with the longest text of a batch
EMBED_CHUNK = 256  # texts embedded at once: the model's intermediates grow with it (2,048 took ~60 MB)
SAMPLE_SEED = 0



def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Unique n-grams over all n-grams of all texts (a text shorter than n adds none); None if none."""
    total, unique = 0, set()
    for text in texts:
        words = tokens(text)
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


def _pair_at(index: int, n: int) -> tuple[int, int]:
    """The pair (i, j), i < j, at position `index` of the row-major order of an n-item triangle."""
    # row i starts at i*n - i*(i+1)/2; solve for the last row start <= index
    i = int(((2 * n - 1) - math.sqrt((2 * n - 1) ** 2 - 8 * index)) // 2)
    while i > 0 and i * n - i * (i + 1) // 2 > index:
        i -= 1
    while (i + 1) * n - (i + 1) * (i + 2) // 2 <= index:
        i += 1
    return i, index - (i * n - i * (i + 1) // 2) + i + 1


def _pairs(n: int, limit: int) -> tuple[Iterator[tuple[int, int]], int, bool]:
    """All (i, j), i < j, or a deterministic sample of `limit` distinct ones, generated one at a time
    (nothing stored): positions start + t * step (mod the pair count), step coprime with it."""
    total = n * (n - 1) // 2
    if total <= limit:
        return ((i, j) for i in range(n) for j in range(i + 1, n)), total, False
    rng = random.Random(SAMPLE_SEED)
    step = rng.randrange(1, total)
    while math.gcd(step, total) != 1:
        step = rng.randrange(1, total)
    start = rng.randrange(total)
    return (_pair_at((start + t * step) % total, n) for t in range(limit)), limit, True


def _token_ids(texts: Iterable[str]) -> list[list[int]]:
    """Each text's tokens as small integers (one id per distinct token): less memory than strings,
    and the same ROUGE-L (only equality of tokens counts)."""
    ids: dict[str, int] = {}
    return [[ids.setdefault(t, len(ids)) for t in tokens(text)] for text in texts]


def pairwise_rouge(texts: Sequence[str], max_pairs: int = MAX_PAIRS,
                   threshold: float = NEAR_DUPLICATE, toks: list[list[int]] | None = None) -> dict[str, Any]:
    """Mean and max ROUGE-L over pairs of texts, and the near duplicates among them."""
    toks = _token_ids(texts) if toks is None else toks
    pairs, compared, sampled = _pairs(len(toks), max_pairs)
    total, best, near, members = 0.0, None, 0, set()
    for i, j in pairs:
        score = rouge_l(toks[i][:MAX_TOKENS], toks[j][:MAX_TOKENS])
        total += score
        best = score if best is None or score > best else best
        if score >= threshold:
            near += 1
            members.update((i, j))
    exact = sum(count - 1 for count in Counter(tuple(t) for t in toks).values() if count > 1)
    return {"mean": _round(total / compared) if compared else None, "max": _round(best),
            "pairs_compared": compared, "pairs_total": len(toks) * (len(toks) - 1) // 2, "sampled": sampled,
            "near_duplicate_pairs": near, "near_duplicate_instructions": len(members),
            "exact_duplicates": exact, "threshold": threshold}


def seed_closeness(texts: Sequence[str], seeds: Iterable[str], max_pairs: int = MAX_PAIRS,
                   seed_count: int | None = None) -> dict[str, Any]:
    """Each text's ROUGE-L to its nearest seed; the mean and max over texts. Seeds are read one at a
    time (an iterable is read once, so give `seed_count` with one, or it is read twice as a list)."""
    if seed_count is None:
        seeds = [s for s in seeds if tokens(s)]
        seed_count = len(seeds)
    indices = list(range(len(texts)))
    sampled = False
    if seed_count and len(indices) * seed_count > max_pairs:
        keep = max(1, max_pairs // seed_count)
        indices, sampled = sorted(random.Random(SAMPLE_SEED).sample(indices, keep)), True
    chosen = [tokens(texts[i])[:MAX_TOKENS] for i in indices] if seed_count else []
    nearest = [0.0] * len(chosen)
    counted = 0
    for seed in seeds if chosen else []:
        words = tokens(seed)
        if not words:
            continue
        counted += 1
        for k, text in enumerate(chosen):
            score = rouge_l(text, words[:MAX_TOKENS])
            if score > nearest[k]:
                nearest[k] = score
    return {"seeds": seed_count, "compared": len(nearest), "sampled": sampled,
            "rouge_l_mean": _round(mean(nearest)) if nearest and counted else None,
            "rouge_l_max": _round(max(nearest)) if nearest and counted else None}


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
    import numpy as np

    texts = [_first_words(t) for t in texts if t.strip()]
    result: dict[str, Any] = {"embedding": "wordllama l2_supercat 256"}
    if not texts:
        return result
    kept = np.vstack([model.embed(chunk, norm=True) for chunk in _chunks(texts, EMBED_CHUNK)])
    nearest = None
    for chunk in _chunks((_first_words(s) for s in seeds if s.strip()), EMBED_CHUNK):  # never all seeds at once
        best = (kept @ model.embed(chunk, norm=True).T).max(axis=1)
        nearest = best if nearest is None else np.maximum(nearest, best)
    if nearest is not None:
        result.update(embedding_mean=_round(float(nearest.mean())), embedding_max=_round(float(nearest.max())))
    if len(texts) > 1:  # sum over pairs i != j of v_i . v_j = |sum v|^2 - sum |v_i|^2: no n x n matrix
        n = len(texts)
        summed = kept.sum(axis=0, dtype=np.float64)
        off_diagonal = float(summed @ summed) - float(np.einsum("ij,ij->", kept, kept, dtype=np.float64))
        result["embedding_mean_pairwise"] = _round(off_diagonal / (n * (n - 1)))
    return result


def _first_words(text: str) -> str:
    """The first EMBED_WORDS words of a text: WordLlama pads a batch to its longest text, so one 2 MB
    text made every text of its batch that long (minutes, and gigabytes)."""
    words = text.split(maxsplit=EMBED_WORDS)
    return text if len(words) <= EMBED_WORDS else " ".join(words[:EMBED_WORDS])


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def coverage(pool: Iterable[dict[str, Any]], kept: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Use cases and skills of the pool, and how many of them appear in the kept pairs' metadata."""
    pool = list(pool)
    readers = (("use_cases", _use_cases), ("skills", _skills))
    got: dict[str, set[str]] = {name: set() for name, _ in readers}
    for entry in kept:  # one pass: `kept` may be a stream
        for name, read in readers:
            got[name].update(read(entry))
    found: dict[str, Any] = {}
    for name, read in readers:
        have = {v for entry in pool for v in read(entry)}
        found[name] = {"pool": len(have), "kept": len(have & got[name]),
                       "share": _round(len(have & got[name]) / len(have)) if have else None,
                       "missing": sorted(have - got[name])[:20]}
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
    both, diffs, agree, conflict = 0, [], 0, 0  # diffs: a running exact sum (math.fsum's partials)
    for j in judgements:  # one pass: `judgements` may be a stream
        if not (j.a_first and j.b_first):
            continue
        both += 1
        (a1, b2), (b1, a2) = j.a_first, j.b_first
        diffs = _add(diffs, a1 - a2, b1 - b2)
        first, second = _verdict(a1, b2), _verdict(a2, b1)
        agree += first == second
        conflict += {first, second} == {"a", "b"}
    return {"judged_both_orders": both,
            "position_bias": _round(math.fsum(diffs) / (2 * both)) if both else None,
            "order_agreement": _round(agree / both) if both else None,
            "order_conflicts": _round(conflict / both) if both else None}


def _add(partials: list[float], *values: float) -> list[float]:
    """Values added to a running sum kept as math.fsum's few partials: exact, in constant memory."""
    return [math.fsum([*partials, *values])]


def _verdict(a: float, b: float) -> str:
    return "a" if a > b else "b" if b > a else "tie"


def quality_metrics(run_dir: Path | str | RunData, embeddings: bool = True) -> dict[str, Any]:
    """Every metric of a run folder's kept data (see the module docstring). Absent artifacts give
    None for what they would have measured, with a note; never an exception for missing data."""
    run = run_dir if isinstance(run_dir, RunData) else RunData.open(run_dir)
    loaded = vars(run)  # what a caller's RunData has read already is used; the rest is streamed
    texts, metadata = [], []
    length = {"instruction": [0, 0], "response": [0, 0]}
    for pair in loaded.get("kept") or run.iter_kept():  # one pass: only the texts stay in memory
        texts.append(pair["instruction"])
        metadata.append({k: pair["metadata"].get(k) for k in ("use_case", "skills")})
        for field in length:
            if isinstance(pair.get(field), str):
                length[field][0] += words(pair[field])
                length[field][1] += 1

    def seeds() -> Iterator[str]:  # read again each time it is needed: never all seeds in memory
        return (s["text"] for s in (loaded["seeds"] if "seeds" in loaded else run.iter_seeds()))

    any_seed, seed_count, long_seeds = False, 0, 0
    for text in seeds():
        any_seed = True
        size = len(tokens(text))
        seed_count += bool(size)
        long_seeds += size > MAX_TOKENS
    notes = []
    toks = _token_ids(texts)
    rouge = pairwise_rouge(texts, toks=toks)
    closeness = seed_closeness(texts, seeds(), seed_count=seed_count)
    if embeddings:
        closeness.update(embedding_closeness(texts, seeds()))
    if closeness.get("note"):
        notes.append(closeness.pop("note"))
    if rouge["sampled"] or closeness["sampled"]:
        notes.append(f"ROUGE-L on a deterministic sample of at most {MAX_PAIRS} pairs")
    long_texts = sum(len(t) > MAX_TOKENS for t in toks)
    if long_texts or long_seeds:
        notes.append(f"ROUGE-L on the first {MAX_TOKENS} tokens of each text ({long_texts} kept instructions"
                     f" and {long_seeds} seeds are longer)")
    if not any_seed:
        notes.append("no seed texts in this run (metadata.jsonl absent or hand-written metadata)")
    pool = run.pool
    if pool is None and run.declares(ARTIFACTS["pool"]):  # a spec without a pool has nothing to cover
        notes.append("no pool.jsonl: metadata coverage not measured")
    judge = judge_consistency(loaded.get("judgements") or run.iter_judgements())
    if not judge["judged_both_orders"] and run.declares(ARTIFACTS["instructions"]) and has_judge(run.manifest):
        notes.append("no judgement scored in both orders: position bias and order agreement not measured")
    return {
        "kept": len(texts),
        "distinct_1": _round(distinct_n(texts, 1)),
        "distinct_2": _round(distinct_n(texts, 2)),
        "rouge_l": {k: rouge[k] for k in ("mean", "max", "pairs_compared", "pairs_total", "sampled")},
        "near_duplicates": {k: rouge[k] for k in ("threshold", "near_duplicate_pairs",
                                                  "near_duplicate_instructions", "exact_duplicates")},
        "seed_closeness": closeness,
        "coverage": coverage(pool, metadata) if pool and any(_use_cases(e) or _skills(e) for e in pool) else None,
        "judge": judge,
        "lengths": {f"{field}_words_mean": _round(total / count) if count else None
                    for field, (total, count) in length.items()},
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
             f" {near.get('exact_duplicates', '-')} exact"]
    if seeds.get("rouge_l_mean") is not None:  # a run with seeds (no_seed's metadata is written by hand)
        lines.append(f"closeness to seeds  ROUGE-L to the nearest seed mean {f(seeds.get('rouge_l_mean'))} "
                     f"max {f(seeds.get('rouge_l_max'))}"
                     + (f"; embedding mean {f(seeds.get('embedding_mean'))} max {f(seeds.get('embedding_max'))}"
                        if seeds.get("embedding_mean") is not None else ""))
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

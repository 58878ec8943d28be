"""Data-quality metrics on hand-made inputs with known answers (programs/quality.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from codeclm.programs.artifacts import quality
from codeclm.programs.artifacts.quality import (
    coverage,
    distinct_n,
    judge_consistency,
    pairwise_rouge,
    quality_metrics,
    seed_closeness,
)
from codeclm.programs.artifacts.rundata import Judged
from codeclm.programs.lang.rouge import lcs_length, rouge_l, tokens, words


def lcs_table(a: list[str], b: list[str]) -> int:
    """The textbook quadratic LCS, to check the bit-parallel one against."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def test_tokens_are_lowercase_letters_and_digits():
    assert tokens("Hello, World_x 42! Ça va?") == ["hello", "world", "x", "42", "ça", "va"]


def test_words_are_what_a_reader_counts_and_what_the_spec_helper_gives():
    """The report's lengths "in words" counted ROUGE's tokens (5 here), the spec's `words()` whitespace words."""
    from codeclm.programs.lang.expressions import Expression

    text = "Don't sort_list(x), please!"
    assert words(text) == 3 == Expression("words(t)").evaluate({"t": text})
    assert len(tokens(text)) == 6


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "b c"], 2) == pytest.approx(1.0)  # (a b) (b a) (b c)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(0.5)
    assert distinct_n(["a"], 2) is None and distinct_n([], 1) is None


def test_lcs_length_matches_the_quadratic_table():
    assert lcs_length(list("abcde"), list("acef")) == 3
    assert lcs_length([], ["a"]) == 0
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randrange(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randrange(0, 70))]
        assert lcs_length(a, b) == lcs_table(a, b), (a, b)


def test_rouge_l_is_the_lcs_f_measure():
    # LCS 5 of 6 and 5 tokens: P = 1, R = 5/6, F = 2PR/(P+R) = 10/11
    assert rouge_l("the cat sat on the mat", "The cat on the mat.") == pytest.approx(10 / 11)
    assert rouge_l("a b", "a b") == 1.0
    assert rouge_l("a b", "c d") == 0.0 and rouge_l("", "a") == 0.0


def test_rouge_l_agrees_with_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(3)
    words = ["write", "a", "python", "function", "that", "sorts", "the", "list", "of", "numbers", "and", "why"]
    for _ in range(100):
        a = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 25)))
        b = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 25)))
        assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure)


def test_pairwise_rouge_and_near_duplicates():
    found = pairwise_rouge(["a b c", "A b c!", "x y z", "x y z w"])
    # pairs: (0,1) = 1, (2,3) = 2*(3/3)(3/4)/(1+3/4) = 6/7, the other four 0
    assert found["pairs_compared"] == found["pairs_total"] == 6 and not found["sampled"]
    assert found["mean"] == pytest.approx(round((1 + 6 / 7) / 6, 4))
    assert found["max"] == 1.0
    assert found["near_duplicate_pairs"] == 2 and found["near_duplicate_instructions"] == 4
    assert found["exact_duplicates"] == 1


def test_pairwise_rouge_samples_deterministically_above_the_limit():
    texts = [f"text number {i} about {i % 3}" for i in range(30)]  # 435 pairs
    first = pairwise_rouge(texts, max_pairs=100)
    assert first["sampled"] and first["pairs_compared"] == 100 and first["pairs_total"] == 435
    assert pairwise_rouge(texts, max_pairs=100) == first
    assert not pairwise_rouge(texts, max_pairs=435)["sampled"]


def test_sampled_pairs_are_distinct_and_generated_not_stored():
    for n in (2, 3, 7, 30, 101):  # every position maps to the row-major pair, and back
        everything = [(i, j) for i in range(n) for j in range(i + 1, n)]
        assert [quality._pair_at(k, n) for k in range(len(everything))] == everything
    pairs, compared, sampled = quality._pairs(3000, 5000)  # 4.5M pairs: a generator, not a list
    assert sampled and compared == 5000 and not isinstance(pairs, (list, set))
    chosen = list(pairs)
    assert len(set(chosen)) == 5000 and all(0 <= i < j < 3000 for i, j in chosen)
    assert len({i for i, _ in chosen}) > 500  # spread over the whole triangle


def test_seed_closeness_reads_seeds_as_a_stream():
    seeds = iter(["write a poem about cats", "sort numbers", ""])
    found = quality.seed_closeness(["write a poem about dogs", "sort the numbers"], seeds, seed_count=2)
    assert found["seeds"] == 2 and found["compared"] == 2 and found["rouge_l_max"] > 0.7


def test_seed_closeness_takes_each_texts_nearest_seed():
    found = seed_closeness(["a b c d", "x y z w"], ["a b", "x y z w", ""])
    # text 0: nearest seed "a b": 2*(1)(1/2)/(3/2) = 2/3; text 1 equals a seed: 1
    assert found["seeds"] == 2 and found["compared"] == 2
    assert found["rouge_l_mean"] == pytest.approx(round((2 / 3 + 1) / 2, 4))
    assert found["rouge_l_max"] == 1.0
    assert seed_closeness(["a"], [])["rouge_l_mean"] is None


def test_coverage_counts_pool_values_that_kept_pairs_carry():
    pool = [{"use_case": "code", "skills": ["python", "sql"]}, {"use_case": "travel", "skills": ["planning"]},
            {"use_case": "poems", "skills": ["rhyme"]}]
    kept = [{"use_case": "code", "skills": ["python"]}, {"use_case": "not in pool", "skills": ["rhyme"]}]
    found = coverage(pool, kept)
    assert found["use_cases"] == {"pool": 3, "kept": 1, "share": pytest.approx(0.3333), "missing": ["poems", "travel"]}
    assert found["skills"]["pool"] == 4 and found["skills"]["kept"] == 2 and found["skills"]["share"] == 0.5


def test_judge_position_bias_and_order_agreement():
    judgements = [
        Judged("x", 1, (8, 4), (4, 8), 4.0),  # same scores in both orders: no bias, both prefer A
        Judged("y", 1, (7, 5), (7, 5), 0.0),  # whoever is first gets 7: bias +2 for each, verdicts A then B
        Judged("z", 1, (9, 1), None, 8.0),  # one order only: not counted
    ]
    found = judge_consistency(judgements)
    assert found["judged_both_orders"] == 2
    assert found["position_bias"] == pytest.approx(1.0)  # mean of 0, 0, 2, 2
    assert found["order_agreement"] == 0.5 and found["order_conflicts"] == 0.5
    tie = judge_consistency([Judged("t", 1, (5, 5), (6, 6), 0.0)])  # tie in both orders agrees
    assert tie["order_agreement"] == 1.0 and tie["position_bias"] == pytest.approx(0.0)
    assert judge_consistency([])["position_bias"] is None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_quality_metrics_of_a_hand_made_run(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "_wordllama", lambda: None)
    write_jsonl(tmp_path / "metadata.jsonl", [{"id": "s0", "instruction": "write a poem about cats", "status": "ok"},
                                              {"id": "s1", "instruction": "sort a list in python", "status": "failed"}])
    write_jsonl(tmp_path / "pool.jsonl", [{"id": "m0", "use_case": "poems", "skills": ["rhyme"]},
                                          {"id": "m1", "use_case": "code", "skills": ["python"]}])
    record = {"messages": [{"role": "user", "content": "write a poem about cats"},
                           {"role": "assistant", "content": "Cats nap."}],
              "provenance": {"id": "m0.i00", "iteration": 1, "metadata": {"use_case": "poems", "skills": ["rhyme"]}}}
    write_jsonl(tmp_path / "dataset.jsonl", [record])
    write_jsonl(tmp_path / "instructions.jsonl", [
        {"id": "m0.i00", "status": "kept", "record": record,
         "iterations": [{"iteration": 1, "scores": {"strong_first": [8, 4], "target_first": [4, 8], "gap": 4}}]},
        {"id": "m1.i00", "status": "failed", "failure": {"stage": "judge", "error": "no scores", "raw": "??"}}])
    found = quality_metrics(tmp_path)
    assert found["kept"] == 1 and found["distinct_1"] == 1.0
    assert found["rouge_l"]["mean"] is None and found["rouge_l"]["pairs_total"] == 0
    assert found["seed_closeness"]["rouge_l_max"] == 1.0 and found["seed_closeness"]["seeds"] == 2
    assert found["coverage"]["use_cases"]["kept"] == 1 and found["coverage"]["skills"]["missing"] == ["python"]
    assert found["judge"]["order_agreement"] == 1.0
    assert found["lengths"] == {"instruction_words_mean": 5, "response_words_mean": 2}
    assert any("wordllama" in note for note in found["notes"])
    json.dumps(found)  # goes into the manifest as it is


def test_quality_metrics_of_an_empty_folder_is_all_absent(tmp_path):
    found = quality_metrics(tmp_path, embeddings=False)
    assert found["kept"] == 0 and found["distinct_1"] is None and found["coverage"] is None
    assert found["judge"]["position_bias"] is None and found["notes"]


def test_embedding_closeness_with_wordllama():
    if quality._wordllama() is None:
        pytest.skip("wordllama not installed (optional: pip install 'codeclm[quality]')")
    found = quality.embedding_closeness(["write a poem about cats", "sort numbers"], ["write a poem about cats"])
    assert found["embedding_max"] == pytest.approx(1.0, abs=1e-3)
    assert found["embedding_mean"] < 1.0


def test_embeddings_read_the_first_embed_words_of_long_texts(monkeypatch):
    """WordLlama pads a batch to its longest text: one 2 MB line made every text of its batch that long."""
    import numpy as np

    embedded: list[str] = []

    class Model:
        def embed(self, texts, norm):
            embedded.extend(texts)
            return np.ones((len(texts), 4)) / 2

    monkeypatch.setattr(quality, "_wordllama", Model)
    long = " ".join(f"w{i}" for i in range(3 * quality.EMBED_WORDS))
    found = quality.embedding_closeness([long, "write  a poem"], [long])
    assert found["embedding_max"] == 1.0
    assert [len(text.split()) for text in embedded] == [quality.EMBED_WORDS, 3, quality.EMBED_WORDS]
    assert embedded[1] == "write  a poem"  # a text within the limit is embedded as it is


def test_inspect_computes_the_metrics_the_run_does_not(tmp_path, seeds_file, scripted):
    """A run writes the data, not a report on it: no embedding model is loaded by `run`;
    `inspect --json` (and report, export) compute the metrics from the files."""
    from click.testing import CliRunner
    from codeclm import cli
    from conftest import base_spec, write_spec

    result = scripted(write_spec(tmp_path, base_spec(seeds_file)))
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert "quality" not in manifest
    shown = CliRunner().invoke(cli.main, ["inspect", str(result.out), "--json"])
    assert shown.exit_code == 0, shown.output
    found = json.loads(shown.output)["quality"]
    assert found["kept"] == result.counts.get("kept", 0)
    assert found == quality_metrics(result.out)


def test_inspect_leaves_out_the_seed_line_of_a_run_without_seeds():
    """no_seed's inspect printed `closeness to seeds ... mean - max -`; the report left it out."""
    lines = quality.format_quality({"distinct_1": 0.5, "seed_closeness": {"rouge_l_mean": None}})
    assert not any(line.startswith("closeness to seeds") for line in lines)
    lines = quality.format_quality({"seed_closeness": {"rouge_l_mean": 0.25, "rouge_l_max": 0.5}})
    assert "closeness to seeds  ROUGE-L to the nearest seed mean 0.250 max 0.500" in lines


def test_rouge_l_reads_the_first_max_tokens_of_long_texts(tmp_path, monkeypatch):
    """300 kept instructions of 3,000 words took minutes (a comparison costs len(a) x len(b) / 64 steps):
    each comparison now reads at most MAX_TOKENS tokens of each text, and a note says so."""
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(vocab) for _ in range(3000)) for _ in range(6)]
    read: list[int] = []

    def counted(a, b):
        read.append(max(len(a), len(b)))
        return rouge_l(a, b)

    monkeypatch.setattr(quality, "rouge_l", counted)
    found = pairwise_rouge(texts)
    assert found["pairs_compared"] == 15 and found["exact_duplicates"] == 0
    assert seed_closeness(texts, texts[:2])["rouge_l_max"] == 1.0  # the first tokens of the same text
    assert len(read) == 15 + 12 and max(read) == quality.MAX_TOKENS


def test_the_metrics_note_texts_longer_than_compared(tmp_path):
    long = " ".join(f"w{i}" for i in range(quality.MAX_TOKENS + 1))
    write_jsonl(tmp_path / "dataset.jsonl", [{"messages": [{"role": "user", "content": text},
                                                           {"role": "assistant", "content": "ok"}]}
                                             for text in (long, "a short one")])
    notes = quality_metrics(tmp_path, embeddings=False)["notes"]
    assert f"ROUGE-L on the first {quality.MAX_TOKENS} tokens of each text (1 kept instructions and 0 seeds " \
           "are longer)" in notes

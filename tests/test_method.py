"""The pure steps of CodecLM in programs/method.py: decisions, score averaging, seeded draws."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from conftest import REPO
from programs.method import (
    DROP,
    IMPROVE,
    KEEP_STRONG,
    KEEP_TARGET,
    Judgement,
    augment,
    decide,
    pick_action,
    rng_for,
    sample_slot,
)

# -- decide: Contrastive Filtering ---------------------------------------------------------


@pytest.mark.parametrize(("gap", "iteration", "expected"), [
    (3.5, 1, KEEP_STRONG),
    (9.0, 4, KEEP_STRONG),  # a clear gap keeps at the last iteration too
    (-3.5, 1, KEEP_TARGET),
    (-9.0, 4, KEEP_TARGET),
    (0.0, 1, IMPROVE),
    (2.9, 2, IMPROVE),
    (-2.9, 3, IMPROVE),
    (0.0, 4, DROP),
    (2.9, 4, DROP),
    (-2.9, 4, DROP),
    (3.0, 1, IMPROVE),  # gap == theta is within theta: not kept
    (-3.0, 1, IMPROVE),  # gap == -theta likewise
    (3.0, 4, DROP),
    (-3.0, 4, DROP),
    (3.0000001, 1, KEEP_STRONG),
    (-3.0000001, 1, KEEP_TARGET),
], ids=["strong", "strong-last", "target", "target-last", "tie", "small-pos", "small-neg", "tie-last",
        "small-pos-last", "small-neg-last", "eq-theta", "eq-minus-theta", "eq-theta-last",
        "eq-minus-theta-last", "just-above", "just-below"])
def test_decide(gap, iteration, expected):
    assert decide(gap, threshold=3.0, iteration=iteration, max_iterations=4) == expected


def test_decide_single_iteration_drops_ties():
    assert decide(0.0, 3.0, 1, 1) == DROP
    assert decide(5.0, 3.0, 1, 1) == KEEP_STRONG


def test_decide_zero_threshold():
    assert decide(0.0, 0.0, 1, 4) == IMPROVE
    assert decide(0.5, 0.0, 1, 4) == KEEP_STRONG
    assert decide(-0.5, 0.0, 1, 4) == KEEP_TARGET


# -- Judgement: averaging over both orders -------------------------------------------------


def test_judgement_averages_both_orders():
    judgement = Judgement(strong_first=(8, 4), target_first=(5, 9))
    assert judgement.strong == (8 + 9) / 2
    assert judgement.target == (4 + 5) / 2
    assert judgement.gap == 4.0


def test_judgement_cancels_pure_position_bias():
    judgement = Judgement(strong_first=(9, 2), target_first=(9, 2))  # the judge always prefers Assistant 1
    assert judgement.strong == judgement.target == 5.5
    assert judgement.gap == 0.0
    assert decide(judgement.gap, 3.0, 1, 4) == IMPROVE


def test_judgement_one_order_only():
    judgement = Judgement(strong_first=(8, 4), target_first=None)
    assert (judgement.strong, judgement.target, judgement.gap) == (8, 4, 4)
    reverse = Judgement(strong_first=None, target_first=(5, 9))  # target was Assistant 1
    assert (reverse.strong, reverse.target, reverse.gap) == (9, 5, 4)


def test_judgement_without_scores_raises():
    with pytest.raises(ValueError):
        _ = Judgement(None, None).gap


def test_judgement_to_dict():
    assert Judgement((8, 4), (5, 9)).to_dict() == {
        "strong_first": [8, 4], "target_first": [5, 9], "strong": 8.5, "target": 4.5, "gap": 4.0}
    assert Judgement((8, 4), None).to_dict()["target_first"] is None


# -- rng_for and pick_action ---------------------------------------------------------------


def test_rng_for_is_a_string_seeded_random():
    a, b = rng_for(7, "item-3", "augment"), random.Random("7:item-3:augment")
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]


def test_rng_for_is_the_same_in_another_process():
    """String seeds hash with SHA-512, not hash(): PYTHONHASHSEED must not change the draws."""
    code = "from programs.method import rng_for; print(repr(rng_for(7, 'item-3', 'augment').random()))"
    here = rng_for(7, "item-3", "augment").random()
    for hash_seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                              env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        assert float(done.stdout) == here


def test_rng_for_differs_by_each_argument():
    first = rng_for(0, "x", "p").random()
    assert rng_for(1, "x", "p").random() != first
    assert rng_for(0, "y", "p").random() != first
    assert rng_for(0, "x", "q").random() != first


ACTIONS = [f"action {i}" for i in range(10)]
IDS = [f"inst-{i:03d}" for i in range(60)]


def test_pick_action_does_not_depend_on_call_order():
    reference = {(i, it): pick_action(ACTIONS, 0, i, it) for i in IDS for it in (1, 2, 3)}
    for shuffle_seed in range(3):
        keys = list(reference)
        random.Random(shuffle_seed).shuffle(keys)
        random.random()  # global RNG state must not matter either
        assert {k: pick_action(ACTIONS, 0, *k) for k in keys} == reference


def test_pick_action_varies_with_iteration():
    per_iteration = [[pick_action(ACTIONS, 0, i, it) for i in IDS] for it in (1, 2, 3)]
    assert per_iteration[0] != per_iteration[1] != per_iteration[2]
    # and one instruction does not get one fixed action across its iterations
    assert any(len({pick_action(ACTIONS, 0, i, it) for it in (1, 2, 3)}) > 1 for i in IDS)


def test_pick_action_varies_with_seed():
    assert [pick_action(ACTIONS, 0, i, 1) for i in IDS] != [pick_action(ACTIONS, 1, i, 1) for i in IDS]


def test_pick_action_spreads_over_actions():
    assert len({pick_action(ACTIONS, 0, i, 1) for i in IDS}) >= 6
    assert all(pick_action(ACTIONS, 0, i, 1) in ACTIONS for i in IDS)


# -- augment -------------------------------------------------------------------------------

METADATA = [
    {"use_case": "creative writing", "skills": ["role-play", "sports"], "seed_ids": ["s0"]},
    {"use_case": "code generation", "skills": ["python"], "seed_ids": ["s1"]},
    {"use_case": "code generation", "skills": ["python", "debugging", "sql"], "seed_ids": ["s2"]},
    {"use_case": "general question answering", "skills": ["academic writing", "machine learning"],
     "seed_ids": ["s3"]},
]
UNION = {"role-play", "sports", "python", "debugging", "sql", "academic writing", "machine learning"}


def test_augment_is_deterministic_for_a_seed():
    first = augment(METADATA, 50, (1, 3), seed=0)
    random.seed(12345)  # the global RNG plays no part
    assert augment(METADATA, 50, (1, 3), seed=0) == first
    assert augment(METADATA, 50, (1, 3), seed=1) != first


def test_augment_entries_do_not_depend_on_pool_size():
    """Entry i is drawn from its own RNG: a larger pool extends a smaller one."""
    assert augment(METADATA, 60, (1, 3), seed=0)[:20] == augment(METADATA, 20, (1, 3), seed=0)


def test_augment_does_not_change_its_input():
    before = [dict(m, skills=list(m["skills"])) for m in METADATA]
    augment(METADATA, 30, (1, 3), seed=0)
    assert before == METADATA


def test_augment_pool_shape():
    pool = augment(METADATA, 200, (1, 3), seed=0)
    assert len(pool) == 200
    assert [e["id"] for e in pool] == [f"m{i:04d}" for i in range(200)]
    encoded_use_cases = {m["use_case"] for m in METADATA}
    for entry in pool:
        assert 1 <= len(entry["skills"]) <= 3
        assert len(set(entry["skills"])) == len(entry["skills"])  # without replacement
        assert set(entry["skills"]) <= UNION
        assert entry["use_case"] in encoded_use_cases
    # the draws cover the range and the use cases
    assert {len(e["skills"]) for e in pool} == {1, 2, 3}
    assert {e["use_case"] for e in pool} == encoded_use_cases


def test_augment_keeps_seed_frequencies_of_use_cases():
    pool = augment(METADATA, 400, (1, 1), seed=0)
    share = sum(e["use_case"] == "code generation" for e in pool) / len(pool)
    assert 0.4 < share < 0.6  # two of four encoded entries are code generation


def test_augment_caps_skills_at_the_union():
    small = [{"use_case": "u", "skills": ["a", "b"], "seed_ids": ["s0"]}]
    pool = augment(small, 30, (3, 5), seed=0)
    assert all(sorted(e["skills"]) == ["a", "b"] for e in pool)


def test_augment_fixed_skill_count():
    assert all(len(e["skills"]) == 2 for e in augment(METADATA, 40, (2, 2), seed=3))


def test_augment_records_seed_ids():
    skill_source = {"role-play": "s0", "sports": "s0", "python": "s1", "debugging": "s2", "sql": "s2",
                    "academic writing": "s3", "machine learning": "s3"}
    use_case_source = {"creative writing": {"s0"}, "code generation": {"s1", "s2"},
                       "general question answering": {"s3"}}
    for entry in augment(METADATA, 100, (1, 3), seed=0):
        ids = entry["seed_ids"]
        assert len(ids) == len(set(ids))
        assert {skill_source[s] for s in entry["skills"]} <= set(ids)
        assert set(ids) & use_case_source[entry["use_case"]]
        assert set(ids) <= {skill_source[s] for s in entry["skills"]} | use_case_source[entry["use_case"]]


def test_augment_without_seed_ids():
    pool = augment([{"use_case": "u", "skills": ["a"]}], 3, (1, 3), seed=0)
    assert [e["seed_ids"] for e in pool] == [[], [], []]


@pytest.mark.parametrize("metadata", [[], [{"use_case": "u", "skills": []}]], ids=["no-entries", "no-skills"])
def test_augment_empty(metadata):
    assert augment(metadata, 10, (1, 3), seed=0) == []


# -- sample_slot ---------------------------------------------------------------------------


def test_sample_slot_counts_identical_entries():
    a = {"use_case": "u", "skills": ["x", "y"]}
    b = {"use_case": "u", "skills": ["y", "x"]}  # other order: other metadata
    c = {"use_case": "v", "skills": ["x", "y"]}
    assert sample_slot([a, dict(a), b, dict(a), c, dict(b)]) == [0, 1, 0, 2, 0, 1]


def test_sample_slot_distinct_entries_get_zero():
    entries = [{"use_case": f"u{i}", "skills": ["x"]} for i in range(5)]
    assert sample_slot(entries) == [0] * 5
    assert sample_slot([]) == []

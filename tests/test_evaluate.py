"""CRR evaluation: the paper's protocol (both orders, a win only if won both times) on scripted
judges, the real benchmark files, and the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from codeclm.programs.evaluate import LOSS, TIE, WIN, EvalOptions, evaluate, tally, verdict
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import ModelHub
from conftest import REPO, ScriptedBackend, base_spec, write_spec

# The paper's four evaluation sets live beside the repository (not copied into it: licences).
BENCHMARKS = Path(os.environ.get("CODECLM_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))
CANDIDATE, REFERENCE = "CANDIDATE ANSWER", "REFERENCE ANSWER"


@pytest.mark.parametrize(("candidate_first", "reference_first", "expected"), [
    ((8, 5), (5, 8), WIN),  # better in both orders
    ((5, 8), (8, 5), LOSS),  # worse in both orders
    ((9, 2), (9, 2), TIE),  # a pure position bias: each wins once
    ((7, 7), (6, 7), TIE),  # equal once
])
def test_a_win_needs_both_orders(candidate_first, reference_first, expected):
    assert verdict(candidate_first, reference_first) == expected


def test_crr_counts_ties_and_leaves_failures_out():
    row = tally([WIN, TIE, TIE, LOSS, "failed"])
    assert row == {"items": 5, "win": 1, "tie": 2, "loss": 1, "failed": 1, "crr": 0.75}
    assert tally(["failed"])["crr"] is None


def judge_by(rule):
    """A strong-role backend: answers as the reference, and judges with `rule(first, second)`,
    which sees which side's answer stands in each position."""

    def answer(messages):
        text = messages[-1]["content"]
        if "[The Start of Assistant 1's Answer]" not in text:
            return REFERENCE
        first = re.search(r"Assistant 1's Answer\]\s*(.*?)\s*\[The End", text, re.S).group(1)
        second = re.search(r"Assistant 2's Answer\]\s*(.*?)\s*\[The End", text, re.S).group(1)
        return "{} {}\nExplanation.".format(*rule(first, second))

    return answer


def run_eval(tmp_path: Path, rule, items: int = 5, mode: str = "live"):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Question {i}?"}) + "\n"
                             for i in range(items)))
    spec = load_spec(write_spec(tmp_path, base_spec(bench)))
    backends = {"strong": ScriptedBackend("scripted/strong", judge_by(rule)),
                "target": ScriptedBackend("scripted/target", lambda messages: CANDIDATE)}
    cache = CallCache(tmp_path / "cache", mode)
    try:
        result = evaluate(spec, EvalOptions(benchmarks=[bench], out=tmp_path / "eval"),
                          ModelHub(spec.models, cache, backends=backends))
    finally:
        cache.close()
    return result, backends


def better(side):
    return lambda first, second: (8, 4) if first == side else (4, 8)


def test_a_candidate_better_in_both_orders_wins_every_item(tmp_path):
    result, _ = run_eval(tmp_path, better(CANDIDATE))
    assert result.summary["bench"] == {"items": 5, "win": 5, "tie": 0, "loss": 0, "failed": 0, "crr": 1.0}


def test_a_reference_better_in_both_orders_gives_crr_zero(tmp_path):
    result, _ = run_eval(tmp_path, better(REFERENCE))
    assert result.summary["all"]["loss"] == 5 and result.summary["all"]["crr"] == 0.0


def test_position_bias_alone_is_a_tie(tmp_path):
    result, backends = run_eval(tmp_path, lambda first, second: (9, 2))
    assert result.summary["all"]["tie"] == 5
    judge_calls = [m for m in backends["strong"].calls if "Assistant 1" in m[-1]["content"]]
    assert len(judge_calls) == 10  # every item judged in both orders


def test_records_carry_answers_scores_and_calls(tmp_path):
    result, _ = run_eval(tmp_path, better(CANDIDATE), items=2)
    records = [json.loads(line) for line in (result.out / "eval.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1"]
    assert records[0]["answers"] == {"candidate": CANDIDATE, "reference": REFERENCE}
    assert records[0]["scores"] == {"candidate_first": [8, 4], "reference_first": [4, 8]}
    assert len(records[0]["calls"]) == 4  # two answers, two judgements
    report = json.loads((result.out / "eval.json").read_text())
    assert report["candidate"]["role"] == "target" and report["summary"]["all"]["crr"] == 1.0


def test_the_judge_runs_at_temperature_zero(tmp_path):
    result, _ = run_eval(tmp_path, better(CANDIDATE), items=1)
    record = json.loads((result.out / "eval.jsonl").read_text())
    judge_calls = [c for c in record["calls"] if c["stage"] == "judge"]
    assert judge_calls and all(c["params"]["temperature"] == 0.0 for c in judge_calls)


def test_unparsable_judgements_are_failed_items_and_all_failed_is_an_error(tmp_path):
    from codeclm.programs.errors import CodecError

    with pytest.raises(CodecError, match="no item could be judged"):
        run_eval(tmp_path, lambda first, second: ("great", "fine"), items=3)
    records = [json.loads(line) for line in (tmp_path / "eval" / "eval.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert all(r["verdict"] == "failed" and r["failure"]["stage"] == "judge" for r in records)


def test_a_second_evaluation_comes_from_the_cache(tmp_path):
    first, _ = run_eval(tmp_path, better(CANDIDATE))
    again, backends = run_eval(tmp_path, better(CANDIDATE), mode="replay")
    assert again.summary == first.summary
    assert not backends["strong"].calls and not backends["target"].calls


def test_a_failed_evaluation_leaves_no_earlier_results_behind(tmp_path):
    """A replay that missed (exit 3) left the previous evaluation's eval.json to be read as its own."""
    from codeclm.programs.errors import ReplayMiss

    run_eval(tmp_path, better(CANDIDATE), items=2)
    assert (tmp_path / "eval" / "eval.json").is_file()
    with pytest.raises(ReplayMiss):
        run_eval(tmp_path, better(CANDIDATE), items=4, mode="replay")
    assert not (tmp_path / "eval" / "eval.json").exists() and not (tmp_path / "eval" / "eval.jsonl").exists()


def test_a_replay_miss_in_evaluate_gives_evaluate_s_fix(tmp_path):
    """It told the user to run the spec live (`codeclm run SPEC`) and spoke of a recorded run there is none of."""
    from codeclm.programs.errors import ReplayMiss

    run_eval(tmp_path, better(CANDIDATE), items=2)
    with pytest.raises(ReplayMiss) as caught:
        run_eval(tmp_path, better(CANDIDATE), items=3, mode="replay")
    message = str(caught.value)
    assert "fix: run the same `codeclm evaluate` command without --replay" in message
    assert "codeclm run SPEC" not in message and "recorded run" not in message


def test_unknown_role_is_a_spec_error(tmp_path, seeds_file):
    from codeclm.programs.errors import SpecError

    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    with pytest.raises(SpecError, match="no model role 'tuned'"):
        evaluate(spec, EvalOptions(benchmarks=[seeds_file], candidate="tuned"))


def test_a_spec_without_a_pairwise_judge_says_so_before_asking_for_roles(tmp_path, seeds_file):
    """Self-Instruct asked for a 'target' role, then (once given) for a pairwise judge it can never have."""
    from codeclm.programs.errors import SpecError

    spec = load_spec(REPO / "specs" / "self_instruct.yaml")
    with pytest.raises(SpecError, match="needs a pairwise judge"):
        evaluate(spec, EvalOptions(benchmarks=[seeds_file], candidate="target"))


@pytest.mark.skipif(not BENCHMARKS.is_dir(),
                    reason="the paper's benchmark sets are not beside the repo (set CODECLM_BENCHMARKS)")
def test_cli_on_the_paper_benchmarks_through_the_fake_server(tmp_path):
    """The four evaluation sets as shipped, two items each, over real HTTP."""
    from click.testing import CliRunner
    from codeclm.cli import main
    from fake_openai_server import FakeOpenAIServer

    sets = sorted(BENCHMARKS.glob("*.jsonl"))
    assert len(sets) == 4
    with FakeOpenAIServer() as server:
        overrides = [arg for role in ("strong", "target") for arg in (
            "--set", f"models.{role}.model=hosted_vllm/{role}", "--set", f"models.{role}.api_base={server.url}")]
        result = CliRunner().invoke(main, ["evaluate", str(REPO / "specs" / "codeclm.yaml"), *map(str, sets),
                                           "--limit", "2", "--out", str(tmp_path / "eval"), "-q",
                                           "--cache-dir", str(tmp_path / "cache"), *overrides])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "target vs strong"
    rows = {line.split()[0]: line.split() for line in lines[2:7]}
    assert set(rows) == {*(p.stem for p in sets), "all"}
    assert rows["all"][1] == "8"
    summary = json.loads((tmp_path / "eval" / "eval.json").read_text())["summary"]
    assert summary["all"]["items"] == 8 and summary["all"]["failed"] == 0


def test_the_same_benchmark_twice_is_refused(tmp_path, seeds_file):
    """Given twice (or two files of one stem), a benchmark's items were merged and counted twice."""
    from codeclm.programs.errors import SpecError

    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    with pytest.raises(SpecError, match="two benchmark files are named"):
        evaluate(spec, EvalOptions(benchmarks=[seeds_file, seeds_file], candidate="target"))



def test_a_benchmark_named_all_is_refused(tmp_path, seeds_file):
    """The tally's total is named "all": a benchmark all.jsonl shared its row."""
    import shutil

    from codeclm.programs.errors import SpecError

    bench = tmp_path / "all.jsonl"
    shutil.copy(seeds_file, bench)
    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    with pytest.raises(SpecError, match="named 'all'"):
        evaluate(spec, EvalOptions(benchmarks=[bench], candidate="target"))


@pytest.mark.parametrize(("name", "text", "where"), [
    ("bench.jsonl", '{"prompt": "Say hi."}\n', "field"),
    ("bench.csv", "prompt\nSay hi.\n", "column"),
])
def test_a_benchmark_without_an_instruction_field_is_told_to_rename_it(tmp_path, seeds_file, name, text, where):
    """evaluate has no source node whose fields: could map another field: the fix said to map one there."""
    from codeclm.programs.errors import SpecError

    bench = tmp_path / name
    bench.write_text(text)
    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    with pytest.raises(SpecError) as caught:
        evaluate(spec, EvalOptions(benchmarks=[bench], candidate="target"))
    assert caught.value.file == str(bench) and caught.value.line == 1
    assert "source node" not in caught.value.hint
    assert f"rename the {where} that holds the instructions to 'instruction'" in caught.value.hint


@pytest.mark.parametrize("text", ['{"id": {"n": 1}, "instruction": "Say hi."}\n', '{"instruction": ["Say hi."]}\n'])
def test_a_benchmark_s_bad_value_is_not_told_to_change_a_spec(tmp_path, seeds_file, text):
    """An id or instruction that is not text was told to set a source node's id_field or write records: in
    the spec, neither of which evaluate reads."""
    from codeclm.programs.errors import SpecError

    bench = tmp_path / "bench.jsonl"
    bench.write_text(text)
    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    with pytest.raises(SpecError) as caught:
        evaluate(spec, EvalOptions(benchmarks=[bench], candidate="target"))
    assert caught.value.file == str(bench) and caught.value.line == 1
    assert "source node" not in caught.value.hint and "records:" not in caught.value.hint

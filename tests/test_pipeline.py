"""The whole pipeline on scripted models: the paper's algorithm, outputs and provenance."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import base_spec, hand_written, write_spec


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_paper_graph_runs_and_records_provenance(tmp_path, seeds_file, scripted):
    result = scripted(write_spec(tmp_path, base_spec(seeds_file)))
    out = result.out
    histories = read_jsonl(out / "instructions.jsonl")
    assert len(histories) == 3 * 2  # pool of 3, 2 instructions each
    dataset = read_jsonl(out / "dataset.jsonl")
    assert dataset, "the scripted judge prefers the strong answer often enough to keep pairs"
    for record in dataset:
        user, assistant = record["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        prov = record["provenance"]
        assert set(prov) >= {"seed_ids", "metadata", "actions", "iteration", "answers", "scores", "gap",
                             "decision", "calls"}
        assert prov["seed_ids"] and prov["metadata"]["use_case"]
        assert prov["scores"]["strong_first"] and prov["scores"]["target_first"]
        assert len(prov["actions"]) == prov["iteration"] - 1  # one action per iteration after the basic one
        assert assistant["content"] == prov["answers"]["answer_strong" if prov["decision"] == "keep_strong"
                                                       else "answer_target"]
    for name in ("metadata.jsonl", "pool.jsonl", "rubrics.jsonl", "manifest.json"):
        assert (out / name).is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["calls"] == scripted.calls()
    assert manifest["calls"]["judge/strong"]["calls"] > 0
    # LLaMA-Factory reads the folder as is: sharegpt formatting with OpenAI-style role tags.
    info = json.loads((out / "dataset_info.json").read_text())["tiny"]
    assert info["file_name"] == "dataset.jsonl" and info["columns"] == {"messages": "messages"}
    assert info["tags"]["role_tag"] == "role" and info["tags"]["assistant_tag"] == "assistant"


def test_iterations_are_bounded_and_each_is_filtered(tmp_path, seeds_file, scripted):
    """Every iteration, the basic one included, is answered by both models and judged in both orders;
    at most max_iterations iterations; an instruction still within theta after the last is dropped."""
    result = scripted(write_spec(tmp_path, base_spec(seeds_file, max_iterations=3)))
    histories = read_jsonl(result.out / "instructions.jsonl")
    statuses = {h["status"] for h in histories}
    assert statuses <= {"kept", "dropped"}
    for history in histories:
        steps = history["iterations"]
        assert 1 <= len(steps) <= 3
        for step in steps:
            assert set(step["answers"]) == {"answer_strong", "answer_target"}
            assert step["scores"]["strong_first"] is not None and step["scores"]["target_first"] is not None
        *earlier, last = steps
        assert all(s["decision"] == "improve" for s in earlier)
        if history["status"] == "dropped":
            assert len(steps) == 3 and last["decision"] == "drop" and abs(last["scores"]["gap"]) <= 3
        else:
            assert abs(last["scores"]["gap"]) > 3


def test_jinja_in_a_seed_reaches_the_model_literally(tmp_path, scripted):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Compute {{ 7*7 }} and explain {% raw %} blocks\n")
    scripted(write_spec(tmp_path, base_spec(seeds)))
    encode_prompts = [m[-1]["content"] for m in scripted.backends["strong"].calls if "analyzer" in m[0]["content"]]
    assert encode_prompts == ["Instruction: Compute {{ 7*7 }} and explain {% raw %} blocks"]


def test_malformed_model_output_becomes_recorded_failures(tmp_path, seeds_file, scripted):
    """A model that answers nonsense to every stage: the run finishes, every failure is recorded."""
    for backend in scripted.backends.values():
        backend.answer = lambda messages: "I'm ready to assist. What's your question?"
    # encode would fail anyway: hand-written metadata lets decode see entries
    spec = hand_written(base_spec(seeds_file), [{"use_case": "code generation", "skills": ["python"]}])
    result = scripted(write_spec(tmp_path, spec))
    failures = read_jsonl(result.out / "failures.jsonl")
    assert failures and all(f["node"] == "decode" and f["raw"] and "unparsable" in f["error"] for f in failures)
    assert not (result.out / "dataset.jsonl").read_text()


SMALL = ["params.pool_size=3", "params.dataset_size=6"]


def test_every_shipped_codeclm_spec_runs_unchanged_on_scripted_models(scripted):
    """The CodecLM family (the other pipelines run over HTTP in test_pipelines.py)."""
    from conftest import REPO

    for name in ("codeclm", "demo", "no_seed", "ablation_metadata", "ablation_rubrics"):
        spec = REPO / "specs" / f"{name}.yaml"
        result = scripted(spec, out=spec.stem, overrides=SMALL + ["params.max_iterations=2"]
                          if "metadata" not in spec.stem else SMALL)
        assert (result.out / "dataset.jsonl").read_text(), spec.name


def test_ablation_without_filter_improves_every_iteration_then_answers(scripted):
    from conftest import REPO

    result = scripted(REPO / "specs" / "ablation_rubrics.yaml", overrides=SMALL)
    histories = read_jsonl(result.out / "instructions.jsonl")
    assert all(h["status"] == "kept" and len(h["actions"]) == 3 for h in histories)
    calls = result.manifest["calls"]
    assert "judge/strong" not in calls
    assert calls["answer/strong"]["calls"] == len(histories)  # only the final instruction is answered


def judge_without_scores(messages):
    from fake_openai_server import answer_text

    if "[The Start of Assistant 1's Answer]" in messages[-1]["content"]:
        return "Both answers are fine."
    return answer_text(messages, "scripted/strong")


def test_unparsable_scores_fail_the_item_or_count_as_a_tie(tmp_path, seeds_file, scripted):
    scripted.backends["strong"].answer = judge_without_scores
    failed = scripted(write_spec(tmp_path, base_spec(seeds_file, max_iterations=2)), out="fail")
    histories = read_jsonl(failed.out / "instructions.jsonl")
    assert {h["status"] for h in histories} == {"failed"}
    assert histories[0]["failure"]["stage"] == "judge" and histories[0]["failure"]["raw"] == "Both answers are fine."
    tied = scripted(write_spec(tmp_path, base_spec(seeds_file, max_iterations=2, unparsable_score="tie")), out="tie")
    histories = read_jsonl(tied.out / "instructions.jsonl")
    assert {h["status"] for h in histories} == {"dropped"}
    assert [s["decision"] for s in histories[0]["iterations"]] == ["improve", "drop"]




def test_failures_of_nodes_at_several_depths_are_written_in_order(tmp_path, seeds_file, scripted):
    """Records fail at different depths (an encode, a decode, an iteration of the loop): failures.jsonl
    sorts them all by their records' places, never comparing a position with a node name."""
    def flaky(messages):
        from fake_openai_server import answer_text

        text = messages[-1]["content"]
        if "Explain why the sky is blue" in text or ("Write 2 instructions" in text and "travel" in text):
            return "no idea"
        if "[The Start of Assistant 1's Answer]" in text and "#1" in text:
            return "no scores"
        return answer_text(messages, "scripted/strong")

    scripted.backends["strong"].answer = flaky
    result = scripted(write_spec(tmp_path, base_spec(seeds_file)))
    failures = read_jsonl(result.out / "failures.jsonl")
    assert {f["node"] for f in failures} >= {"encode", "refine"}, failures
    assert all(f["error"] for f in failures)


def test_records_stream_past_a_slow_one(tmp_path, seeds_file, scripted):
    """Streaming: while one pool entry's decode is slow, the instructions of the others are already
    answered and judged; only whole-collection reads (the pool) wait."""
    import asyncio
    import time

    from conftest import ScriptedBackend
    from fake_openai_server import answer_text

    events: list[tuple[float, str]] = []

    class SlowFirstDecode(ScriptedBackend):
        async def complete(self, messages, params):
            text = messages[-1]["content"]
            if "Write 2 instructions" in text and not any(kind == "decode" for _, kind in events):
                events.append((time.monotonic(), "decode"))
                await asyncio.sleep(1.0)
                events.append((time.monotonic(), "slow decode done"))
            elif "[The Start of Assistant 1's Answer]" in text:
                events.append((time.monotonic(), "judge"))
            return await super().complete(messages, params)

    scripted.backends["strong"] = SlowFirstDecode("scripted/strong", answer=lambda m: answer_text(m, "scripted/strong"))
    scripted(write_spec(tmp_path, base_spec(seeds_file)))
    slow_done = next(t for t, kind in events if kind == "slow decode done")
    assert any(kind == "judge" and t < slow_done for t, kind in events)

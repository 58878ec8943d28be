"""codeclm optimize with declared metrics: GEPA over HTTP with a scripted reflection model, the
program file the spec loads, a warm-cache rerun with no model call, codec fidelity, and the
`optimize:` section's checks."""

from __future__ import annotations

import json
from pathlib import Path

import fake_openai_server
import pytest
import yaml
from click.testing import CliRunner
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import ModelHub
from codeclm.programs.tuning.metrics import codec_fidelity
from conftest import REPO, ScriptedBackend, base_spec, write_spec
from fake_openai_server import FakeOpenAIServer

MARKER = "BANANA"
QUESTIONS = [f"Question {i}: explain idea number {i} in one sentence." for i in range(10)]


# -- codec fidelity ------------------------------------------------------------------------------


def test_codec_fidelity_same_metadata_scores_one():
    score = codec_fidelity({"use_case": "Code generation", "skills": ["python", "Testing"]},
                           {"use_case": "code  generation.", "skills": ["testing", "python"]})
    assert score.value == 1.0
    assert "use case kept: 'code generation'" in score.feedback and "lost" not in score.feedback


def test_codec_fidelity_names_a_lost_skill():
    score = codec_fidelity({"use_case": "travel advice", "skills": ["budgeting", "planning"]},
                           {"use_case": "travel advice", "skills": ["planning"]})
    assert score.value == pytest.approx(0.5 + 0.5 * 1 / 2)
    assert "skills lost: budgeting" in score.feedback and "invented" not in score.feedback


def test_codec_fidelity_names_an_invented_skill_and_a_changed_use_case():
    score = codec_fidelity({"use_case": "poetry", "skills": ["rhyme"]},
                           {"use_case": "creative writing", "skills": "rhyme, humor"})
    assert score.value == pytest.approx(0.5 * 1 / 2)
    assert "use case changed: 'poetry' came back as 'creative writing'" in score.feedback
    assert "skills invented: humor" in score.feedback


# -- the optimize: section is checked at load ------------------------------------------------------


def test_optimize_section_errors_have_lines_and_fixes(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["optimize"] = {"augment": {},
                        "encode": {"metric": "nope",
                                   "metrics": {"q": {"type": "judge", "judge": "encode"},
                                               "c": {"type": "codec", "encode": "encode", "decode": "decodex"},
                                               "w": {"type": "wat"}}}}
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(write_spec(tmp_path, data))
    text = str(caught.value)
    assert "'augment' is not an llm or judge node" in text
    assert "no metric named 'nope'" in text
    assert "judge: 'encode' is not a pointwise judge node" in text
    assert "decode: 'decodex' is not an llm node" in text
    assert "unknown type 'wat'" in text
    assert "spec.yaml:2" in text and "fix:" in text  # file:line and the fix


def test_a_judge_metric_naming_a_pairwise_judge_is_told_the_type_that_fits(tmp_path):
    """The fix read 'a pointwise judge node (no pair:)s in this spec: none' where the spec's one judge is pairwise."""
    spec = REPO / "specs" / "demo.yaml"
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(spec, ["optimize.encode.metrics.q={type: judge, judge: judge}"])
    assert "fix: this spec has no pointwise judge nodes (no pair:): add one" in str(caught.value)
    assert "to name judge, write type: pairwise" in str(caught.value) and ":)s" not in str(caught.value)


def test_optimize_and_render_name_the_kind_of_a_node_that_sends_no_prompt():
    """`optimize demo.yaml augment` (a mix) said "no llm node named 'augment'", as if there were no such node."""
    from codeclm.cli import main

    spec = str(REPO / "specs" / "demo.yaml")
    for command in (["optimize", spec, "augment"], ["render", spec, "augment"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "'augment' is a mix node, which sends no prompt" in result.output
        assert "fix: llm nodes: encode, rubrics, decode" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["optimize", spec, "nope"])
    assert missing.exit_code == 2 and "no llm node named 'nope'" in missing.output


def test_a_metric_without_a_type_names_the_keys_yaml_read():
    """`{type:judge,judge:judge}` (no space after the colons) is YAML for two keys without values: the error
    read "metric 'q': unknown type None"."""
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(REPO / "specs" / "demo.yaml", ["optimize.encode.metrics.q={type:judge,judge:judge}"])
    assert "'type:judge' is read as one key with no value: a colon needs a space after it" in str(caught.value)
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(REPO / "specs" / "demo.yaml", ["optimize.encode.metrics.q={judge: judge}"])
    assert "metric 'q' has no type (its keys: 'judge')" in str(caught.value)
    assert "None" not in str(caught.value)


def test_a_valid_optimize_section_loads(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["optimize"] = {"encode": {"metric": "fidelity",
                                   "metrics": {"fidelity": {"type": "codec", "encode": "encode", "decode": "decode"}}}}
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.optimize["encode"].metric == "fidelity"


# -- GEPA over HTTP, a scripted reflection model -------------------------------------------------


def marker_answers(monkeypatch):
    """The fake server, answering with the marker word when the system prompt asks for it."""
    plain = fake_openai_server.answer_text

    def answer(messages, model):
        text = plain(messages, model)
        system = " ".join(m.get("content", "") for m in messages if m.get("role") == "system")
        return f"{text} {MARKER}" if MARKER in system else text

    monkeypatch.setattr(fake_openai_server, "answer_text", answer)


def reflection(messages):
    """A scripted proposal model: answers DSPy's GEPA proposer in JSON with a new instruction."""
    assert "examples_with_feedback" in messages[-1]["content"]
    return json.dumps({"new_instruction": f"Answer in one sentence and end with the word {MARKER}."})


def marker_spec(tmp_path: Path, url: str, program: Path | None = None) -> Path:
    seeds = tmp_path / "questions.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    answer = {"type": "llm", "for_each": "questions", "model": "strong", "template": "respond.jinja",
              "inputs": {"instruction": "questions.instruction"}, "outputs": ["answer"]}
    if program:
        answer["program"] = str(program)
    data = {"name": "marker", "prompts": str(REPO / "prompts"),
            "models": {"strong": {"model": "hosted_vllm/fake", "api_base": url, "temperature": 0.0, "max_tokens": 64},
                       "reflect": {"model": "local", "max_tokens": 256}},
            "nodes": {"questions": {"type": "source", "path": str(seeds)}, "answer": answer},
            "outputs": {"dataset": {"from": "answer", "fields": {"id": "record.id", "answer": "answer.answer"}}},
            "optimize": {"answer": {"metric": "marker",
                                    "metrics": {"marker": {"type": "contains", "text": MARKER}}}}}
    return write_spec(tmp_path, data, "marker.yaml" if program is None else "marker-tuned.yaml")


def run_gepa(spec_path: Path, cache_dir: Path, out: Path, reflect: ScriptedBackend):
    from codeclm.programs.optimize import OptimizeOptions, optimize

    spec = load_spec(spec_path)
    hub = ModelHub(spec.models, CallCache(cache_dir), backends={"reflect": reflect})
    options = OptimizeOptions(stage="answer", optimizer="gepa", reflection="reflect", max_metric_calls=30,
                              out=out, cache_dir=cache_dir)
    return optimize(spec, options, hub), hub


def test_gepa_over_http_tunes_for_a_marker_and_replays_from_a_warm_cache(tmp_path, monkeypatch):
    marker_answers(monkeypatch)
    with FakeOpenAIServer() as server:
        spec_path = marker_spec(tmp_path, server.url)
        reflect = ScriptedBackend("scripted/reflect", answer=reflection)
        result, hub = run_gepa(spec_path, tmp_path / "cache", tmp_path / "answer.json", reflect)
        assert reflect.calls, "GEPA asked the reflection model for a new instruction"
        assert MARKER in result.instructions
        assert (result.before, result.after, result.checked) == (0.0, 1.0, 3)  # held-out, before and after
        assert result.calls["calls"] == server.completions + len(reflect.calls)
        saved = json.loads(result.path.read_text())
        meta = saved["codeclm"]
        assert meta["optimizer"] == "gepa" and meta["metric"] == {"name": "marker", "type": "contains",
                                                                  "text": MARKER}
        assert meta["budget"]["max_metric_calls"] == 30 and meta["reflection"] == "reflect"
        # the calls GEPA's budget counts, not its second ask of some for feedback (which made it 33 of 30)
        assert 20 < meta["scores"]["metric_calls"] <= 30, meta["scores"]["metric_calls"]
        assert meta["scores"]["held_out"] == {"items": 3, "before": 0.0, "after": 1.0}
        assert "before" in result.table and result.path.with_suffix(".scores.txt").read_text().strip() == result.table

        # The same optimization on the warm cache: no model call at all, the same result.
        served = server.completions
        again = ScriptedBackend("scripted/reflect", answer=reflection)
        second, hub2 = run_gepa(spec_path, tmp_path / "cache", tmp_path / "answer2.json", again)
        assert server.completions == served and not again.calls
        assert second.calls.get("calls", 0) == 0 and second.instructions == result.instructions
        assert second.after == result.after

        # The spec loads the program; render shows the tuned prompt; a run records its hash.
        tuned_path = marker_spec(tmp_path, server.url, program=result.path)
        from codeclm.cli import main

        shown = CliRunner().invoke(main, ["render", str(tuned_path), "answer", "--input",
                                          json.dumps({"instruction": "Hi?"})])
        assert shown.exit_code == 0, shown.output
        messages = json.loads(shown.output)
        assert messages[0]["role"] == "system" and MARKER in messages[0]["content"]
        run = CliRunner().invoke(main, ["run", str(tuned_path), "--out", str(tmp_path / "run"), "--cache-dir",
                                        str(tmp_path / "cache"), "-q", "--no-report"])
        assert run.exit_code == 0, run.output
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["programs"]["answer"]["sha256"]
        dataset = [json.loads(line) for line in (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()]
        assert dataset and all(row["answer"].endswith(MARKER) for row in dataset)


def test_cli_optimize_prints_the_table_and_progress(tmp_path, monkeypatch):
    from codeclm.cli import main

    marker_answers(monkeypatch)
    with FakeOpenAIServer() as server:
        spec_path = marker_spec(tmp_path, server.url)
        result = CliRunner().invoke(main, ["optimize", str(spec_path), "answer", "--metric", "marker",
                                           "--optimizer", "bootstrap", "--out", str(tmp_path / "a.json"),
                                           "--cache-dir", str(tmp_path / "cache"), "-q"])
        # GEPA with the server's model as its own proposal model: it proposes nothing readable, and says how it goes
        gepa = CliRunner().invoke(main, ["optimize", str(spec_path), "answer", "--optimizer", "gepa",
                                         "--reflection", "strong", "--max-metric-calls", "12",
                                         "--out", str(tmp_path / "g.json"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output and "marker" in result.output
    assert gepa.exit_code == 0, gepa.output
    assert "warning: gepa left node 'answer' as it was: no new instructions were proposed" in gepa.output
    assert "metric calls" in gepa.output and "best so far" in gepa.output  # progress while it runs
    assert "Failed to deep copy" not in gepa.output
    bad = CliRunner().invoke(main, ["optimize", str(spec_path), "answer", "--metric", "nope"])
    assert bad.exit_code == 2 and "no metric named 'nope'" in bad.output


def test_gepa_logs_an_unreadable_proposal_in_one_line_without_a_traceback(tmp_path):
    """A reflection model answering in another format: GEPA logged each failed proposal with Python's whole
    traceback on DSPy's handler (1,700 lines, 18 tracebacks for --max-metric-calls 60), read as a crash."""
    import io
    import logging

    seen, dspy_log = io.StringIO(), logging.getLogger("dspy")
    handler, level = logging.StreamHandler(seen), dspy_log.level  # `optimize -q` in another test raised the level
    dspy_log.addHandler(handler)
    dspy_log.setLevel(logging.INFO)
    try:
        reflect = ScriptedBackend("scripted/reflect", answer=lambda messages: "Not JSON at all.")
        with FakeOpenAIServer() as server:
            run_gepa(marker_spec(tmp_path, server.url), tmp_path / "cache", tmp_path / "a.json", reflect)
    finally:
        dspy_log.removeHandler(handler)
        dspy_log.setLevel(level)
    text = seen.getvalue()
    assert reflect.calls and "reflection failed" in text  # it still says what failed, in one line
    assert "Traceback" not in text and 'File "' not in text


def test_the_best_score_so_far_is_a_validation_mean():
    """GEPA scores the current prompt on validation (0.056 for codeclm.yaml's encode), then again on training
    minibatches: they joined its mean, and 'best so far' of that one unchanged prompt went 0.056, 0.048, 0.042,
    ... 0.028 (and, where minibatches scored higher, up again)."""
    import io

    from codeclm.programs.optimize import Tracker

    shown = io.StringIO()
    tracker = Tracker(shown, width=2)
    for instructions, value, item in [("p", 1.0, "val0"), ("p", 0.0, "val1"), ("p", 0.0, "train3"),
                                      ("p", 0.0, "train4"), ("q", 1.0, "val0"), ("q", 1.0, "val1")]:
        tracker.record(instructions, value, item=item)
    assert tracker.best == 1.0 and len(tracker.candidates) == 2
    assert [line.rsplit(" ", 1)[1] for line in shown.getvalue().splitlines()] == ["0.500", "0.500", "1.000"]


# -- codec fidelity as a metric, scripted models ----------------------------------------------------


def test_codec_metric_scores_decode_by_what_encode_recovers(tmp_path, seeds_file):
    from codeclm.programs.optimize import OptimizeOptions, optimize

    data = base_spec(seeds_file)
    data["optimize"] = {"encode": {"metric": "fidelity", "metrics": {
        "fidelity": {"type": "codec", "encode": "encode", "decode": "decode"}}}}
    seeds = tmp_path / "more.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Seed {i}: do task {i}."}) + "\n"
                             for i in range(6)))
    data["nodes"]["seeds"]["path"] = str(seeds)
    spec = load_spec(write_spec(tmp_path, data))

    def model(messages):
        text = "\n".join(m["content"] for m in messages)
        if "instruction analyzer" in text:  # encode: the same metadata for any instruction, one skill lost
            last = messages[-1]["content"]
            skills = "planning" if "Write about" in last else "planning, budgeting"
            return f"Use case: travel advice\nSkills: {skills}"
        return "1. Write about travel advice."

    backend = ScriptedBackend("scripted/strong", answer=model)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend, "target": backend})
    result = optimize(spec, OptimizeOptions(stage="encode", optimizer="bootstrap", out=tmp_path / "e.json",
                                            cache_dir=tmp_path / "cache"), hub)
    assert result.metric == "fidelity" and result.before == pytest.approx(0.75)  # use case kept, 1 of 2 skills
    stages = {key.split("/")[0] for key in hub.summary()}
    assert {"encode", "decode"} <= stages


def test_yaml_of_the_section_in_docs_loads():
    """The optimize: example of docs/spec.md is valid YAML with the documented keys."""
    text = (REPO / "docs" / "spec.md").read_text()
    assert "## optimize" in text
    block = text.split("## optimize", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert "optimize" in yaml.safe_load(block)


# -- codeclm compare -----------------------------------------------------------------------------


def answer_spec(tmp_path: Path, model: str = "strong", name: str = "answers") -> Path:
    seeds = tmp_path / "questions.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    data = {"name": name, "prompts": str(REPO / "prompts"),
            "models": {"strong": {"model": "local"}, "target": {"model": "local"}},
            "nodes": {"questions": {"type": "source", "path": str(seeds)},
                      "answer": {"type": "llm", "for_each": "questions", "model": model, "template": "respond.jinja",
                                 "inputs": {"instruction": "questions.instruction"}, "outputs": ["answer"]}},
            "outputs": {"dataset": {"from": "answer", "fields": {
                "messages": [{"role": "'user'", "content": "questions.instruction"},
                             {"role": "'assistant'", "content": "answer.answer"}],
                "provenance": {"id": "record.id"}}}}}
    return write_spec(tmp_path, data, f"{name}.yaml")


def run_compare(tmp_path: Path, spec_a, spec_b, scripted):
    from codeclm.programs.compare import CompareOptions, compare

    hubs = [ModelHub(s.models, CallCache(tmp_path / "cache"), backends=scripted.backends) for s in (spec_a, spec_b)]
    return compare(spec_a, spec_b, CompareOptions(judge="strong", out=tmp_path / "cmp", cache_dir=tmp_path / "cache"),
                   *hubs)


def test_compare_finds_the_better_spec(tmp_path, scripted):
    path = answer_spec(tmp_path)
    better, worse = load_spec(path), load_spec(path, ["nodes.answer.model=target"])
    result = run_compare(tmp_path, better, worse, scripted)
    assert result.judged == len(QUESTIONS) and result.unmatched == 0 and result.failed == 0
    low, high = result.interval
    assert result.wins > result.losses and low > 0, (result.wins, result.ties, result.losses, result.interval)
    assert (tmp_path / "cmp" / "compare.json").is_file()
    assert "A is better" in (tmp_path / "cmp" / "compare.txt").read_text()
    assert result.sides["a"]["kept"] == result.sides["b"]["kept"] == len(QUESTIONS)
    # Again on the warm cache: the same figures, no call.
    calls = scripted.calls()
    again = run_compare(tmp_path, better, worse, scripted)
    assert scripted.calls() == calls and again.interval == result.interval


def test_a_replay_miss_in_compare_gives_compare_s_fix(tmp_path, scripted):
    """It told the user to run the spec live (`codeclm run SPEC`): compare's own command makes its calls."""
    from codeclm.programs.compare import CompareOptions, compare
    from codeclm.programs.errors import ReplayMiss

    path = answer_spec(tmp_path)
    better, worse = load_spec(path), load_spec(path, ["nodes.answer.model=target"])
    with pytest.raises(ReplayMiss) as caught:
        compare(better, worse, CompareOptions(judge="strong", out=tmp_path / "cmp", cache_dir=tmp_path / "cache",
                                              cache_mode="replay"))
    assert "fix: run the same `codeclm compare` command without --replay" in str(caught.value)


def test_compare_refuses_a_dataset_without_instruction_and_response_before_any_call(tmp_path, scripted):
    """A pipeline of one's own writing {topic, tip}: both specs ran, then 'nothing was judged: A and B kept no
    rows' of two datasets of 10 rows each, exit 1; now exit 2 before any call, naming the fields compare reads."""
    data = yaml.safe_load(answer_spec(tmp_path).read_text())
    data["outputs"]["dataset"]["fields"] = {"question": "questions.instruction", "reply": "answer.answer"}
    spec = load_spec(write_spec(tmp_path, data, "mine.yaml"))
    with pytest.raises(SpecError) as caught:
        run_compare(tmp_path, spec, spec, scripted)
    text = str(caught.value)
    assert caught.value.exit_code == 2 and "mine.yaml: compare judges each record's instruction and response" in text
    assert "its fields are question, reply" in text and "fix: give outputs.dataset the fields instruction:" in text
    assert scripted.calls() == 0 and not (tmp_path / "cmp").exists()


def test_compare_of_identical_specs_includes_zero(tmp_path, scripted):
    spec = load_spec(answer_spec(tmp_path))
    result = run_compare(tmp_path, spec, spec, scripted)
    low, high = result.interval
    assert result.ties == len(QUESTIONS) and low <= 0 <= high


def test_cli_compare_with_variants_over_http(tmp_path):
    from codeclm.cli import main

    with FakeOpenAIServer() as server:
        path = answer_spec(tmp_path)
        overrides = ["--set", f"models.strong.api_base={server.url}", "--set",  # --set: both A and B
                     "models.strong.model=hosted_vllm/strong", "--set", f"models.target.api_base={server.url}",
                     "--set", "models.target.model=hosted_vllm/t", "--set-b", "nodes.answer.model=target"]
        result = CliRunner().invoke(main, ["compare", str(path), *overrides, "--judge", "strong",
                                           "--out", str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "A: " in result.output and "B: " in result.output and "A is better" in result.output
    assert "cost_usd" in result.output and "kept" in result.output
    assert result.output.count("\nkept ") == 1  # not again among the quality figures


def test_cli_compare_of_specs_that_share_no_record_says_so(tmp_path):
    """Two pipelines make different record ids: 0 judged printed a [0, 0] interval, 'no clear difference', exit 0."""
    from codeclm.cli import main

    with FakeOpenAIServer() as server:
        path = answer_spec(tmp_path)
        overrides = ["--set-a", f"models.strong.api_base={server.url}", "--set-a", "models.strong.model=hosted_vllm/s"]
        overrides += [o.replace("--set-a", "--set-b") for o in overrides] + ["--set-b", "nodes.questions.id_field=x"]
        result = CliRunner().invoke(main, ["compare", str(path), *overrides, "--judge", "strong",
                                           "--out", str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1 and "nothing was judged: A and B kept no record of the same id" in result.output
    assert "no pair was judged: no verdict" in result.output and "no clear difference" not in result.output


def test_cli_compare_with_a_side_that_kept_nothing_names_it(tmp_path):
    """B kept no rows: the note blamed the setup (A and B must make the same records), not the empty side."""
    from codeclm.cli import main

    with FakeOpenAIServer() as server:
        path = answer_spec(tmp_path)
        overrides = ["--set-a", f"models.strong.api_base={server.url}", "--set-a", "models.strong.model=hosted_vllm/s"]
        overrides += [o.replace("--set-a", "--set-b") for o in overrides]
        overrides += ["--set-b", "outputs.dataset.where=record.status == 'none'"]
        result = CliRunner().invoke(main, ["compare", str(path), *overrides, "--judge", "strong",
                                           "--out", str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1 and "nothing was judged: B kept no rows" in result.output, result.output
    kept_share = next(line for line in result.output.splitlines() if line.startswith("kept_share"))
    assert kept_share.split()[1:] == ["1", "0"]


# -- judge and pairwise metrics, scripted models -----------------------------------------------------


def judged_spec(tmp_path: Path) -> Path:
    path = answer_spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["nodes"]["rate"] = {"type": "judge", "for_each": "answer", "model": "strong",
                             "template": "critique_judge.jinja",
                             "inputs": {"instruction": "questions.instruction", "answer": "answer.answer"}}
    data["nodes"]["duel"] = {"type": "judge", "for_each": "rate", "model": "strong", "template": "judge.jinja",
                             "inputs": {"instruction": "questions.instruction"},
                             "pair": ["answer.answer", "answer.answer"]}
    data["outputs"]["dataset"]["from"] = "duel"
    data["optimize"] = {"answer": {"metric": "quality", "metrics": {
        "quality": {"type": "judge", "judge": "rate"}, "prefer": {"type": "pairwise", "judge": "duel"}}}}
    return write_spec(tmp_path, data, "judged.yaml")


def judging_model(messages):
    text = "\n".join(m["content"] for m in messages)
    if fake_openai_server.JUDGE_MARKER in text:
        first = text.split("[The Start of Assistant 1's Answer]")[-1].split("[The End of Assistant 1's Answer]")[0]
        second = text.split("[The Start of Assistant 2's Answer]")[-1].split("[The End")[0]
        return f"{9 if MARKER in first else 3} {9 if MARKER in second else 3}\nCompared."
    if "Rate the answer" in text:
        answer = text.split("[The Start of the Answer]")[-1].split("[The End of the Answer]")[0]
        return f"{9 if MARKER in answer else 3}\nIt {'ends' if MARKER in answer else 'does not end'} well."
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    return "An answer." + (f" {MARKER}" if MARKER in system else "")


@pytest.mark.parametrize(("metric", "before", "after"), [("quality", 2 / 9, 8 / 9), ("prefer", 0.5, 0.5 + 6 / 18)])
def test_gepa_with_a_judge_metric(tmp_path, metric, before, after):
    from codeclm.programs.optimize import OptimizeOptions, optimize

    spec = load_spec(judged_spec(tmp_path))
    strong, reflect = ScriptedBackend("scripted/strong", judging_model), ScriptedBackend("scripted/r", reflection)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": strong, "target": reflect})
    result = optimize(spec, OptimizeOptions(stage="answer", optimizer="gepa", metric=metric, reflection="target",
                                            max_metric_calls=30, out=tmp_path / "a.json"), hub)
    assert result.before == pytest.approx(before, abs=1e-3) and result.after == pytest.approx(after, abs=1e-3)
    judge = {"quality": "rate", "prefer": "duel"}[metric]
    assert judge in {key.split("/")[0] for key in hub.summary()}  # the judge node's calls, through the hub


def test_bootstrap_for_a_pairwise_metric_needs_another_teacher(tmp_path):
    """Bootstrap's demos are the node's own outputs, which a pairwise metric judges against themselves: every
    one tied at 0.5, so the default --threshold 1 kept none, after every call was made, exit 0."""
    from codeclm.programs.optimize import OptimizeOptions, optimize

    spec = load_spec(judged_spec(tmp_path))
    strong = ScriptedBackend("scripted/strong", judging_model)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": strong, "target": strong})
    with pytest.raises(SpecError) as caught:
        optimize(spec, OptimizeOptions(stage="answer", metric="prefer", out=tmp_path / "b.json"), hub)
    assert caught.value.exit_code == 2 and "every one scores 0.5 (a tie)" in str(caught.value)
    assert "fix: let another model write the demos (--teacher ROLE)" in str(caught.value) and not strong.calls
    result = optimize(spec, OptimizeOptions(stage="answer", metric="prefer", teacher="target", threshold=0.5,
                                            out=tmp_path / "b.json"), hub)
    assert result.metric == "prefer"


def test_mipro_without_optuna_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    from codeclm.programs.optimize import OptimizeOptions, optimize

    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    spec = load_spec(answer_spec(tmp_path))
    backend = ScriptedBackend("scripted/strong", judging_model)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend, "target": backend})
    with pytest.raises(SpecError, match="needs optuna"):
        optimize(spec, OptimizeOptions(stage="answer", optimizer="mipro", out=tmp_path / "a.json"), hub)


# -- the embedded model, end to end ----------------------------------------------------------------


@pytest.mark.slow
def test_gepa_for_codec_fidelity_on_the_embedded_model(tmp_path):
    """One small GEPA optimization of demo.yaml's encoder for codec fidelity on SmolLM2: every
    call (encode, decode, the 135M model as its own reflection model) through the hub; the
    program saves, the spec loads it, and the held-out table is printed."""
    from codeclm.cli import main

    out = tmp_path / "encode.json"
    spec = str(REPO / "specs" / "demo.yaml")
    section = ["--set", "optimize.encode.metric=fidelity", "--set",
               "optimize.encode.metrics.fidelity={type: codec, encode: encode, decode: decode, count: 1}",
               "--set", "models.strong.max_tokens=64"]
    result = CliRunner().invoke(main, ["optimize", spec, "encode", *section, "--optimizer", "gepa",
                                       "--reflection", "strong", "--max-metric-calls", "6", "--examples", "5",
                                       "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output and "fidelity" in result.output
    meta = json.loads(out.read_text())["codeclm"]
    assert meta["optimizer"] == "gepa" and meta["metric"]["type"] == "codec"
    assert 0.0 <= meta["scores"]["held_out"]["after"] <= 1.0 and meta["scores"]["calls"]["calls"] > 0
    assert load_spec(spec, [f"nodes.encode.program={out}"]).graph.every["encode"].program == out


def test_mipro_tunes_for_a_marker_and_replays_from_a_warm_cache(tmp_path):
    """MIPROv2 (instructions and demos) with a scripted proposal model; the rerun calls nothing."""
    pytest.importorskip("optuna")
    from codeclm.programs.optimize import OptimizeOptions, optimize

    data = yaml.safe_load(answer_spec(tmp_path).read_text())
    data["optimize"] = {"answer": {"metric": "marker", "metrics": {"marker": {"type": "contains", "text": MARKER}}}}
    spec = load_spec(write_spec(tmp_path, data, "mipro.yaml"))

    def proposer(messages):  # answers any of MIPROv2's proposal steps: extra fields are ignored
        return json.dumps({"observations": "Short answers.", "summary": "Questions.", "program_description": "QA.",
                           "module_description": "Answers.", "proposed_instruction": f"End with {MARKER}."})

    results = []
    for _ in range(2):
        strong, propose = ScriptedBackend("scripted/strong", judging_model), ScriptedBackend("scripted/p", proposer)
        hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": strong, "target": propose})
        results.append(optimize(spec, OptimizeOptions(stage="answer", optimizer="mipro", reflection="target",
                                                      auto="light", out=tmp_path / "m.json"), hub))
    first, second = results
    assert (first.before, first.after) == (0.0, 1.0) and MARKER in first.instructions
    assert second.calls.get("calls", 0) == 0 and not strong.calls and not propose.calls
    assert second.instructions == first.instructions


def test_compare_reports_the_loop_figures_of_codeclm(tmp_path, scripted, seeds_file):
    """Two CodecLM variants (threshold 3 and 1): the share kept and the iterations needed, side by side."""
    spec_a = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    spec_b = load_spec(write_spec(tmp_path, base_spec(seeds_file, threshold=1), "b.yaml"))
    result = run_compare(tmp_path, spec_a, spec_b, scripted)
    for side in ("a", "b"):
        figures = result.sides[side]
        assert 0 <= figures["kept_share"] <= 1 and figures["mean_iteration"] >= 1
    assert "kept_share" in (tmp_path / "cmp" / "compare.txt").read_text()


@pytest.mark.parametrize(("threshold", "has_demos"), [(1.0, False), (0.2, True)])
def test_bootstrap_keeps_demos_the_metric_scores_above_the_threshold(tmp_path, threshold, has_demos):
    from codeclm.programs.optimize import OptimizeOptions, optimize

    spec = load_spec(judged_spec(tmp_path))
    strong = ScriptedBackend("scripted/strong", judging_model)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": strong, "target": strong})
    result = optimize(spec, OptimizeOptions(stage="answer", optimizer="bootstrap", metric="quality",
                                            threshold=threshold, out=tmp_path / "b.json"), hub)
    assert (result.demos > 0) == has_demos  # the judge gives 3 of 10 (0.22) to every answer here
    assert json.loads(result.path.read_text())["codeclm"]["budget"]["threshold"] == threshold


def test_a_search_that_changes_nothing_says_why_with_the_fix(tmp_path, monkeypatch):
    """No answer reached --threshold 1: bootstrap kept no demo and printed 'saved ...; use it with --set', exit 0,
    a program that is the untuned prompt; now it says the prompt is as it was, why, and the fix."""
    from codeclm.cli import main

    monkeypatch.setattr(fake_openai_server, "answer_text", lambda messages, model: judging_model(messages))
    with FakeOpenAIServer() as server:
        overrides = ["--set", "models.strong.model=hosted_vllm/judging",
                     "--set", f"models.strong.api_base={server.url}"]
        result = CliRunner().invoke(main, ["optimize", str(judged_spec(tmp_path)), "answer", *overrides,
                                           "--metric", "quality", "--out", str(tmp_path / "b.json"),
                                           "--cache-dir", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 0, result.output
    assert "the prompt as it was, no demos added" in result.output and "use it with --set" not in result.output
    assert "warning: bootstrap left node 'answer' as it was: no output scored at least --threshold 1" in result.output
    assert "scored 0.222: the judge scored it 3" in result.output and "fix: lower --threshold" in result.output


def test_a_search_that_drops_a_program_s_demos_is_not_told_as_it_was(tmp_path):
    """A node whose program: holds demos, bootstrapped again to none: the warning said the prompt was as it
    was, though the saved program has lost the demos the node ran with."""
    from codeclm.programs.optimize import OptimizeOptions, optimize

    strong = ScriptedBackend("scripted/strong", judging_model)
    path = judged_spec(tmp_path)
    results = []
    for overrides, threshold in (([], 0.2), ([f"nodes.answer.program={tmp_path / 'first.json'}"], 1.0)):
        spec = load_spec(path, overrides)
        hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": strong, "target": strong})
        results.append(optimize(spec, OptimizeOptions(stage="answer", metric="quality", threshold=threshold,
                                                      out=tmp_path / ("first.json" if not results else "b.json")),
                                hub))
    first, second = results
    assert first.demos > 0 and second.demos == 0 and second.unchanged == ""


def test_too_few_inputs_from_a_source_says_to_give_it_more_records(tmp_path):
    """A node fed by a source of 2 records was told to 'run the spec first, then pass --from', which makes no
    more inputs: they are the source's records."""
    from codeclm.cli import main

    two = tmp_path / "two.jsonl"
    two.write_text('{"instruction": "Say hi."}\n{"instruction": "Say bye."}\n')
    result = CliRunner().invoke(main, ["optimize", str(answer_spec(tmp_path)), "answer", "--seeds", str(two),
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "node 'answer': 2 example input(s), need at least 3" in result.output
    assert "fix: give source 'questions' at least 3 distinct records" in result.output
    assert "--from" not in result.output


def test_the_same_reflection_prompt_asked_again_is_a_new_sample_and_a_rerun_replays_both(tmp_path):
    """DSPy strips rollout_id before a request reaches codeclm: the n-th ask of one prompt is slot n."""
    from codeclm.programs.optimize import reflection_lm

    spec = load_spec(answer_spec(tmp_path))
    answers = iter(["first proposal", "second proposal", "third"])
    model = ScriptedBackend("scripted/target", answer=lambda m: next(answers))
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"target": model})
    lm = reflection_lm(hub, spec, "target")
    assert [lm("Propose an instruction.")[0], lm("Propose an instruction.")[0]] == ["first proposal", "second proposal"]
    hub.cache.close()  # the first run ends (its last answers are written in a batch at the latest then)
    again = ScriptedBackend("scripted/target", answer=lambda m: "never asked")
    hub2 = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"target": again})
    lm2 = reflection_lm(hub2, spec, "target")
    assert [lm2("Propose an instruction.")[0], lm2("Propose an instruction.")[0]] == ["first proposal",
                                                                                        "second proposal"]
    assert not again.calls and len(model.calls) == 2


def test_optimize_never_writes_over_a_file_it_did_not_make(tmp_path, seeds_file):
    """--out naming a user's file is refused before any model call, the file left as it was."""
    from codeclm.cli import main

    spec_path = write_spec(tmp_path, base_spec(seeds_file))
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}\n')
    result = CliRunner().invoke(main, ["optimize", str(spec_path), "encode", "--out", str(mine),
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "was not written by `codeclm optimize`" in result.output, result.output
    assert mine.read_text() == '{"mine": true}\n'
    assert not (tmp_path / "cache").exists()  # refused before the cache was opened, let alone a model


def test_a_program_path_relative_to_here_is_told_it_is_read_from_the_spec_s_folder(tmp_path, monkeypatch):
    """optimize prints where it saved from the current folder; --set nodes.NODE.program=runs/... is read from the
    spec's folder, and the error's fix said to make one with codeclm optimize, which the user just did."""
    folder = tmp_path / "specs"
    folder.mkdir()
    spec = answer_spec(folder)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "answer.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(spec, ["nodes.answer.program=runs/answer.json"])
    assert f"optimized program {folder / 'runs' / 'answer.json'} not found" in str(caught.value)
    assert ("fix: a relative program: is read from the spec's folder, and runs/answer.json is in the current "
            f"folder: give its full path, {tmp_path / 'runs' / 'answer.json'}") in str(caught.value)


def test_optimize_refuses_an_out_inside_a_file_before_any_call(tmp_path, seeds_file):
    """--out naming a user's spec.yaml (not .json: read as a folder) made every call, then failed on the folder's
    mkdir: 'error: ...: File exists', exit 1, 'a run resumes'."""
    from codeclm.cli import main

    spec_path = write_spec(tmp_path, base_spec(seeds_file))
    result = CliRunner().invoke(main, ["optimize", str(spec_path), "encode", "--out", str(spec_path),
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2, result.output
    assert f"{spec_path}: --out needs a folder here, and this is a file" in result.output
    assert "fix: give --out a .json file to write, or a folder (where encode.json is written)" in result.output
    assert not (tmp_path / "cache").exists()  # before the cache was opened, let alone a model


def test_optimize_quiet_prints_only_its_result_and_out_may_be_a_folder(tmp_path, seeds_file):
    """`-q` still printed DSPy's INFO lines, tqdm bars and "Bootstrapped ..." (that one on stdout, with the
    result); `--out DIR` crashed in DSPy's save ("path must end with .json") with a traceback."""
    import os
    import subprocess
    import sys

    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = write_spec(tmp_path, data)
        done = subprocess.run([sys.executable, "-m", "codeclm.cli", "optimize", str(spec), "encode", "-q",
                               "--examples", "4", "--out", str(tmp_path / "tuned"),
                               "--cache-dir", str(tmp_path / "cache")],
                              capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert "Bootstrapped" not in done.stdout and done.stdout.startswith("node ")
    assert (tmp_path / "tuned" / "encode.json").is_file()


def test_compare_refuses_a_set_of_a_role_nothing_reads(tmp_path, seeds_file):
    """As run does: `--set models.stong...` (strong) would leave both sides on the spec's own model."""
    from codeclm.cli import main

    spec = write_spec(tmp_path, base_spec(seeds_file))
    result = CliRunner().invoke(main, ["compare", str(spec), "--set", "models.stong.model=hosted_vllm/x",
                                       "--set-b", "params.threshold=2", "--judge", "strong",
                                       "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "did you mean 'strong'?" in result.output, result.output
    assert not (tmp_path / "cmp").exists()

"""The other pipelines, in YAML and templates alone: each runs end to end over HTTP on the fake
server, its records carry provenance, and a replay from the cache alone gives the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from codeclm.programs.engine.run import RunOptions, run_spec
from codeclm.programs.lang.spec import load_spec
from conftest import REPO
from fake_openai_server import FakeOpenAIServer

SMALL = {"self_instruct": ["params.prompts_per_round=2", "params.new_per_prompt=4"],
         "evol_instruct": ["params.rounds=3"], "alpagasus": [], "critique_rewrite": []}


def on_server(spec: str, url: str) -> list[str]:
    roles = yaml.safe_load((REPO / "specs" / f"{spec}.yaml").read_text())["models"]
    sets = [f"models.{role}.model=hosted_vllm/{role}" for role in roles]
    return sets + [f"models.{role}.api_base={url}" for role in roles] + SMALL[spec]


def run(spec: str, folder: Path, url: str, mode: str = "live"):
    sets = on_server(spec, url)
    return run_spec(load_spec(REPO / "specs" / f"{spec}.yaml", sets),
                    RunOptions(out=folder / mode, cache_dir=folder / "cache", cache_mode=mode, overrides=sets))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every pipeline once live, then replayed with the server gone."""
    folder = tmp_path_factory.mktemp("pipelines")
    done = {}
    with FakeOpenAIServer() as server:
        for spec in SMALL:
            done[spec] = run(spec, folder / spec, server.url)
    for spec in SMALL:
        done[f"{spec}-replay"] = run(spec, folder / spec, "http://127.0.0.1:9/v1", mode="replay")
    return done


@pytest.mark.parametrize("spec", sorted(SMALL))
def test_pipeline_runs_over_http_with_provenance_and_replays(runs, spec):
    live, replay = runs[spec], runs[f"{spec}-replay"]
    dataset = lines(live.out / "dataset.jsonl")
    assert dataset, f"{spec} kept nothing"
    for row in dataset:
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"] and assistant["role"] == "assistant"
        assert row["provenance"]["id"] and row["provenance"]["seed_ids"]
    assert replay.manifest["totals"]["calls"] == 0
    assert (replay.out / "dataset.jsonl").read_bytes() == (live.out / "dataset.jsonl").read_bytes()
    # the counts (summary, inspect, the report's tiles) count every row: Self-Instruct's dataset reads
    # two rounds' nodes, and only the last one's records were counted
    assert live.manifest["counts"]["instructions"].get("kept") == len(dataset)
    if spec == "self_instruct":  # a mix node's records are counted too (the report's funnel has them)
        assert live.manifest["counts"]["stages"]["prompts_1"] == {"done": 2, "failed": 0}  # prompts_per_round=2


@pytest.mark.parametrize("spec", sorted(SMALL))
def test_pipeline_cache_bundle_replays_in_a_fresh_cache(runs, spec, tmp_path):
    """`cache export` finds a pipeline's calls in whatever outputs its spec declares (it read
    CodecLM's artifact names only, and exported none of these), and the bundle alone replays it."""
    from codeclm.programs.artifacts.bundle import export_bundle, import_bundle

    live = runs[spec]
    exported = export_bundle(live.out, tmp_path / "bundle.jsonl.gz")
    assert exported == live.manifest["totals"]["calls"] > 0
    assert import_bundle(tmp_path / "bundle.jsonl.gz", tmp_path / "fresh") == (exported, exported)
    sets = on_server(spec, "http://127.0.0.1:9/v1")
    replay = run_spec(load_spec(REPO / "specs" / f"{spec}.yaml", sets),
                      RunOptions(out=tmp_path / "replay", cache_dir=tmp_path / "fresh", cache_mode="replay",
                                 overrides=sets))
    assert replay.manifest["totals"]["calls"] == 0
    assert (replay.out / "dataset.jsonl").read_bytes() == (live.out / "dataset.jsonl").read_bytes()


def test_self_instruct_keeps_only_novel_tasks(runs):
    from codeclm.programs.lang.rouge import rouge_l

    seeds = [json.loads(line)["instruction"] for line in (REPO / "seeds" / "example.jsonl").read_text().splitlines()]
    kept = [row["messages"][0]["content"] for row in lines(runs["self_instruct"].out / "dataset.jsonl")]
    pool = list(seeds)
    for task in kept:  # in file order, which is the order the dedup kept them in
        assert max(rouge_l(task, other) for other in pool) < 0.7
        pool.append(task)


def test_alpagasus_keeps_pairs_rated_at_least_4_5(runs):
    ratings = {r["id"]: r["score"] for r in lines(runs["alpagasus"].out / "ratings.jsonl")}
    kept = {row["provenance"]["id"] for row in lines(runs["alpagasus"].out / "dataset.jsonl")}
    assert kept == {pair for pair, score in ratings.items() if score >= 4.5}
    assert len(ratings) == 10


def test_critique_rewrite_stops_once_the_judge_gives_8(runs):
    histories = lines(runs["critique_rewrite"].out / "histories.jsonl")
    assert histories and all(h["status"] == "kept" for h in histories)
    for history in histories:
        scores = [step["score"] for step in history["iterations"]]
        assert scores[-1] >= 8 and all(s < 8 for s in scores[:-1])
        assert "critique" not in history["iterations"][-1]  # no critique call once the answer passed
        assert len(history["iterations"]) <= 4  # the draft's judgement and at most 3 rewrites


def test_evol_instruct_eliminates_and_keeps_the_rest(runs):
    rounds = lines(runs["evol_instruct"].out / "rounds.jsonl")
    checks = {r["check"] for r in rounds}
    assert "evolved" in checks and "no_gain" in checks
    dataset = lines(runs["evol_instruct"].out / "dataset.jsonl")
    assert len(dataset) == sum(r["check"] == "evolved" for r in rounds)


def test_a_run_whose_every_record_failed_upstream_exits_1_and_says_so(runs, tmp_path):
    """Every draft failed (no server): the dataset's node counts nothing, yet nothing was produced,
    so the run exits 1 and its summary counts the failures (it said `failed 0` and exited 0)."""
    from click.testing import CliRunner
    from codeclm import cli

    sets = [arg for s in on_server("critique_rewrite", "http://127.0.0.1:9/v1") for arg in ("--set", s)]
    result = CliRunner().invoke(cli.main, ["run", "critique_rewrite", "-q", "--out", str(tmp_path / "run"),
                                           "--cache-dir", str(tmp_path / "cache"), "--no-report", *sets,
                                           "--set", "models.writer.retries=0"])
    assert result.exit_code == 1, result.output
    assert "failed 0 (and 20 upstream)" in result.output and "(0 pairs)" in result.output
    assert "no pairs kept" in result.output and "failures.jsonl" in result.output


def test_the_report_of_a_pipeline_without_codeclm_files(runs):
    """The report's tiles read the run's own counts when CodecLM's instructions.jsonl is absent, and
    neither its files nor the paper's figures are said to be missing from another pipeline's run."""
    from codeclm.programs.artifacts.html_report import render
    from codeclm.programs.artifacts.rundata import RunData

    assert RunData.open(runs["critique_rewrite"].out).status_counts == {"kept": 20}
    page = render(RunData.open(runs["critique_rewrite"].out))
    assert '<b>20</b><span>kept' in page
    assert "Not in this run folder" not in page and "the paper saw" not in page


def test_dataset_lines_without_messages_are_warned_about(tmp_path):
    """A dataset whose messages read a loop body node that did not run in the last iteration was
    written without `messages` on every line, and the run said nothing."""
    from click.testing import CliRunner
    from codeclm import cli

    with FakeOpenAIServer() as server:
        sets = [arg for s in on_server("critique_rewrite", server.url) for arg in ("--set", s)]
        messages = "[{role: \"'user'\", content: seeds.instruction}, {role: \"'assistant'\", content: rewrite.answer}]"
        result = CliRunner().invoke(cli.main, ["run", "critique_rewrite", "-q", "--out", str(tmp_path / "run"),
                                               "--cache-dir", str(tmp_path / "cache"), "--no-report", *sets,
                                               "--set", f"outputs.dataset.fields.messages={messages}"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    count = manifest["counts"]["without_messages"]["dataset"]
    assert count == sum("messages" not in row for row in lines(tmp_path / "run" / "dataset.jsonl")) > 0
    assert f"warning: {count} line(s) of dataset.jsonl have no `messages`" in result.output


def test_records_a_filter_removes_are_counted_and_none_kept_is_exit_1(tmp_path):
    """A filter that let nothing through: `kept 0 | dropped 0 | failed 0`, no word and exit 0."""
    from click.testing import CliRunner
    from codeclm import cli

    with FakeOpenAIServer() as server:
        sets = on_server("alpagasus", server.url)
        args = ["run", str(REPO / "specs" / "alpagasus.yaml"), "-q", "--no-report", "--cache-dir", str(tmp_path / "c")]
        some = CliRunner().invoke(cli.main, [*args, "--out", str(tmp_path / "some"), *(f"--set={s}" for s in sets)])
        none = CliRunner().invoke(cli.main, [*args, "--out", str(tmp_path / "none"), "--set", "params.keep_at=6",
                                             *(f"--set={s}" for s in sets)])
    kept = len(lines(tmp_path / "some" / "dataset.jsonl"))
    manifest = json.loads((tmp_path / "some" / "manifest.json").read_text())
    rated = manifest["counts"]["stages"]["rate"]["done"]
    assert some.exit_code == 0 and f"kept {kept} |" in some.output
    assert manifest["counts"]["stages"]["keep"]["removed"] == rated - kept
    assert f"filtered out {rated - kept}" in some.output
    assert none.exit_code == 1, none.output
    assert f"filtered out {rated}" in none.output
    assert "no pairs kept: every record was dropped, filtered out" in none.output


def test_a_spec_without_a_dataset_names_its_outputs(tmp_path):
    from click.testing import CliRunner
    from codeclm import cli

    data = yaml.safe_load((REPO / "specs" / "alpagasus.yaml").read_text())
    data["prompts"], data["nodes"]["pairs"]["path"] = str(REPO / "prompts"), str(REPO / "seeds" / "alpaca_pairs.jsonl")
    del data["outputs"]["dataset"]
    data["nodes"].pop("keep")
    data["params"].pop("keep_at")
    with FakeOpenAIServer() as server:
        for role in data["models"]:
            data["models"][role] = {"model": f"hosted_vllm/{role}", "api_base": server.url}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
        done = CliRunner().invoke(cli.main, ["run", str(tmp_path / "spec.yaml"), "-q", "--no-report", "--out",
                                             str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")])
    assert done.exit_code == 0, done.output
    assert f"outputs: {tmp_path / 'run' / 'ratings.jsonl'}" in done.output and "pairs" not in done.output
    assert "not in the dataset" not in done.output  # it has none: its records are ok, not left out


def test_a_relative_seeds_path_is_found_by_a_replay_from_another_folder(tmp_path, monkeypatch):
    """--seeds ../three.jsonl was recorded as given: a replay from another folder could not find it."""
    from click.testing import CliRunner
    from codeclm import cli

    (tmp_path / "work").mkdir()
    lines_of = (REPO / "seeds" / "alpaca_pairs.jsonl").read_text().splitlines()[:3]
    (tmp_path / "three.jsonl").write_text("\n".join(lines_of) + "\n")
    monkeypatch.chdir(tmp_path / "work")
    with FakeOpenAIServer() as server:
        sets = [f"--set={s}" for s in on_server("alpagasus", server.url)]
        ran = CliRunner().invoke(cli.main, ["run", str(REPO / "specs" / "alpagasus.yaml"), "-q", "--no-report",
                                            "--seeds", "../three.jsonl", "--out", str(tmp_path / "run"),
                                            "--cache-dir", str(tmp_path / "c"), *sets])
    assert ran.exit_code == 0, ran.output
    monkeypatch.chdir(REPO.parent)
    replayed = CliRunner().invoke(cli.main, ["replay", str(tmp_path / "run"), "--out", str(tmp_path / "again")])
    assert replayed.exit_code == 0 and "identical" in replayed.output, replayed.output


def test_a_replay_that_differs_says_what_changed_since_the_run(tmp_path):
    """It said only 'DIFFERS', though the manifest records the hashes of what the run read."""
    from click.testing import CliRunner
    from codeclm import cli

    with FakeOpenAIServer() as server:
        run("alpagasus", tmp_path, server.url)
    live = tmp_path / "live"
    manifest = json.loads((live / "manifest.json").read_text())
    template = sorted(manifest["templates"])[0]
    manifest["templates"][template] = "0" * 64  # as if the template had been edited since
    (live / "manifest.json").write_text(json.dumps(manifest))
    rows = (live / "dataset.jsonl").read_text().splitlines()
    (live / "dataset.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    done = CliRunner().invoke(cli.main, ["replay", str(live), "--out", str(tmp_path / "again")])
    assert done.exit_code == 1 and "DIFFERS" in done.output
    assert f"changed since the run: templates {template}" in done.output, done.output


def test_records_a_when_stops_are_counted_as_filtered_out(tmp_path):
    """An llm node whose `when` is false for a record stops it, as a filter would: it counted as done only."""
    from click.testing import CliRunner
    from codeclm import cli

    with FakeOpenAIServer() as server:
        sets = [f"--set={s}" for s in on_server("alpagasus", server.url)]
        done = CliRunner().invoke(cli.main, ["run", str(REPO / "specs" / "alpagasus.yaml"), "-q", "--no-report",
                                             "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c"),
                                             "--set", "nodes.rate.when=false", *sets])
    pairs = sum(1 for line in (REPO / "seeds" / "alpaca_pairs.jsonl").read_text().splitlines() if line.strip())
    assert done.exit_code == 1 and f"filtered out {pairs}" in done.output, done.output


def test_a_node_below_a_loop_reads_its_final_state(tmp_path, seeds_file):
    """docs/spec.md says so, and outputs could; a node per the loop's records was refused ("exists only
    in a loop body"), so a judge after the loop could only rate the unimproved instruction."""
    from click.testing import CliRunner
    from codeclm import cli
    from conftest import base_spec, write_spec
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        data["nodes"]["rate"] = {"type": "judge", "for_each": "refine", "model": "strong",
                                 "template": "critique_judge.jinja", "scale": [1, 10],
                                 "inputs": {"instruction": "state.instruction", "answer": "decide.response"}}
        data["outputs"]["rated"] = {"from": "rate", "fields": {"id": "record.id", "instruction": "state.instruction",
                                                              "score": "rate.score"}}
        ran = CliRunner().invoke(cli.main, ["run", str(write_spec(tmp_path, data)), "-q", "--no-report",
                                            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert ran.exit_code == 0, ran.output
    histories = {h["id"]: h for h in map(json.loads, (tmp_path / "run" / "instructions.jsonl").open())}
    rated = [json.loads(line) for line in (tmp_path / "run" / "rated.jsonl").open()]
    assert rated and all(isinstance(r["score"], (int, float)) for r in rated)
    improved = [r for r in rated if len(histories[r["id"]]["iterations"]) > 1]
    assert improved, "no instruction was improved: the test shows nothing"
    for row in improved:  # the final state's instruction: the improved one, not decode's
        assert row["instruction"] == histories[row["id"]]["iterations"][-1]["instruction"]


def test_a_chat_dataset_never_takes_a_failed_record(scripted):
    """Self-Instruct's dataset reads its answers with no where:, and an answer whose call failed was
    written as a line with no messages (and counted kept): `export` then refused the run's own file."""
    from conftest import ScriptedBackend
    from fake_openai_server import answer_text

    def answer(messages):  # every other respond call gets an empty completion, a failure after retries
        prompt = messages[-1]["content"]
        if "new tasks" not in prompt and len(prompt) % 2:
            return ""
        return answer_text(messages, "scripted/strong")

    scripted.backends["strong"] = ScriptedBackend("scripted/strong", answer)
    result = scripted(REPO / "specs" / "self_instruct.yaml", overrides=SMALL["self_instruct"])
    dataset = lines(result.out / "dataset.jsonl")
    failed = [f for f in lines(result.out / "failures.jsonl") if f["node"].startswith("answer")]
    assert dataset and failed
    assert all(len(row["messages"]) == 2 for row in dataset)
    counts = result.manifest["counts"]["instructions"]
    assert counts["kept"] == len(dataset) and counts["failed"] == len(failed)
    assert result.manifest["counts"]["without_messages"] == {}


def test_a_value_no_json_line_can_hold_fails_its_record_not_the_run(scripted, tmp_path):
    """`'nan' | float` in an output wrote NaN into the file, which no JSON reader then reads."""
    spec = {"name": "nan", "prompts": str(REPO / "prompts"), "models": {"strong": {"model": "local"}},
            "nodes": {"q": {"type": "source", "records": [{"instruction": "Say hi."}, {"instruction": "Say no."}]},
                      "answer": {"type": "llm", "for_each": "q", "model": "strong", "template": "respond.jinja",
                                 "inputs": {"instruction": "q.instruction"}, "outputs": ["answer"]}},
            "outputs": {"dataset": {"from": "answer", "fields": {
                "id": "record.id", "x": "('nan' if q.instruction == 'Say no.' else '1') | float"}}}}
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = scripted(path)
    assert [json.loads(line)["x"] for line in (result.out / "dataset.jsonl").read_text().splitlines()] == [1.0]
    (failure,) = lines(result.out / "failures.jsonl")
    assert "not JSON compliant" in failure["error"] and failure["node"] == "answer"


def test_a_field_a_switch_case_does_not_set_fails_with_its_node_and_case(scripted, tmp_path):
    """`where: decide.label == 'short'` on a record whose case set no label failed with "'codeclm.programs.
    engine.records._RecordView object' has no attribute 'label'": a class of ours, not the spec's words."""
    spec = {"name": "cases", "prompts": str(REPO / "prompts"), "models": {"strong": {"model": "local"}},
            "nodes": {"items": {"type": "source", "records": [{"text": "a"}, {"text": "bb"}]},
                      "decide": {"type": "switch", "for_each": "items", "cases": [
                          {"name": "short", "when": "len(items.text) < 2", "set": {"label": "'short'"}},
                          {"name": "other"}]},
                      "keep": {"type": "filter", "for_each": "decide", "where": "decide.label == 'short'"}},
            "outputs": {"dataset": {"from": "keep", "where": "record.status == 'ok'",
                                    "fields": {"text": "items.text"}}}}
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = scripted(path)
    assert lines(result.out / "dataset.jsonl") == [{"text": "a"}]
    (failure,) = lines(result.out / "failures.jsonl")
    assert failure["error"] == "where: decide has no field 'label' on record r0001 (it has 'case', 'id', 'calls'): " \
        "its case 'other' sets no 'label' (set it in that case too, or read it only where decide.case says it is set)"

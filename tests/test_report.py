"""`codeclm report` without a browser: untrusted text is escaped, missing artifacts degrade, the CLI
writes and prints the page (tests/test_report_browser.py opens it in Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.artifacts.html_report import _judge_scores, _stage_counts, render, write_report
from codeclm.programs.artifacts.rundata import RunData
from codeclm.programs.artifacts.store import MARKER
from conftest import base_spec, write_spec
from report_runs import JUDGE_XSS, XSS, hostile_run


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return hostile_run(tmp_path_factory.mktemp("hostile"), monkeypatch)


def embedded_data(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', html, re.S)
    assert block, "the data block is there, and ends at its own </script>"
    return json.loads(block.group(1))


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_untrusted_text_is_escaped_everywhere(hostile):
    html = write_report(hostile).read_text(encoding="utf-8")
    for raw in ("<script>window.__xss", "<img src=x", "<svg onload", "<b>bold</b>", "</script><script>"):
        assert raw not in html, raw
    assert html.count("<script") == 2  # the data block and the page's own script, nothing else
    data = embedded_data(html)  # the JSON block parses back to the very text the models wrote
    texts = list(strings(data))
    assert any(XSS in t for t in texts) and JUDGE_XSS in texts
    failed = [r for r in data["records"] if r["status"] == "failed"]
    assert any((r.get("failure") or {}).get("raw") == JUDGE_XSS for r in failed), "a raw failure text is shown"
    assert "&lt;script&gt;window.__xss" in html  # shown escaped in the charts and failures, not dropped


def test_the_page_is_self_contained(hostile):
    html = render(RunData.open(hostile))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "nothing is loaded from anywhere"
    assert "Content-Security-Policy" in html and "connect-src 'none'" in html
    assert html.count("<svg") >= 10


def test_a_run_with_only_some_artifacts_still_reports(tmp_path):
    history = {"id": "n1.x", "status": "kept", "node": "writer", "iterations": [{"iteration": 1, "instruction": "Hi"}]}
    (tmp_path / "instructions.jsonl").write_text(json.dumps(history) + "\n")  # a damaged line: test_bad_inputs
    # a folder of files without their manifest (hand-made, or copied in part; codeclm's own run folder without
    # one is a run that did not finish: test_an_interrupted_rerun_is_not_shown_as_the_earlier_run)
    html = write_report(tmp_path, tmp_path / "page.html").read_text()
    assert "Not in this run folder" in html and "manifest.json" in html and "pool.jsonl" in html
    assert "Per node" in html and "writer" in html
    assert embedded_data(html)["records"][0]["id"] == "n1.x"


def test_an_interrupted_rerun_is_not_shown_as_the_earlier_run(hostile, tmp_path):
    """A rerun into a finished run's folder removes its manifest as it begins; stopped (Ctrl-C), it leaves the
    earlier run's files. inspect printed them as the run (exit 0) and report rewrote report.html from them."""
    import shutil

    from codeclm.programs.artifacts.store import RunStore

    run = tmp_path / "run"
    shutil.copytree(hostile, run)
    page = write_report(run).read_bytes()
    rerun = RunStore(run)
    rerun.claim()  # what a rerun does before its first write; then it is interrupted
    rerun.abandon()
    rerun.release()
    assert (run / MARKER).is_file() and (run / "dataset.jsonl").is_file() and not (run / "manifest.json").exists()
    for command in ("inspect", "report", "export"):
        done = CliRunner().invoke(cli.main, [command, str(run), *([str(tmp_path / "out")] * (command == "export"))])
        assert done.exit_code == 2, (command, done.output)
        assert f"{run}: the run did not finish" in done.output and "rerun the same command to resume" in done.output
        assert "Traceback" not in done.output
    assert (run / "report.html").read_bytes() == page and not (tmp_path / "out").exists()


def test_report_command(hostile, tmp_path):
    out = tmp_path / "elsewhere" / "page.html"
    done = CliRunner().invoke(cli.main, ["report", str(hostile), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == f"report: {out}" and out.is_file()
    empty = CliRunner().invoke(cli.main, ["report", str(tmp_path / "elsewhere")])
    assert empty.exit_code == 2 and "no run artifacts here" in empty.output


def test_run_writes_the_report_unless_told_not_to(tmp_path, seeds_file):
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = str(write_spec(tmp_path, data))
        cache = str(tmp_path / "cache")
        ran = CliRunner().invoke(cli.main, ["run", spec, "-q", "--out", str(tmp_path / "a"), "--cache-dir", cache])
        skipped = CliRunner().invoke(cli.main, ["run", spec, "-q", "--out", str(tmp_path / "b"), "--cache-dir", cache,
                                                "--no-report"])
    assert ran.exit_code == 0, ran.output
    assert f"report: {tmp_path / 'a' / 'report.html'}" in ran.output and (tmp_path / "a" / "report.html").is_file()
    assert skipped.exit_code == 0 and "report:" not in skipped.output
    assert not (tmp_path / "b" / "report.html").exists()


def test_the_report_is_written_only_into_codeclms_own_folders(tmp_path):
    """Files named like artifacts do not make a folder codeclm's: the report reads them, and is
    written there only with --out."""
    history = {"id": "n1.x", "status": "kept", "node": "writer", "iterations": [{"iteration": 1, "instruction": "Hi"}]}
    (tmp_path / "instructions.jsonl").write_text(json.dumps(history) + "\n")
    refused = CliRunner().invoke(cli.main, ["report", str(tmp_path)])
    assert refused.exit_code == 2 and "not a folder codeclm wrote" in refused.output and "--out" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "report.html").exists()
    page = tmp_path.parent / f"{tmp_path.name}-report.html"
    done = CliRunner().invoke(cli.main, ["report", str(tmp_path), "--out", str(page)])
    assert done.exit_code == 0, done.output
    assert page.is_file() and not (tmp_path / "report.html").exists()


def test_metadata_is_counted_in_one_pass_not_held(tmp_path):
    """metadata.jsonl has a row per seed (100k seeds: 46 MB): the report counts it as it reads it, and
    keeps only failed rows, so its memory does not grow with the seeds."""
    import tracemalloc

    rows = [{"id": f"s{i:06d}", "instruction": f"seed task number {i} " + "x" * 300, "use_case": "u",
             "skills": ["a", "b"], "status": "failed" if i % 1000 == 0 else "ok"} for i in range(20_000)]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunData.open(tmp_path)
    tracemalloc.start()
    summary = run.metadata
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary.rows == 20_000 and summary.seeds == 20_000
    assert summary.statuses == {"ok": 19_980, "failed": 20} and len(summary.failed) == 20
    assert peak < 4 * 2**20, peak  # the rows held as a list: ~25 MiB
    assert sum(1 for f in run.failures if f["artifact"] == "metadata.jsonl") == 20


def test_a_pipeline_of_ones_own_may_name_an_output_instructions(tmp_path):
    """`instructions` is CodecLM's histories; a user's spec with an output of that name and another
    shape (here AlpaGasus's ratings, without `status`) made `inspect` call the run damaged."""
    import yaml
    from conftest import REPO
    from fake_openai_server import FakeOpenAIServer

    data = yaml.safe_load((REPO / "specs" / "alpagasus.yaml").read_text())
    data["prompts"], data["nodes"]["pairs"]["path"] = str(REPO / "prompts"), str(REPO / "seeds" / "alpaca_pairs.jsonl")
    ratings = data["outputs"].pop("ratings")
    ratings["fields"]["state"] = ratings["fields"].pop("status")
    data["outputs"]["instructions"] = ratings
    with FakeOpenAIServer() as server:
        for role in data["models"]:
            data["models"][role] = {"model": f"hosted_vllm/{role}", "api_base": server.url}
        spec = str(write_spec(tmp_path, data))
        ran = CliRunner().invoke(cli.main, ["run", spec, "-q", "--out", str(tmp_path / "run"),
                                            "--cache-dir", str(tmp_path / "cache")])
    assert ran.exit_code == 0, ran.output
    inspected = CliRunner().invoke(cli.main, ["inspect", str(tmp_path / "run"), "--json"])
    assert inspected.exit_code == 0, inspected.output
    report = json.loads(inspected.output)
    kept = sum(1 for _ in (tmp_path / "run" / "dataset.jsonl").open())
    assert report["status"] == {"kept": kept} and report["kept_by_iteration"] == {}
    run = RunData(tmp_path / "run")
    assert run.status_counts == {"kept": kept} and run.histories is None  # the page reads them as the spec's own
    assert "records per node" in render(run)


def test_the_page_of_another_pipeline_shows_its_nodes_rows_and_failures(tmp_path):
    """A Self-Instruct or AlpaGasus run's page was mostly empty: no funnel, no lengths, no records to
    browse, and its failures (failures.jsonl) not shown at all."""
    import yaml
    from conftest import REPO
    from fake_openai_server import FakeOpenAIServer, FaultPlan

    data = yaml.safe_load((REPO / "specs" / "alpagasus.yaml").read_text())
    data["prompts"], data["nodes"]["pairs"]["path"] = str(REPO / "prompts"), str(REPO / "seeds" / "alpaca_pairs.jsonl")
    with FakeOpenAIServer(faults=FaultPlan(rate=0.3, kinds=("500",), seed=3)) as server:
        for role in data["models"]:
            data["models"][role] = {"model": f"hosted_vllm/{role}", "api_base": server.url, "retries": 0}
        ran = CliRunner().invoke(cli.main, ["run", str(write_spec(tmp_path, data)), "-q", "--no-report",
                                            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert ran.exit_code == 0, ran.output
    failed = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    kept = [json.loads(line) for line in (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()]
    assert failed and kept, "the fault plan should fail some ratings and keep some pairs"
    run = RunData(tmp_path / "run")
    assert len(run.failures) == len(failed) and {f["artifact"] for f in run.failures} == {"failures.jsonl"}
    html = render(run)
    assert "records per node" in html and "no artifacts with records" not in html
    assert list(_stage_counts(run)) == ["pairs", "rate", "keep"]  # down the graph, not alphabetical
    assert "rate: scores in ratings.jsonl score" in html and "&gt;= 4.5" in html  # the judge and the filter's cut
    (judge, where, scores, scale, marks), *_ = [found for found in _judge_scores(run) if "ratings" in found[1]]
    ratings = [json.loads(line) for line in (tmp_path / "run" / "ratings.jsonl").read_text().splitlines()]
    assert scores == [r["score"] for r in ratings if "score" in r] and scale == [0, 5] and marks == [(4.5, ">= 4.5")]
    assert "response length (words)" in html and "no instruction histories" not in html
    assert "HTTP 500" in html  # the failures section
    records = embedded_data(html)["records"]
    by_source = {source: [r for r in records if r["source"] == source]
                 for source in ("dataset.jsonl", "failures.jsonl")}
    assert len(by_source["dataset.jsonl"]) == len(kept) and len(by_source["failures.jsonl"]) == len(failed)
    from codeclm.programs.artifacts.quality import quality_metrics

    pairs = sum(1 for line in (REPO / "seeds" / "alpaca_pairs.jsonl").read_text().splitlines() if line.strip())
    closeness = quality_metrics(RunData(tmp_path / "run"))["seed_closeness"]  # the seeds of the spec's file
    assert closeness["seeds"] == pairs and closeness["rouge_l_max"] == 1.0  # AlpaGasus keeps its seeds' pairs
    first = by_source["dataset.jsonl"][0]
    assert first["messages"] == kept[0]["messages"] and first["id"] == kept[0]["provenance"]["id"]
    assert by_source["failures.jsonl"][0]["failure"]["error"].startswith(failed[0]["error"][:40])


def test_inspect_shows_no_gap_line_for_a_run_without_a_judge():
    """The ablations (no judge) printed `mean |gap| of kept  -`."""
    from codeclm.programs.artifacts.report import format_report

    report = {"run": "runs/ablation", "instructions": 2, "status": {"kept": 2}, "kept_by_iteration": {"3": 2},
              "kept_answer_from": {"strong": 2},
              "mean_abs_gap_of_kept": None, "actions_per_kept_pair": 2.0, "kept_use_cases": {"x": 2},
              "mean_gap_at_last_iteration": None, "calls": {}, "failure_reasons": {}}
    text = format_report(report)
    assert "mean |gap|" not in text and "actions per kept pair 2.00" in text


@pytest.mark.parametrize("kind", ["fifo", "empty", "device-like"])
def test_report_out_never_replaces_what_it_did_not_make(hostile, tmp_path, kind):
    """`report --out` replaced an empty file, a FIFO and, run as root, /dev/null with a regular file
    (the check looked at non-empty regular files only); `cache export` did the same."""
    import os

    from codeclm.programs.artifacts.bundle import export_bundle
    from codeclm.programs.errors import SpecError

    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "empty":
        target.write_bytes(b"")
    else:  # a link to nowhere stands for what is not a regular file without needing root for mknod
        target.symlink_to(tmp_path / "nowhere")
    for write in (lambda: write_report(hostile, target), lambda: export_bundle(hostile, target)):
        with pytest.raises(SpecError, match="never writes over"):
            write()
        assert target.is_symlink() or (target.exists() and not target.is_dir())
    if kind == "fifo":
        assert not target.is_file()
    elif kind == "empty":
        assert target.read_bytes() == b""


def test_an_empty_manifest_is_named_as_damage_by_report_and_inspect(hostile, tmp_path):
    """An empty manifest.json made a report (exit 0); inspect said 'a file of this run folder'."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(hostile, run)
    (run / "manifest.json").write_text("")
    for command in (["report", str(run), "--out", str(tmp_path / "r.html")], ["inspect", str(run)]):
        done = CliRunner().invoke(cli.main, command)
        assert done.exit_code == 2 and "manifest.json:1: damaged: empty" in done.output, done.output


def test_an_export_of_no_calls_writes_no_bundle(hostile, tmp_path):
    """An export with nothing in the cache wrote an empty file, which the next export refused as not
    a bundle: now it writes nothing (the CLI says so, exit 1)."""
    from codeclm.programs.artifacts.bundle import export_bundle

    target = tmp_path / "calls.jsonl"
    assert export_bundle(hostile, target, tmp_path / "empty-cache") == 0 and not target.exists()
    done = CliRunner().invoke(cli.main, ["cache", "export", str(hostile), str(target),
                                         "--cache-dir", str(tmp_path / "empty-cache")])
    assert done.exit_code == 1 and "nothing exported" in done.output and not target.exists()


def test_a_users_loop_gets_its_kept_pairs_by_iteration(tmp_path, seeds_file):
    """`inspect --json` gave `"kept_by_iteration": {}` for a user's loop whose every kept pair came from
    iteration 3: it read CodecLM's instruction histories only. Now the dataset's provenance `iteration`."""
    import yaml
    from conftest import REPO
    from fake_openai_server import FakeOpenAIServer

    data = yaml.safe_load((REPO / "specs" / "critique_rewrite.yaml").read_text())
    data.update(prompts=str(REPO / "prompts"))
    data["nodes"]["seeds"]["path"] = str(seeds_file)
    data["outputs"]["dataset"]["fields"]["provenance"]["iteration"] = "improve.iteration"
    spec, out = write_spec(tmp_path, data), tmp_path / "run"
    with FakeOpenAIServer() as server:
        models = [f"--set=models.{role}.{key}={value}" for role in ("writer", "judge")
                  for key, value in (("model", f"hosted_vllm/{role}"), ("api_base", server.url))]
        ran = CliRunner().invoke(cli.main, ["run", str(spec), "-q", "--no-report", "--out", str(out),
                                            "--cache-dir", str(tmp_path / "cache"), *models])
    assert ran.exit_code == 0, ran.output
    iterations = [json.loads(line)["provenance"]["iteration"] for line in (out / "dataset.jsonl").open()]
    shown = CliRunner().invoke(cli.main, ["inspect", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["kept_by_iteration"] == {str(i): iterations.count(i) for i in set(iterations)}
    text = CliRunner().invoke(cli.main, ["inspect", str(out)]).output
    first = min(iterations)
    assert iterations and f"kept by iteration   {first}: {iterations.count(first)} (" in text

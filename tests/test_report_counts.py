"""The counts a run's readers show (the report's headline, `inspect`, the export's card) add up with the
printed run summary and failures.jsonl: failures before the dataset's node, records filters removed,
records a `where:` left out, and every failure cause, most common first. Hand-made run folders."""

from __future__ import annotations

import json
import re
from collections import Counter
from html import unescape
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.artifacts.export import ExportOptions, _counts, render_card
from codeclm.programs.artifacts.html_report import render
from codeclm.programs.artifacts.manifest import MAX_FAILURE_REASONS, _failure_reasons
from codeclm.programs.artifacts.report import format_report, run_report
from codeclm.programs.artifacts.rundata import RunData
from codeclm.programs.artifacts.store import MARKER
from conftest import REPO, base_spec, write_spec

ROW = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
       "provenance": {"id": "r0"}}


def run_folder(folder: Path, statuses: dict[str, int], stages: dict[str, dict[str, int]],
               reasons: dict[str, int] | None = None, models: tuple[str, ...] = ("writer", "judge"),
               **counts: Any) -> Path:
    """A finished run of a spec with a dataset: its manifest, dataset.jsonl, and failures.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "made", "models": {role: {"model": "local"} for role in models},
            "nodes": {}, "outputs": {"dataset": {"from": "last", "fields": {}}}}
    manifest = {"spec": {"name": "made", "resolved": spec},
                "counts": {"instructions": statuses, "stages": stages, "failure_reasons": reasons or {}, **counts},
                "totals": {"calls": 10, "cache_hits": 0}}
    (folder / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    (folder / "dataset.jsonl").write_text(json.dumps(ROW) + "\n" * statuses.get("kept", 0) if statuses.get("kept")
                                          else "")
    failed = sum(row.get("failed", 0) for row in stages.values())
    (folder / "failures.jsonl").write_text("".join(json.dumps({"id": f"f{i}", "node": "n", "error": "e"}) + "\n"
                                                   for i in range(failed)))
    (folder / MARKER).write_text("{}")
    return folder


def tiles(html: str) -> dict[str, str]:
    return {label: value for value, label in re.findall(r'<div class="tile [^"]*"><b>([^<]*)</b><span>([^<]*)', html)}


def card_counts(folder: Path) -> dict[str, str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    lines = _counts(folder, manifest, manifest["spec"]["resolved"], manifest["counts"]["instructions"].get("kept", 0))
    return {cells[0]: cells[1] for line in lines if len(cells := [c.strip() for c in line.strip("|").split("|")]) == 2}


def test_failures_before_the_dataset_node_are_counted_everywhere(tmp_path):
    """critique-rewrite with faults: kept 2, failed 6 at the loop, 2 more at draft; failures.jsonl has 8."""
    run = run_folder(tmp_path / "run", {"failed": 6, "kept": 2},
                     {"seeds": {"done": 10, "failed": 0}, "draft": {"done": 10, "failed": 2},
                      "improve": {"done": 8, "failed": 6}})
    shown = tiles(render(RunData.open(run)))
    assert shown["failed"] == "6" and shown["failed upstream"] == "2"
    failures = (run / "failures.jsonl").read_text().splitlines()
    assert int(shown["failed"]) + int(shown["failed upstream"]) == len(failures)
    first = format_report(run_report(run)).splitlines()[0]
    assert first.endswith("8 records: 2 kept, 6 failed; 2 more failed upstream")
    assert card_counts(run)["failed upstream"] == "2" and card_counts(run)["failed"] == "6"


def test_records_removed_on_purpose_are_counted_and_never_called_ok(tmp_path):
    """AlpaGasus keeps 3 of 10 (its filter removed 7); Evol-Instruct's where: leaves records out ("ok")."""
    alpagasus = run_folder(tmp_path / "alpagasus", {"kept": 3}, {"pairs": {"done": 10, "failed": 0},
                                                                 "keep": {"done": 10, "failed": 0, "removed": 7}})
    assert tiles(render(RunData.open(alpagasus)))["filtered out"] == "7"
    assert format_report(run_report(alpagasus)).splitlines()[0].endswith("3 records: 3 kept; 7 more filtered out")
    assert card_counts(alpagasus)["filtered out"] == "7"
    evol = run_folder(tmp_path / "evol", {"kept": 20, "ok": 4}, {"evolve": {"done": 24, "failed": 0}})
    html = render(RunData.open(evol))
    assert tiles(html)["not in the dataset"] == "4"
    text = format_report(run_report(evol))
    assert "20 kept, 4 not in the dataset" in text and " ok" not in text
    assert card_counts(evol)["not in the dataset"] == "4" and "ok" not in card_counts(evol)


def test_failure_causes_are_read_most_common_first(tmp_path):
    """The manifest's JSON holds its causes A-Z; the first five of that missed the most common."""
    reasons = {f"a{i}: rare": 1 for i in range(6)} | {"z: common": 9, "y: often": 5}
    run = run_folder(tmp_path / "run", {"failed": 20}, {"n": {"done": 20, "failed": 20}}, reasons)
    text = format_report(run_report(run))
    assert text.index("9 x z: common") < text.index("5 x y: often") < text.index("1 x a0: rare")
    assert "3 x other causes" in text  # a3..a5: not among the five shown
    card = "\n".join(_counts(run, json.loads((run / "manifest.json").read_text()), {}, 0))
    assert "- 9 x z: common\n- 5 x y: often\n- 1 x a0: rare" in card and "- 3 x other causes" in card


def test_the_manifest_says_how_many_failures_its_causes_leave_out(tmp_path):
    reasons = {f"n: cause {i:03d}": 1 for i in range(MAX_FAILURE_REASONS + 5)} | {"n: worst": 50}
    kept = _failure_reasons(reasons)
    assert len(kept["failure_reasons"]) == MAX_FAILURE_REASONS and next(iter(kept["failure_reasons"])) == "n: worst"
    assert kept["failure_reasons_left_out"] == {"causes": 6, "failures": 6}
    run = run_folder(tmp_path / "run", {"failed": 155}, {"n": {"done": 155, "failed": 155}},
                     kept["failure_reasons"], failure_reasons_left_out=kept["failure_reasons_left_out"])
    assert f" {MAX_FAILURE_REASONS - 5 + 6} x other causes" in format_report(run_report(run))


def test_the_cards_rerun_example_names_a_role_of_the_spec(tmp_path):
    """AlpaGasus has no `strong` role: the card suggested --set models.strong.model=..."""
    run = run_folder(tmp_path / "run", {"kept": 1}, {"n": {"done": 1, "failed": 0}}, models=("judge",))
    manifest = json.loads((run / "manifest.json").read_text())
    card = render_card(run, run, manifest, manifest["spec"]["resolved"], [ROW], {}, ExportOptions(), None, None)
    assert "--set models.judge.model=" in card and "models.strong" not in card


def test_report_out_ending_in_a_slash_is_a_folder(tmp_path):
    """`--out /tmp/x/outdir/` (a folder not made yet) wrote an HTML file named `outdir`; help says a folder."""
    from click.testing import CliRunner
    from codeclm import cli

    run = run_folder(tmp_path / "run", {"kept": 1}, {"n": {"done": 1, "failed": 0}})
    done = CliRunner().invoke(cli.main, ["report", str(run), "--out", f"{tmp_path}/x/outdir/"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "x" / "outdir" / "report.html").is_file()
    assert done.output.strip() == f"report: {tmp_path / 'x' / 'outdir' / 'report.html'}"
    assert "ending in /" in CliRunner().invoke(cli.main, ["report", "--help"]).output


def test_records_the_datasets_where_leaves_out_are_not_counted_kept_and_an_empty_dataset_exits_1(tmp_path,
                                                                                                  seeds_file):
    """The summary said `kept 12` and `12 pairs` for an empty dataset.jsonl, exit 0, when the dataset's where:
    left out the loop's kept records; and inspect failed (KeyError: 'record') on a run whose dataset reads a
    node below the loop. Both on the fake server, as a user runs them."""
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = str(write_spec(tmp_path, data))
        common = ["-q", "--no-report", "--cache-dir", str(tmp_path / "cache")]
        empty = CliRunner().invoke(cli.main, ["run", spec, "--out", str(tmp_path / "empty"), *common,
                                              "--set", "outputs.dataset.where=record.id == 'zzz'"])
        below = CliRunner().invoke(cli.main, [
            "run", spec, "--out", str(tmp_path / "below"), *common,
            "--set", "nodes.good={type: filter, for_each: refine, where: refine.iteration >= 1}",
            "--set", "outputs.dataset.from=good", "--set", "outputs.dataset.where=refine.exit == 'kept'",
            # instructions (from refine) read outputs.dataset, which now writes good's records: never a value
            "--set", "outputs.instructions.fields.record=null"])
    assert empty.exit_code == 1, empty.output
    assert (tmp_path / "empty" / "dataset.jsonl").read_text() == ""
    assert "kept 0 |" in empty.output and "not in the dataset" in empty.output and "(0 pairs)" in empty.output
    assert "left out by the dataset's where:" in empty.output
    assert below.exit_code == 0, below.output
    inspected = CliRunner().invoke(cli.main, ["inspect", str(tmp_path / "below")])
    assert inspected.exit_code == 0, inspected.output
    rows = (tmp_path / "below" / "dataset.jsonl").read_text().count("\n")
    assert rows and f"{rows} kept" in inspected.output


def shipped_run(folder: Path, spec: str, statuses: dict[str, int], stages: dict[str, dict[str, int]],
                decisions: dict[str, int]) -> Path:
    """`run_folder` with a shipped spec's graph in its manifest (JSON sorted, and the YAML in its order)."""
    run = run_folder(folder, statuses, stages, decisions=decisions)
    manifest = json.loads((run / "manifest.json").read_text())
    text = (REPO / "specs" / f"{spec}.yaml").read_text()
    manifest["spec"].update(name=spec, resolved=yaml.safe_load(text), resolved_yaml=text)
    (run / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return run


def shown_by_all(run: Path) -> tuple[str, str, str]:
    """What `inspect`, the report page and the card's counts say of RUN."""
    inspected = CliRunner().invoke(cli.main, ["inspect", str(run)])
    assert inspected.exit_code == 0, inspected.output
    manifest = json.loads((run / "manifest.json").read_text())
    card = "\n".join(_counts(run, manifest, manifest["spec"]["resolved"], 0))
    return inspected.output, unescape(render(RunData.open(run))), card


def test_a_loops_decisions_are_shown_by_inspect_the_report_and_the_card(tmp_path):
    """critique_rewrite's decisions (which records stopped at the score, which ran out of rewrites, how many
    rewrites each took) were in the manifest only."""
    decisions = {"good": 9, "out_of_rewrites": 3, "rewrite@1": 8, "rewrite@2": 5, "rewrite@3": 3}
    run = shipped_run(tmp_path / "run", "critique_rewrite", {"kept": 9, "dropped": 3},
                      {"seeds": {"done": 12, "failed": 0}, "draft": {"done": 12, "failed": 0},
                       "improve": {"done": 12, "failed": 0}}, decisions)
    loop = "loop improve: 12 records; exits: kept 9, dropped 3, ran to max 0 (status dropped); mean iterations 2.33"
    cases = "decide: good 9 -> kept, out_of_rewrites 3 -> dropped, rewrite 16 (iteration 1: 8, 2: 5, 3: 3)"
    inspected, html, card = shown_by_all(run)
    assert f"{loop}\n  {cases}\n" in inspected
    assert f"- {loop}\n  - {cases}" in card
    assert loop in html and re.search(r"<td>decide</td><td>rewrite</td><td class=num>16</td><td>goes on</td>"
                                      r"<td>1: 8, 2: 5, 3: 3</td>", html)


def test_an_elimination_that_never_fired_and_a_filters_drops_are_shown(tmp_path):
    """evol_instruct's eliminations: each check's count per round, a check that dropped nothing as 0;
    AlpaGasus's filter: how many it removed."""
    decisions = {"evolved@1": 3, "evolved@2": 2, "no_gain@1": 1, "no_gain@2": 1, "leaked_prompt@2": 1}
    evol = shipped_run(tmp_path / "evol", "evol_instruct", {"kept": 5, "ok": 3},
                       {"seeds": {"done": 4, "failed": 0}, "evolve": {"done": 4, "failed": 0}}, decisions)
    inspected, html, card = shown_by_all(evol)
    cases = ("check: no_gain 2 (iteration 1: 1, 2: 1), apology 0, leaked_prompt 1 (iteration 2: 1), "
             "evolved 5 (iteration 1: 3, 2: 2)")
    assert "loop evolve: 4 records; exits: ran to max 4; mean iterations 2.00" in inspected
    assert cases in inspected and cases in card and "<td>check</td><td>apology</td><td class=num>0</td>" in html
    alpagasus = run_folder(tmp_path / "alpagasus", {"kept": 3}, {"pairs": {"done": 10, "failed": 0},
                                                                 "keep": {"done": 10, "failed": 0, "removed": 7}})
    inspected, html, card = shown_by_all(alpagasus)
    assert "node keep: removed 7 of 10" in inspected and "- node keep: removed 7 of 10" in card
    assert "<td>keep</td><td>node</td><td class=num>10</td><td class=num>7</td><td class=num>3</td>" in html


def test_a_case_name_two_loops_share_is_not_given_to_either(tmp_path):
    """The manifest counts decisions by case name: two loops' `good` cases are one count it cannot split."""
    decisions = {"good": 5, "rewrite@1": 4}
    run = shipped_run(tmp_path / "run", "critique_rewrite", {"kept": 5}, {"improve": {"done": 5, "failed": 0}},
                      decisions)
    manifest = json.loads((run / "manifest.json").read_text())
    for spec in (manifest["spec"]["resolved"], None):
        data = spec if spec is not None else yaml.safe_load(manifest["spec"]["resolved_yaml"])
        data["nodes"]["again"] = {**data["nodes"]["improve"], "for_each": "improve"}
        if spec is None:
            manifest["spec"]["resolved_yaml"] = yaml.safe_dump(data, sort_keys=False)
    (run / "manifest.json").write_text(json.dumps(manifest))
    inspected, html, _ = shown_by_all(run)
    assert "decide: good ? -> kept" in inspected and "exits: kept ?, dropped ?, ran to max ?" in inspected
    assert "one that two loops share shows as -" in html


def test_a_run_without_loops_or_filters_shows_none(tmp_path):
    run = run_folder(tmp_path / "run", {"kept": 2}, {"n": {"done": 2, "failed": 0}})
    inspected, html, card = shown_by_all(run)
    assert "loop " not in inspected and "Loops and filters" not in card and 'id="flow"' not in html


def test_the_figures_shown_are_those_of_the_records_the_shipped_specs_wrote(tmp_path):
    """On the fake server: a loop's exits and mean iterations as histories.jsonl has them, each elimination
    check's count as rounds.jsonl has it (the manifest's decisions read as the engine writes them)."""
    from fake_openai_server import FakeOpenAIServer
    from test_pipelines import run as run_pipeline

    with FakeOpenAIServer() as server:
        critique = run_pipeline("critique_rewrite", tmp_path / "critique", server.url).out
        evol = run_pipeline("evol_instruct", tmp_path / "evol", server.url).out
    histories = [json.loads(line) for line in (critique / "histories.jsonl").read_text().splitlines()]
    status = Counter(h["status"] for h in histories)
    mean_iterations = sum(len(h["iterations"]) for h in histories) / len(histories)
    report = run_report(critique)["flow"]["loops"]["improve"]
    assert report["exits"] == {"kept": status["kept"], "dropped": status["dropped"]} and report["at_max"] == 0
    assert report["mean_iterations"] == round(mean_iterations, 2)
    rounds = [json.loads(line) for line in (evol / "rounds.jsonl").read_text().splitlines()]
    checks = run_report(evol)["flow"]["loops"]["evolve"]["switches"]["check"]
    assert {case: row["count"] for case, row in checks.items()} == \
        {case: sum(r["check"] == case for r in rounds) for case in ("no_gain", "apology", "leaked_prompt", "evolved")}


def test_a_loop_in_a_rounds_body_adds_up_its_rounds(tmp_path):
    """critique_rewrite's draft and improve in two rounds: the manifest counts improve_1 and improve_2 (its
    decisions by case name, every round's together); the loop showed "records not counted" and "ran to max ?"."""
    run = shipped_run(tmp_path / "run", "critique_rewrite", {"kept": 18, "dropped": 6},
                      {"seeds": {"done": 12, "failed": 0}, "draft_1": {"done": 12, "failed": 0},
                       "draft_2": {"done": 12, "failed": 0}, "improve_1": {"done": 12, "failed": 0},
                       "improve_2": {"done": 12, "failed": 0}},
                      {"good": 18, "out_of_rewrites": 6, "rewrite@1": 14, "rewrite@2": 10, "rewrite@3": 6})
    manifest = json.loads((run / "manifest.json").read_text())
    written = yaml.safe_load(manifest["spec"]["resolved_yaml"])
    for spec in (manifest["spec"]["resolved"], written):
        body = {name: spec["nodes"].pop(name) for name in ("draft", "improve")}
        spec["nodes"]["grow"] = {"type": "rounds", "count": 2, "keep": "improve", "body": body}
    manifest["spec"]["resolved_yaml"] = yaml.safe_dump(written, sort_keys=False)
    (run / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    loop = "loop improve: 24 records; exits: kept 18, dropped 6, ran to max 0 (status dropped); mean iterations 2.25"
    for shown in shown_by_all(run):
        assert loop in shown


def test_a_node_of_the_spec_named_like_a_rounds_copy_is_not_added_to_the_loop(tmp_path):
    """improve_3, a node of the spec's own beside two rounds of improve, was added to improve's records."""
    run = shipped_run(tmp_path / "run", "critique_rewrite", {"kept": 18, "dropped": 6},
                      {"seeds": {"done": 12, "failed": 0}, "improve_1": {"done": 12, "failed": 0},
                       "improve_2": {"done": 12, "failed": 0}, "improve_3": {"done": 99, "failed": 0}},
                      {"good": 18, "out_of_rewrites": 6})
    manifest = json.loads((run / "manifest.json").read_text())
    written = yaml.safe_load(manifest["spec"]["resolved_yaml"])
    for spec in (manifest["spec"]["resolved"], written):
        body = {name: spec["nodes"].pop(name) for name in ("draft", "improve")}
        spec["nodes"]["grow"] = {"type": "rounds", "count": 2, "keep": "improve", "body": body}
        spec["nodes"]["improve_3"] = {"type": "filter", "for_each": "grow", "where": "true"}
    manifest["spec"]["resolved_yaml"] = yaml.safe_dump(written, sort_keys=False)
    (run / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    assert run_report(run)["flow"]["loops"]["improve"]["records"] == 24


def test_the_mean_iterations_are_those_of_the_records_that_did_not_fail(tmp_path):
    """12 records: 6 failed before the switch, 6 kept at the first judgement; the mean read 0.50."""
    run = shipped_run(tmp_path / "run", "critique_rewrite", {"kept": 6, "failed": 6},
                      {"seeds": {"done": 12, "failed": 0}, "draft": {"done": 12, "failed": 0},
                       "improve": {"done": 12, "failed": 6}}, {"good": 6})
    assert run_report(run)["flow"]["loops"]["improve"]["mean_iterations"] == 1.0
    inspected, html, card = shown_by_all(run)
    loop = ("loop improve: 12 records, 6 failed; exits: kept 6, dropped 0, ran to max 0 (status dropped); "
            "mean iterations 1.00 (of the 6 that did not fail)")
    assert loop in inspected and loop in html and loop in card


def test_a_loop_no_record_reached_is_said_so(tmp_path):
    """A run its budget stopped before any record reached the loop (the manifest has no row for it) showed
    "records not counted (a loop inside another)" and "ran to max ?": a loop is never in another's body."""
    run = shipped_run(tmp_path / "run", "critique_rewrite", {},
                      {"seeds": {"done": 12, "failed": 0}, "draft": {"done": 12, "failed": 12}}, {})
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "stopped": "budget"}, sort_keys=True))
    inspected, html, card = shown_by_all(run)
    for shown in (inspected, html, card):
        assert "loop improve: no record reached it" in shown and "records not counted" not in shown
    assert "ran to max" not in inspected + card and "decide" not in inspected + card
    assert "<td>decide</td>" not in html  # no table of cases none took


def test_a_damaged_yaml_copy_of_the_spec_falls_back_to_its_sorted_copy(tmp_path):
    """A manifest's resolved_yaml nested too deep for the parser ended inspect, report and export in a
    RecursionError; they read the JSON copy (sorted), and export says its shipped spec is that one."""
    run = shipped_run(tmp_path / "run", "critique_rewrite", {"kept": 2}, {"improve": {"done": 2, "failed": 0}},
                      {"good": 2})
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["spec"]["resolved_yaml"] = "[" * 5000 + "]" * 5000
    (run / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    loop = "loop improve: 2 records; exits: kept 2, dropped 0, ran to max 0 (status dropped); mean iterations 1.00"
    inspected, html, card = shown_by_all(run)
    assert loop in inspected and loop in html and loop in card
    report = CliRunner().invoke(cli.main, ["report", str(run), "--out", f"{tmp_path}/page/"])
    assert report.exit_code == 0, report.output
    exported = CliRunner().invoke(cli.main, ["export", str(run), str(tmp_path / "export")])
    assert exported.exit_code == 0, exported.output
    assert "YAML copy of the spec is damaged" in exported.output
    assert "judge" in yaml.safe_load((tmp_path / "export" / "pipeline" / "spec.yaml").read_text())["nodes"][
        "improve"]["body"]

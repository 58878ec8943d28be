"""The report's sections and notes say what the run that ran has: none for data it lacks, no CodecLM
words on another spec's page, figures taken from the code they describe. Hand-made run folders."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

from codeclm.programs.artifacts.html_report import render
from codeclm.programs.artifacts.quality import MAX_PAIRS
from codeclm.programs.artifacts.rundata import RunData
from test_report_counts import run_folder


def sections(html: str) -> list[str]:
    return re.findall(r'<section id="(\w+)"', html)


def page(folder: Path) -> str:
    return unescape(render(RunData.open(folder)))


def test_another_specs_page_has_no_codeclm_sections_rows_or_notes(tmp_path):
    """A Self-Instruct-like run (no pool, no histories, no judge, no rubrics) showed empty CodecLM parts."""
    html = page(run_folder(tmp_path / "run", {"kept": 2}, {"n": {"done": 3, "failed": 1}}))
    assert {"kept", "coverage", "judge"}.isdisjoint(sections(html)) and "failures" in sections(html)
    for codeclm_only in ("provenance records no iteration", "no pool.jsonl", "use cases covered", "skills covered",
                         "judge position bias", "Self-Rubrics", "rubrics.jsonl", "a seed was copied"):
        assert codeclm_only not in html, codeclm_only


def test_the_first_iteration_is_compared_with_the_paper_only_where_a_judge_chose(tmp_path):
    """ablation_rubrics keeps every instruction's last iteration: 0% from the first is its rule, not a finding."""
    run = run_folder(tmp_path / "run", {"kept": 2}, {"improve": {"done": 2, "failed": 0}})
    histories = [{"id": f"i{k}", "status": "kept", "iterations": [{"iteration": 1}, {"iteration": 3}],
                  "record": {"messages": [{"role": "user", "content": "Do."}],
                             "provenance": {"id": f"i{k}", "iteration": it}}} for k, it in ((0, 4), (1, 2))]
    (run / "dataset.jsonl").unlink()
    (run / "instructions.jsonl").write_text("".join(json.dumps(h) + "\n" for h in histories))
    html = page(run)
    assert "kept" in sections(html) and "the paper saw" not in html and "has no judge" in html
    bars = re.findall(r"<title>(\d) · [^<]*: (\d)</title>", html)
    assert [b[0] for b in bars] == ["2", "4"]  # iterations 1 and 3 have no bar, yet have a place (tested in charts)


def test_calls_and_quality_notes_match_the_code(tmp_path):
    run = run_folder(tmp_path / "run", {"kept": 2}, {"n": {"done": 2, "failed": 0}})
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["calls"] = {"n/writer": {"model": "local", "calls": 3, "cache_hits": 2}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    html = page(run)
    assert "cache hits included" not in html and "cache hits, counted apart" in html
    assert f"a deterministic sample of {MAX_PAIRS:,} above {MAX_PAIRS:,}" in html and "100,000" not in html
    assert "programs/artifacts/quality.py" in html and "also in the manifest" not in html


def svg_texts(svg: str) -> list[str]:
    return [unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def test_length_box_plots_label_their_axis_with_unit_and_ticks():
    from codeclm.programs.artifacts import charts

    svg = charts.boxplots("lengths", ["kept pairs"], [("instruction", [[3, 9, 17, 40]], "#000")], y_label="words")
    texts = svg_texts(svg)
    assert "words" in texts and {"0", "10", "20", "30", "40"} <= set(texts)


def test_kept_pairs_chart_has_a_place_for_every_iteration_and_values_on_bars(tmp_path):
    run = run_folder(tmp_path / "run", {"kept": 3}, {"improve": {"done": 3, "failed": 0}})
    histories = [{"id": f"i{k}", "status": "kept", "iterations": [{"iteration": 1}],
                  "record": {"messages": [{"role": "user", "content": "Do."}],
                             "provenance": {"id": f"i{k}", "iteration": it}}} for k, it in enumerate((1, 2, 4))]
    (run / "dataset.jsonl").unlink()
    (run / "instructions.jsonl").write_text("".join(json.dumps(h) + "\n" for h in histories))
    html = render(RunData.open(run))
    kept = re.search(r'<section id="kept">.*?</svg>', html, re.S).group(0)
    middle = re.findall(r'<text x="[^"]*" y="([^"]*)" font-size="11" text-anchor="middle">([^<]*)<', kept)
    axis_y = max(float(y) for y, _ in middle)
    assert [t for y, t in middle if float(y) == axis_y] == ["1", "2", "3", "4"]  # 3 too, with no bar
    assert [t for y, t in middle if float(y) < axis_y] == ["1", "1", "1"]  # each bar's value above it


def test_failure_labels_tell_causes_at_one_node_apart():
    """Cut to 28 characters, three causes at answer_target all read `answer_target: hosted_vllm/…`."""
    from codeclm.programs.artifacts import charts

    labels = [f"answer_target: hosted_vllm/target: {cause}" for cause in
              ("HTTP 500 server error", "empty completion", "malformed response body")]
    svg = charts.hbars("failures", labels, [("failures", [3, 2, 1], "#c00")], width=960, label_width=440,
                       two_lines=": ")
    texts = svg_texts(svg)
    assert texts.count("answer_target") == 3
    assert {"hosted_vllm/target: HTTP 500 server error", "hosted_vllm/target: empty completion",
            "hosted_vllm/target: malformed response body"} <= set(texts)
    assert all(f"<title>{label}</title>" in svg for label in labels)  # the whole text as a tooltip


def test_a_pool_of_another_shape_has_no_coverage_section_or_figures(tmp_path):
    """A spec of the user's own writes a `pool` output of tasks (no use cases, no skills): the page showed
    CodecLM's coverage charts with nothing in them and `inspect` a coverage of 0/0."""
    from codeclm.programs.artifacts.report import format_report, run_report

    run = run_folder(tmp_path / "run", {"kept": 1}, {"n": {"done": 1, "failed": 0}})
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["spec"]["resolved"]["outputs"]["pool"] = {"from": "n", "fields": {"instruction": "n.text"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "pool.jsonl").write_text(json.dumps({"instruction": "Sort a list."}) + "\n")
    html = page(run)
    assert "coverage" not in sections(html) and "use cases covered" not in html
    assert "coverage" not in format_report(run_report(run))


def test_loops_and_filters_come_after_the_funnel_and_only_where_a_run_has_them(tmp_path):
    run = run_folder(tmp_path / "run", {"kept": 3}, {"keep": {"done": 10, "failed": 0, "removed": 7}})
    assert sections(page(run))[:2] == ["funnel", "flow"]
    plain = run_folder(tmp_path / "plain", {"kept": 3}, {"n": {"done": 3, "failed": 0}})
    assert "flow" not in sections(page(plain))

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

"""`codeclm report`: a finished run as one self-contained HTML file that opens offline.

Charts are inline SVG drawn here (charts.py), tables are HTML, and a small inline script runs the
record browser over the run's records, embedded as JSON in a `<script type="application/json">`
block. Everything a seed or a model wrote is data: it is HTML-escaped where it is written into the
page, `<`, `>` and `&` are \\u-escaped in the JSON block (so no `</script>` can end it), the browser
builds its DOM with textContent only, and a Content-Security-Policy lets only the page's own script
(by its hash) run and nothing load from the network.

The run is read through rundata.py: every artifact is optional and the page shows what there is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from html import escape
from pathlib import Path
from statistics import mean
from typing import Any

from ..errors import SpecError
from ..lang.rouge import words
from . import charts
from .charts import PALETTE
from .quality import MAX_PAIRS, MAX_TOKENS, NEAR_DUPLICATE, quality_metrics
from .report import loop_line
from .rundata import (
    RunData,
    check_intact,
    has_judge,
    node_flow,
    outcomes,
    read_run_json,
    refuse_unfinished,
    resolved_spec,
    spec_nodes,
    status_label,
)
from .store import (
    ARTIFACTS,
    REPORT,
    is_codeclm_report,
    is_own_run,
    note_own,
    refuse_replacing,
    write_atomic,
    writing_beside_runs,
)

MAX_RECORDS = 5000  # records in the browser, at most (the page stays light enough to open)
MAX_TEXT = 20_000  # characters of one text field in the browser (the artifact keeps it whole)
MAX_DATA = 24_000_000  # bytes of record data in the page: texts are cut shorter until the records fit
TEXT_CUTS = (MAX_TEXT, 4000, 1500, 500, 200)
STATUS_COLORS = {"kept": PALETTE[2], "dropped": PALETTE[5], "failed": PALETTE[3], "over_limit": PALETTE[7],
                 "decoded": PALETTE[4]}


def write_report(run_dir: Path, out: Path | str | None = None, shown_folder: str | None = None) -> Path:
    """Write RUN_DIR's report (default RUN_DIR/report.html) and return its path. `out` names the file, or a
    folder to write report.html into: one that exists, or a path ending in a slash (made if missing).
    `shown_folder`: what the page names the run folder (default its full path; an export, which may be
    published, names no place of the machine that ran it)."""
    run = RunData.open(run_dir)
    refuse_unfinished(Path(run_dir))  # an interrupted rerun's folder holds the earlier run's files: never shown as it
    if not Path(run_dir).is_dir() or not run.exists():
        raise SpecError(str(run_dir), "no run artifacts here: is this a folder `codeclm run` wrote?",
                        hint="pass a run folder, e.g. runs/demo")
    check_intact(Path(run_dir))  # a damaged file is named with its line, never shown as a smaller run
    if out is None and not is_own_run(Path(run_dir)):  # read anything, write only into codeclm's own folders
        raise SpecError(str(run_dir), "not a folder codeclm wrote (no .codeclm-run marker or run manifest): "
                        "the report is not written into it", hint="pass --out PATH for the report")
    path = Path(out) if out else Path(run_dir) / "report.html"
    if path.is_dir() or str(out or "").endswith(("/", os.sep)):
        path = path / "report.html"
    refuse_replacing(path, is_codeclm_report, "a codeclm report",
                     "pass --out a new path (or a report this command wrote)")
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render(run, shown_folder)
    if path.name == REPORT and path.parent.resolve() == Path(run_dir).resolve() and is_own_run(Path(run_dir)):
        with writing_beside_runs(path.parent):  # the run's files: a later run that writes no report removes it
            note_own(Path(run_dir), {path.name})
            write_atomic(path, page)
    else:
        write_atomic(path, page)
    return path


# -- the page ------------------------------------------------------------------------------


def render(run: RunData, shown_folder: str | None = None) -> str:
    metrics = quality_metrics(run)
    name = (run.manifest.get("spec") or {}).get("name") or run.folder.resolve().name
    sections = [
        ("funnel", "Funnel", funnel_section(run)),
        ("flow", "Loops and filters", flow_section(run)),
        ("kept", "Kept pairs", kept_section(run)),
        ("judge", "Judge", judge_section(run, metrics)),
        ("coverage", "Coverage", coverage_section(run, metrics)),
        ("lengths", "Lengths", lengths_section(run)),
        ("quality", "Data quality", quality_section(metrics)),
        ("calls", "Calls and cost", calls_section(run)),
        ("failures", "Failures", failures_section(run)),
        ("records", "Records", browser_section()),
    ]
    for cut in TEXT_CUTS:  # a large run's texts are cut shorter so the page stays openable
        records = browser_records(run, cut)
        data = json.dumps({"records": records, "answers": list(run.answer_names), "cut": cut,
                           "truncated": max(0, len(run.histories or []) - MAX_RECORDS)},
                          ensure_ascii=False, separators=(",", ":"))
        if len(data) <= MAX_DATA:
            break
    data = data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
           f"script-src 'sha256-{script_hash}'; connect-src 'none'; form-action 'none'; base-uri 'none'")
    sections = [section for section in sections if section[2]]  # one the run has no data for is left out
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    missing = sorted(name for name in set(run.missing) if run.declares(name))
    notes = (f'<p class="muted">Not in this run folder: {escape(", ".join(missing))}.</p>' if missing else "") \
        + _stopped_note(run)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>codeclm report: {escape(str(name))}</title>
<style>{STYLE}</style></head>
<body><header><h1>codeclm run <span class="name">{escape(str(name))}</span></h1>
<p class="muted">{escape(shown_folder or str(run.folder.resolve()))}</p>{tiles(run)}{notes}<nav>{nav}</nav></header>
<main>{body}</main>
<script type="application/json" id="run-data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def _stopped_note(run: RunData) -> str:
    """Why a run that stopped on an error stopped (its stopped.json, beside no manifest); else nothing."""
    stopped = run.folder / ARTIFACTS["stopped"]
    if run.manifest or not stopped.is_file():
        return ""
    record = read_run_json(stopped)
    error = record.get("error") if isinstance(record, dict) else record
    return (f'<p class="muted"><b>Stopped on an error:</b> {escape(str(error))}. The records that finished are '
            "shown; failures.jsonl has each failure. Fix the cause and rerun to resume.</p>")


def tiles(run: RunData) -> str:
    totals = run.manifest.get("totals") or {}
    items = [(name, count, name.split()[0])
             for name, count in outcomes(run.manifest, run.status_counts).items()]
    items += [("model calls", totals.get("calls", "-"), ""), ("cache hits", totals.get("cache_hits", "-"), "")]
    if totals.get("shared"):
        items.append(("shared calls", totals["shared"], ""))
    if totals.get("cost_usd"):
        items.append(("spent", f"${totals['cost_usd']:.4f}", ""))
    if run.manifest.get("wall_seconds") is not None:
        items.append(("wall time", f"{run.manifest['wall_seconds']:.1f} s", ""))
    if run.manifest.get("stopped") == "budget":  # budget.py: the data so far of a run its budget stopped
        items.insert(0, ("stopped: budget reached; rerun with a higher budget to resume",
                         (run.manifest.get("budget") or {}).get("reached") or "budget", "failed"))
    return '<div class="tiles">' + "".join(
        f'<div class="tile {escape(key)}"><b>{escape(str(value))}</b><span>{escape(label)}</span></div>'
        for label, value, key in items) + "</div>"


def table(header: list[str], rows: list[list[Any]], numeric_from: int = 1, numeric_to: int = 10**6) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td{" class=num" if numeric_from <= i < numeric_to else ""}>{escape(_cell(v))}</td>'
        for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


# -- sections ------------------------------------------------------------------------------


def funnel_section(run: RunData) -> str:
    rows: list[tuple[str, int, str]] = []
    if run.metadata is not None:
        if run.metadata.seeds:
            rows.append(("seeds", run.metadata.seeds, PALETTE[6]))
        rows.append(("metadata", run.metadata.statuses["ok"], PALETTE[4]))
    else:
        nodes = ((run.manifest.get("spec") or {}).get("resolved") or {}).get("nodes") or {}
        written = [record for node in (nodes.values() if isinstance(nodes, dict) else [])
                   if isinstance(node, dict) and node.get("type") == "source" and isinstance(node.get("records"), list)
                   for record in node["records"]]
        if written and run.pool is not None:  # CodecLM's no-seed mode: hand-written metadata for its pool
            rows.append(("metadata (in the spec)", len(written), PALETTE[4]))
    if run.pool is not None:
        rows.append(("pool entries", len(run.pool), PALETTE[1]))
    if run.histories is not None:
        rows.append(("instructions", len(run.histories), PALETTE[0]))
        for status, count in run.status_counts.items():
            rows.append((status_label(status), count, STATUS_COLORS.get(status, PALETTE[5])))
    parts = []
    if rows:
        labels = [r[0] for r in rows]
        parts.append(charts.hbars("the funnel", labels, [("items", [r[1] for r in rows], PALETTE[0])]))
    elif stages := _stage_counts(run):  # another spec than CodecLM's: the records each node made
        series = [(label, [c[i] for c in stages.values()], color) for i, (label, color) in
                  enumerate((("done", PALETTE[0]), ("failed", PALETTE[3]), ("filtered out", PALETTE[5])))]
        parts.append(charts.hbars("records per node", list(stages), series))
        rows_written = run.status_counts.get("kept")
        if rows_written is not None:
            parts.append(note(f"{rows_written} rows in dataset.jsonl. Done: the records a node finished; filtered "
                              "out: those of them a filter or dedup let no further. A rounds node counts per round."))
    else:
        parts.append(charts.empty("the funnel", "no artifacts with records"))
    by_node = defaultdict(Counter)
    for history in run.histories or []:
        node = history.get("node") or history.get("stage")
        if isinstance(node, str):
            by_node[node][str(history.get("status", "unknown"))] += 1
    if by_node:
        statuses = sorted({s for c in by_node.values() for s in c})
        parts.append("<h3>Per node</h3>" + table(["node", *statuses],
                                                 [[n, *(c.get(s, 0) for s in statuses)] for n, c in by_node.items()]))
    if run.metadata:
        failed = run.metadata.statuses["failed"]
        if failed:
            parts.append(note(f"{failed} seed(s) failed to encode; see Failures."))
    return "".join(parts)


def _stage_counts(run: RunData) -> dict[str, tuple[int, int, int]]:
    """Per node, as the manifest counted them: (records done, failed, filtered out)."""
    stages = (run.manifest.get("counts") or {}).get("stages")
    if not isinstance(stages, dict):
        return {}
    keys = ("done", "failed", "removed")
    nodes = dict(spec_nodes(resolved_spec(run.manifest)))

    def depth(name: str, seen: int = 0) -> int:  # how far down the graph: what a node runs on comes first
        node = nodes.get(name) or nodes.get(name.rpartition("_")[0])  # a round's copy: its body node's
        if node is None or seen > len(nodes):
            return 0
        sources = node.get("from") if isinstance(node.get("from"), list) else [node.get("from")]
        above = [node.get("for_each"), *sources]
        return 1 + max((depth(str(n), seen + 1) for n in above if isinstance(n, str) and n), default=-1)

    def place(name: str) -> tuple[int, str]:
        return depth(name), name

    return {str(name): tuple(int(c.get(k) or 0) for k in keys) for name, c in  # type: ignore[misc]
            sorted(stages.items(), key=lambda item: place(str(item[0])))
            if isinstance(c, dict) and all(isinstance(c.get(k) or 0, int) for k in keys)}


def flow_section(run: RunData) -> str:
    """What each loop's switches decided (every case, an elimination that never fired too) and what each
    filter removed, as the manifest counted them; none (the section is left out) for a spec with neither."""
    flow = node_flow(run.manifest)
    parts = []
    for name, loop in (flow.get("loops") or {}).items():
        rows = [[switch, case, row["count"], row["exit"] or "goes on",
                 ", ".join(f"{i}: {n}" for i, n in (row.get("by_iteration") or {}).items()) or None]
                for switch, cases in loop["switches"].items() for case, row in cases.items()]
        rows = rows if loop["records"] != 0 else []  # no record reached the loop: nothing was decided
        parts.append(f"<h3>loop {escape(name)}</h3>" + note(loop_line(name, loop))
                     + (table(["switch", "case", "taken", "exit", "taken at iteration"], rows, 2, 3) if rows else ""))
    filters = flow.get("filters") or {}
    if filters:
        parts.append("<h3>Filters</h3>" + table(
            ["node", "type", "records", "removed", "let through"],
            [[name, row["type"], row["records"], row["removed"], row["records"] - row["removed"]]
             for name, row in filters.items()], 2))
    if flow.get("loops"):
        shared = any(row["count"] is None for loop in flow["loops"].values()
                     for cases in loop["switches"].values() for row in cases.values())
        parts.append(note("As the run counted them (manifest.json): a switch decides once in each iteration that "
                          "reaches it; an exit ends the record's loop; a record that ran to max took no exit case."
                          + (" The manifest counts cases by name: one that two loops share shows as -." if shared
                             else "")))
    return "".join(parts)


def kept_section(run: RunData) -> str:
    """Kept pairs by iteration; none (the section is left out) for a spec whose pairs record no iteration."""
    kept = run.kept
    if not kept and run.histories is not None:
        return charts.empty("kept pairs by iteration", "no kept pairs")
    if not any(pair.get("iteration") for pair in kept):
        return ""
    by_iteration: dict[str, Counter] = defaultdict(Counter)
    for pair in kept:
        by_iteration[str(pair.get("iteration") or "-")][str(pair.get("response_from") or "-")] += 1
    numbered = [int(k) for k in by_iteration if k.isdigit()]
    iterations = [str(i) for i in range(1, max(numbered, default=0) + 1)]  # every one: a gap reads as a gap
    iterations += sorted(k for k in by_iteration if not k.isdigit() or int(k) < 1)
    sources = sorted({s for c in by_iteration.values() for s in c})
    series = [(s, [by_iteration[i][s] for i in iterations], PALETTE[k % len(PALETTE)]) for k, s in enumerate(sources)]
    first = sum(by_iteration.get("1", Counter()).values())
    text = note(f"{len(kept)} kept pairs; {first} ({100 * first / len(kept):.0f}%) from the first iteration"
                + (" (the paper saw over 70%)." if has_judge(run.manifest) else
                   ": this spec has no judge, so which iteration it keeps is its own rule, not a judge's."))
    answers = Counter(str(p.get("response_from") or "-") for p in kept)
    return (charts.vbars("kept pairs by iteration, by whose answer was kept", iterations,
                         series, x_label="iteration of the kept instruction", y_label="pairs", values=True) + text
            + table(["answer kept", "pairs"], [[k, v] for k, v in answers.most_common()]))


def judge_section(run: RunData, metrics: dict[str, Any]) -> str:
    judged = run.judgements
    if not judged:  # another spec's judges: their scores as an output writes them; none, no section
        return "".join(_score_histogram(*found) for found in _judge_scores(run))
    scale = run.params.get("score_scale") or [1, 10]
    span = float(scale[1] - scale[0]) if isinstance(scale, list) and len(scale) == 2 else 9.0
    threshold = run.params.get("threshold")
    gaps = [j.gap for j in judged if j.gap is not None]
    markers = [(float(threshold), f"+θ {threshold}"), (-float(threshold), f"-θ {threshold}")] \
        if isinstance(threshold, (int, float)) else []
    a, b = run.answer_names
    hist = charts.histogram("judge gap G = S(a) - S(b) at every judged iteration", gaps, -span - 0.25, span + 0.25,
                            int(4 * span) + 1, markers, x_label=f"gap: {a} minus {b}, bins of 0.5 (dashed: ±θ)")
    both = [j for j in judged if j.a_first and j.b_first]
    first = [mean([j.a_first[0] for j in both]) if both else 0, mean([j.b_first[0] for j in both]) if both else 0]
    second = [mean([j.b_first[1] for j in both]) if both else 0, mean([j.a_first[1] for j in both]) if both else 0]
    sides = charts.hbars("mean score of each answer shown first and shown second", [a, b],
                         [("shown first", first, PALETTE[0]), ("shown second", second, PALETTE[1])])
    verdicts = Counter()
    for j in both:
        one = "a" if j.a_first[0] > j.a_first[1] else "b" if j.a_first[1] > j.a_first[0] else "tie"
        two = "a" if j.b_first[1] > j.b_first[0] else "b" if j.b_first[0] > j.b_first[1] else "tie"
        verdicts["same verdict" if one == two else "opposite answers" if {one, two} == {"a", "b"}
                 else "tie in one order"] += 1
    labels = ["same verdict", "tie in one order", "opposite answers"]
    agreement = charts.hbars("do both orders prefer the same answer?", labels,
                             [("judgements", [verdicts[k] for k in labels], PALETTE[2])])
    judge = metrics.get("judge") or {}
    unscored = sum(1 for h in run.histories or [] for step in run.steps(h) if "scores" in step
                   and not isinstance(step["scores"], dict))
    text = note(f"{len(judged)} judgements, {len(both)} in both orders"
                + (f" ({unscored} more judged iterations had no parsable scores and count as a gap of 0)"
                   if unscored else "") + ". Position bias "
                f"{_cell(judge.get('position_bias'))} (mean score shown first minus shown second; 0 is unbiased), "
                f"order agreement {_cell(judge.get('order_agreement'))}, opposite verdicts "
                f"{_cell(judge.get('order_conflicts'))}.")
    return f'<div class="grid">{hist}<div>{sides}{agreement}</div></div>{text}'


def _judge_scores(run: RunData) -> list[tuple[str, str, list[float], Any, list[tuple[float, str]]]]:
    """Another spec than CodecLM's: each judge's scores that an output writes (a field whose expression
    is `JUDGE.score` or `JUDGE.gap`), as (judge, output, scores, scale, thresholds a filter compares with)."""
    spec = resolved_spec(run.manifest)
    nodes = dict(spec_nodes(spec))
    judges = {name: node for name, node in nodes.items() if node.get("type") == "judge"}
    found = []
    for output, conf in (spec.get("outputs") or {}).items() if isinstance(spec.get("outputs"), dict) else ():
        fields = conf.get("fields") if isinstance(conf, dict) else None
        for path, expression in _leaves(fields if isinstance(fields, dict) else {}):
            judge, _, what = str(expression).strip().partition(".")
            if judge in judges and what in ("score", "gap"):
                scores = [v for row in run.stream_output(str(output)) if isinstance(v := _at(row, path), (int, float))
                          and not isinstance(v, bool)]
                scale = judges[judge].get("scale", [1, 10])
                scale = run.params.get(scale[len("params."):]) if str(scale).startswith("params.") else scale
                found.append((judge, f"{output}.jsonl {'.'.join(path)}", scores, scale,
                              _thresholds(nodes, judge, what, run.params)))
                break  # one field per output is enough
    return found


def _score_histogram(judge: str, where: str, scores: list[float], scale: Any,
                     markers: list[tuple[float, str]]) -> str:
    low, high = (scale if isinstance(scale, list) and len(scale) == 2 and all(isinstance(v, (int, float))
                 for v in scale) else (min(scores, default=0), max(scores, default=1)))
    bins = max(1, min(40, int(2 * (high - low)) + 1))
    return (charts.histogram(f"{judge}: scores in {where}", scores, low - 0.25, high + 0.25, bins, markers,
                             x_label="score" + (" (dashed: a filter's threshold)" if markers else ""))
            + note(f"{len(scores)} scores of judge '{judge}', as {where} records them."))


def _thresholds(nodes: dict[str, dict[str, Any]], judge: str, what: str,
                params: dict[str, Any]) -> list[tuple[float, str]]:
    """Where a filter cuts the judge's scores: `where: JUDGE.score >= params.X` (or a number)."""
    marks = []
    for node in nodes.values():
        match = re.fullmatch(rf"\s*{re.escape(judge)}\.{what}\s*(>=|>|<=|<)\s*(params\.(\w+)|[\d.]+)\s*",
                             str(node.get("where", ""))) if node.get("type") == "filter" else None
        if match:
            value = params.get(match.group(3)) if match.group(3) else float(match.group(2))
            if isinstance(value, (int, float)):
                marks.append((float(value), f"{match.group(1)} {value}"))
    return marks


def _leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, str(key)))
        else:
            yield (*path, str(key)), value


def _at(row: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        row = row.get(key) if isinstance(row, dict) else None
    return row


def coverage_section(run: RunData, metrics: dict[str, Any]) -> str:
    if not metrics.get("coverage"):  # no pool of CodecLM's metadata (use cases, skills): no section
        return ""
    kept_meta = [p["metadata"] for p in run.kept]
    parts = []
    for key, title, limit in (("use_case", "use cases", 30), ("skills", "skills", 40)):
        def values(entry: dict[str, Any], key: str = key) -> list[str]:
            v = entry.get(key)
            return [v] if isinstance(v, str) else [s for s in v if isinstance(s, str)] if isinstance(v, list) else []

        pool = Counter(v for e in run.pool for v in values(e))
        kept = Counter(v for e in kept_meta for v in values(e))
        labels = [k for k, _ in pool.most_common(limit)]
        parts.append(charts.hbars(f"{title}: pool entries against kept pairs", labels,
                                  [("pool entries", [pool[k] for k in labels], PALETTE[1]),
                                   ("kept pairs", [kept[k] for k in labels], PALETTE[2])], bar=10))
        if len(pool) > limit:
            parts.append(note(f"the {limit} most common of {len(pool)} {title}"))
    cover = metrics.get("coverage") or {}
    text = "; ".join(f"{name.replace('_', ' ')}: {row['kept']} of {row['pool']} in kept pairs"
                     + (f" (missing: {', '.join(row['missing'][:8])})" if row["missing"] else "")
                     for name, row in cover.items())
    return f'<div class="grid">{"".join(parts)}</div>' + (note(text) if text else "")


def lengths_section(run: RunData) -> str:
    a, b = run.answer_names
    instructions: dict[int, list[float]] = defaultdict(list)
    answers: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for history in run.histories or []:
        for step in run.steps(history):
            it = step.get("iteration")
            if not isinstance(it, int):
                continue
            if isinstance(step.get("instruction"), str):
                instructions[it].append(words(step["instruction"]))
            for name, text in (step.get("answers") or {}).items() if isinstance(step.get("answers"), dict) else ():
                if isinstance(text, str):
                    answers[name][it].append(words(text))
    iterations = sorted(set(instructions) | {i for per in answers.values() for i in per})
    if not iterations:
        return _kept_lengths(run)
    groups = [f"iteration {i}" for i in iterations]
    names = sorted(answers, key=lambda n: (n not in (a, b), n))
    inst = charts.boxplots("instruction length (words) by iteration", groups,
                           [("instruction", [instructions[i] for i in iterations], PALETTE[4])], y_label="words")
    resp = charts.boxplots("answer length (words) by iteration", groups,
                           [(n, [answers[n][i] for i in iterations], PALETTE[k % len(PALETTE)])
                            for k, n in enumerate(names)], y_label="words")
    return (f'<div class="grid">{inst}{resp}</div>'
            + note("Every record's every iteration (kept, dropped and failed). Boxes: quartiles and median; "
                   "whiskers: min and max."))


def _kept_lengths(run: RunData) -> str:
    """Another spec than CodecLM's (no iterations to group by): the lengths of the kept pairs."""
    kept = [pair for pair in run.iter_kept() if isinstance(pair.get("instruction"), str)]
    if not kept:
        return charts.empty("lengths", "no kept pairs")
    inst = charts.boxplots("instruction length (words)", ["kept pairs"],
                           [("instruction", [[words(p["instruction"]) for p in kept]], PALETTE[4])],
                           y_label="words")
    resp = charts.boxplots("response length (words)", ["kept pairs"],
                           [("response", [[words(p["response"]) for p in kept
                                           if isinstance(p.get("response"), str)]], PALETTE[0])], y_label="words")
    return (f'<div class="grid">{inst}{resp}</div>'
            + note("The kept pairs of dataset.jsonl. Boxes: quartiles and median; whiskers: min and max."))


QUALITY_ROWS = (
    ("distinct-1", ("distinct_1",), "unique words / all words over kept instructions (higher: more varied)"),
    ("distinct-2", ("distinct_2",), "unique word pairs / all word pairs"),
    ("pairwise ROUGE-L, mean", ("rouge_l", "mean"), "mean longest-common-subsequence F between kept instructions "
                                                     "(lower: more varied)"),
    ("pairwise ROUGE-L, max", ("rouge_l", "max"), "the closest pair"),
    ("pairs compared", ("rouge_l", "pairs_compared"), f"all pairs, or a deterministic sample of {MAX_PAIRS:,} "
                                                       f"above {MAX_PAIRS:,}; ROUGE-L reads the first {MAX_TOKENS} "
                                                       "tokens of each text"),
    ("near-duplicate pairs", ("near_duplicates", "near_duplicate_pairs"),
     f"pairs with ROUGE-L >= {NEAR_DUPLICATE} (Self-Instruct's filter)"),
    ("instructions in a near-duplicate pair", ("near_duplicates", "near_duplicate_instructions"), ""),
    ("exact duplicates", ("near_duplicates", "exact_duplicates"), "same words, ignoring case and punctuation"),
    ("ROUGE-L to nearest seed, mean", ("seed_closeness", "rouge_l_mean"), "how close kept instructions stay to "
                                                                          "the seeds"),
    ("ROUGE-L to nearest seed, max", ("seed_closeness", "rouge_l_max"), "1: a kept instruction is a seed's, "
                                                                        "as in specs that carry the seed's "
                                                                        "instruction over"),
    ("embedding similarity to nearest seed, mean", ("seed_closeness", "embedding_mean"), "WordLlama cosine"),
    ("embedding similarity to nearest seed, max", ("seed_closeness", "embedding_max"), ""),
    ("embedding similarity between kept, mean", ("seed_closeness", "embedding_mean_pairwise"), ""),
    ("use cases covered", ("coverage", "use_cases", "share"), "share of the pool's use cases in kept pairs"),
    ("skills covered", ("coverage", "skills", "share"), "share of the pool's skills in kept pairs"),
    ("judge position bias", ("judge", "position_bias"), "mean score shown first minus shown second"),
    ("judge order agreement", ("judge", "order_agreement"), "share of judgements whose two orders agree"),
)


def quality_section(metrics: dict[str, Any]) -> str:
    """The metrics the run has data for: a row without a value (no pool, no judge, no seeds) is left out."""
    rows = []
    for label, path, meaning in QUALITY_ROWS:
        value: Any = metrics
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            rows.append([label, value, meaning])
    notes = "".join(note(n) for n in metrics.get("notes", []))
    return (note(f"{metrics.get('kept', 0)} kept instructions, measured by programs/artifacts/quality.py (also in "
                 "`codeclm inspect --json` and the dataset card of `codeclm export`).")
            + table(["metric", "value", "what it means"], rows, 1, 2) + notes)


def calls_section(run: RunData) -> str:
    calls = run.manifest.get("calls")
    if not isinstance(calls, dict) or not calls:
        return charts.empty("calls", "no manifest.json: calls, tokens and cost were not recorded")
    names = list(calls)
    rows = [calls[n] if isinstance(calls[n], dict) else {} for n in names]
    timed = any("seconds" in r for r in rows)
    header = ["stage/role", "model", "calls", "cache hits", "shared", "prompt tokens", "completion tokens", "$ spent",
              "$ saved by cache", "failures", "retries", "truncated"] + (["seconds"] if timed else [])
    keys = ["calls", "cache_hits", "shared", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd", "failures",
            "retries", "truncated"] + (["seconds"] if timed else [])
    body = [[n, r.get("model", "-"), *(r.get(k) for k in keys)] for n, r in zip(names, rows, strict=True)]
    totals = run.manifest.get("totals") or {}
    body.append(["total", "", *(totals.get(k) for k in keys)])
    calls_chart = charts.hbars("model calls and cache hits per stage and role", names,
                               [("calls", [r.get("calls", 0) for r in rows], PALETTE[0]),
                                ("cache hits", [r.get("cache_hits", 0) for r in rows], PALETTE[2])], bar=10)
    token_chart = charts.hbars("tokens per stage and role", names,
                               [("prompt", [r.get("prompt_tokens", 0) for r in rows], PALETTE[4]),
                                ("completion", [r.get("completion_tokens", 0) for r in rows], PALETTE[1])], bar=10)
    wall = run.manifest.get("wall_seconds")
    text = note((f"Wall time {wall:.1f} s. " if isinstance(wall, (int, float)) else "")
                + ("" if timed else "Time per stage is not recorded in this manifest; the wall time is the run's. ")
                + "Calls count the answers a model gave; cache hits, counted apart, are answers the cache gave "
                  "(each call once), which cost nothing; shared, calls this run asked again (duplicate seeds, "
                  "repeated prompts), answered by the same call: not more calls behind the data. Dollars come "
                  "from LiteLLM's price map (0 for local models and unpriced ones).")
    return f'<div class="grid">{calls_chart}{token_chart}</div>' + table(header, body, 2) + text


def failures_section(run: RunData) -> str:
    failures = run.failures
    if not failures:
        return charts.empty("failures", "no failures")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in failures:
        groups[(f["stage"], f["error"][:160])].append(f)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    chart = charts.hbars("failures by stage and reason", [f"{s}: {e}" for (s, e), _ in ordered[:15]],
                         [("failures", [len(v) for _, v in ordered[:15]], PALETTE[3])], width=960, label_width=440,
                         two_lines=": ")  # the node, then the cause: causes at one node differ only late
    items = []
    for (stage, error), group in ordered:
        example = next((f for f in group if f["raw"]), group[0])
        raw = example["raw"]
        raw_html = (f'<pre class="raw">{escape(raw[:MAX_TEXT])}</pre>' if raw
                    else '<p class="muted">no raw text recorded (the call itself failed)</p>')
        where = ", ".join(f"{n} in {a}" for a, n in Counter(f["artifact"] for f in group).most_common())
        items.append(f'<details class="failure"><summary><b>{len(group)}</b> × <code>{escape(stage)}</code> '
                     f'{escape(error)} <span class="muted">({escape(where)})</span></summary><p>example: '
                     f'<code>{escape(example["id"])}</code> in {escape(example["artifact"])}</p>{raw_html}</details>')
    return chart + "".join(items) + note(_failures_note(run))


def _failures_note(run: RunData) -> str:
    """What the failures are, in the words of the files this run has."""
    if run.histories is None:
        return ("Every record a node failed on (failures.jsonl): a failed record goes no further, so the failures "
                "of a node before the dataset's are counted as failed upstream.")
    text = "Failed items of every artifact."
    if run.rubrics is not None:
        text += (" A failed Self-Rubrics entry (rubrics.jsonl) also fails each instruction that needed its actions "
                 "(instructions.jsonl), so one cause can count in both.")
    return text


def browser_section() -> str:
    return """<div class="browser">
<div class="controls"><input id="search" type="search" placeholder="search instructions, answers, ids, use cases"
 aria-label="search records"><select id="status" aria-label="filter by status"><option value="">every status</option>
</select><button id="prev" type="button">previous</button><button id="next" type="button">next</button>
<span id="count" class="muted"></span></div>
<div class="panes"><ol id="list"></ol><div id="detail"><p class="muted">Click a record to see its whole history.</p>
</div></div></div>"""


# -- browser data --------------------------------------------------------------------------

DROP_KEYS = {"calls", "decode_calls", "record"}


def _clean(value: Any, cut: int = MAX_TEXT) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v, cut) for k, v in value.items() if k not in DROP_KEYS}
    if isinstance(value, list):
        return [_clean(v, cut) for v in value]
    if isinstance(value, str) and len(value) > cut:
        return value[:cut] + f"… [{len(value) - cut} more characters in the artifact]"
    return value


def browser_records(run: RunData, cut: int = MAX_TEXT) -> list[dict[str, Any]]:
    """The records the browser shows: every instruction history (at most MAX_RECORDS), then failed seeds
    and rubrics; call keys left out, texts longer than `cut` characters cut (the artifacts keep them)."""
    records = []
    for history in (run.histories or [])[:MAX_RECORDS]:
        record = _clean(history, cut)
        kept = history.get("record") if isinstance(history.get("record"), dict) else {}
        provenance = kept.get("provenance") if isinstance(kept.get("provenance"), dict) else {}
        if provenance.get("response_from"):
            record["kept_answer"] = provenance["response_from"]
        record["source"] = "instructions.jsonl"
        records.append(record)
    if run.histories is None:  # another spec than CodecLM's: its dataset rows, then its failed records
        records += _dataset_records(run, cut, MAX_RECORDS)
        for row in run.stream("failures") or []:
            if len(records) >= MAX_RECORDS:
                break
            failure = {k: row.get(k) for k in ("stage", "error", "raw") if row.get(k) is not None}
            records.append({"id": str(row.get("id")), "status": "failed", "node": row.get("node"),
                            "failure": _clean(failure, cut), "source": "failures.jsonl"})
    for row in run.metadata.failed if run.metadata else []:
        if len(records) < MAX_RECORDS:
            records.append({**_clean(row, cut), "source": "metadata.jsonl"})
    for row in run.rubrics or []:
        if row.get("status") == "failed" and len(records) < MAX_RECORDS:
            records.append({**_clean(row, cut), "source": "rubrics.jsonl"})
    return records


def _dataset_records(run: RunData, cut: int, limit: int) -> list[dict[str, Any]]:
    """dataset.jsonl's rows as browser records: the chat messages, the provenance's other fields."""
    records = []
    for index, row in enumerate(run.stream("dataset") or []):
        if index >= limit:
            break
        provenance = row.get("provenance") if isinstance(row.get("provenance"), dict) else {}
        messages = [m for m in row.get("messages") or [] if isinstance(m, dict)] \
            if isinstance(row.get("messages"), list) else []
        user = [m.get("content") for m in messages if m.get("role") == "user"]
        records.append({**{k: _clean(v, cut) for k, v in row.items() if k not in ("messages", "provenance")},
                        "id": str(provenance.get("id", index)), "status": "kept", "source": "dataset.jsonl",
                        "instruction": _clean(user[-1], cut) if user and isinstance(user[-1], str) else None,
                        "messages": _clean(messages, cut), "seed_ids": provenance.get("seed_ids"),
                        "provenance": _clean({k: v for k, v in provenance.items() if k not in ("id", "seed_ids")},
                                             cut)})  # the browser's own keys last: a row's `status` is not one
    return records


STYLE = """
:root{--fg:#1d2430;--muted:#677084;--line:#dde2ea;--bg:#f6f7fa;--card:#fff;--accent:#3b6fd4}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}header{padding:18px 28px 8px;background:var(--card);
border-bottom:1px solid var(--line)}h1{margin:0 0 2px;font-size:22px}h1 .name{color:var(--accent)}
h2{margin:0 0 12px;font-size:18px}h3{font-size:15px;margin:14px 0 6px}main{padding:16px 28px;max-width:1400px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 18px;margin:0 0 16px}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;margin:10px 0 4px}nav a{color:var(--accent);text-decoration:none}
.muted{color:var(--muted)}.note{color:var(--muted);font-size:13px;margin:8px 0}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.tile{border:1px solid var(--line);border-radius:6px;
padding:6px 14px;min-width:96px;background:var(--bg)}.tile b{display:block;font-size:20px}
.tile span{color:var(--muted);font-size:12px}.tile.kept b{color:#2f8a50}.tile.failed b{color:#c7443f}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px 24px;align-items:start}
svg.chart{display:block;margin:6px 0;font-family:inherit}svg.chart text{fill:var(--fg)}
svg.chart text.muted{fill:var(--muted)}svg.chart text.marker{fill:#c7443f}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:var(--bg)}
details.failure{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:6px 0}
details.failure summary{cursor:pointer}pre,.text{white-space:pre-wrap;word-break:break-word;background:var(--bg);
border:1px solid var(--line);border-radius:4px;padding:6px 8px;margin:4px 0;max-height:320px;overflow:auto;
font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}.text{font-family:inherit;font-size:13px}
.controls{display:flex;gap:10px;align-items:center;margin-bottom:10px}
#search{flex:1;max-width:480px;padding:6px 8px;border:1px solid var(--line);border-radius:4px;font:inherit}
select,.controls button{padding:5px;border:1px solid var(--line);border-radius:4px;font:inherit}
.panes{display:grid;grid-template-columns:minmax(260px,2fr) 5fr;gap:14px}
#list{list-style:none;margin:0;padding:0;max-height:720px;overflow:auto;border:1px solid var(--line);
border-radius:6px}#list li{padding:6px 8px;border-bottom:1px solid var(--line);cursor:pointer}
#list li:hover{background:#eef3fc}#list li.selected{background:#dfe9fb}
#list li .rid{font:12px ui-monospace,monospace;color:var(--muted)}#list li .snip{display:block;font-size:13px;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.badge{display:inline-block;border-radius:9px;padding:0 7px;font-size:11px;color:#fff;background:#6b7480;
margin-right:6px}.badge.kept{background:#3a9d5d}.badge.failed{background:#c7443f}.badge.dropped{background:#6b7480}
#detail{border:1px solid var(--line);border-radius:6px;padding:10px 14px;max-height:720px;overflow:auto}
.step{border-left:3px solid var(--accent);padding:2px 0 2px 10px;margin:10px 0}.step.failed{border-color:#c7443f}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px}.kv dt{color:var(--muted)}
.kv dd{margin:0}.answers{display:grid;grid-template-columns:1fr 1fr;gap:8px}
@media (max-width:900px){.panes,.answers{grid-template-columns:1fr}}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("run-data").textContent);
  var records = DATA.records || [];
  var search = document.getElementById("search"), status = document.getElementById("status");
  var list = document.getElementById("list"), detail = document.getElementById("detail");
  var count = document.getElementById("count");
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function str(v) { return typeof v === "string" ? v : JSON.stringify(v); }
  function haystack(r) {
    if (!r._hay) r._hay = JSON.stringify(r).toLowerCase();
    return r._hay;
  }
  function firstText(r) {
    var it = r.iterations || [];
    return (it.length && it[it.length - 1].instruction) || r.basic_instruction || r.instruction || r.error ||
      (r.failure && r.failure.error) || "";
  }
  var statuses = {};
  records.forEach(function (r) { statuses[r.status || "unknown"] = (statuses[r.status || "unknown"] || 0) + 1; });
  Object.keys(statuses).sort().forEach(function (s) {
    var o = el("option", null, s + " (" + statuses[s] + ")"); o.value = s; status.appendChild(o);
  });
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  var PAGE = 500, page = 0, shown = [];
  function refresh() {
    var q = search.value.trim().toLowerCase(), s = status.value;
    shown = records.filter(function (r) {
      return (!s || (r.status || "unknown") === s) && (!q || haystack(r).indexOf(q) >= 0);
    });
    page = 0;
    draw();
  }
  function draw() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE)), from = page * PAGE;
    list.textContent = "";
    prev.hidden = next.hidden = pages < 2;
    prev.disabled = page === 0; next.disabled = page >= pages - 1;
    shown.slice(from, from + PAGE).forEach(function (r) {
      var li = el("li"); li.setAttribute("data-id", r.id);
      li.appendChild(el("span", "badge " + (r.status || ""), r.status || "?"));
      li.appendChild(el("span", "rid", r.id));
      li.appendChild(el("span", "snip", firstText(r)));
      li.addEventListener("click", function () { open(r, li); });
      list.appendChild(li);
    });
    count.textContent = shown.length + " of " + records.length + " records" +
      (pages > 1 ? " (" + (from + 1) + "-" + Math.min(from + PAGE, shown.length) + " listed)" : "") +
      (DATA.truncated ? "; " + DATA.truncated + " more are in instructions.jsonl only" : "") +
      (DATA.cut < 20000 ? "; texts cut at " + DATA.cut + " characters to keep the page light" : "");
  }
  function kv(pairs) {
    var dl = el("dl", "kv");
    pairs.forEach(function (p) {
      if (p[1] === undefined || p[1] === null || p[1] === "") return;
      dl.appendChild(el("dt", null, p[0])); dl.appendChild(el("dd", null, str(p[1])));
    });
    return dl;
  }
  function scoreText(sc) {
    if (!sc) return null;
    var parts = [];
    if (sc.strong_first) parts.push(DATA.answers[0] + " first: " + sc.strong_first.join(" / "));
    if (sc.target_first) parts.push(DATA.answers[1] + " first: " + sc.target_first.join(" / "));
    if (sc.gap !== undefined && sc.gap !== null) parts.push("gap " + sc.gap);
    return parts.join(" · ");
  }
  var KNOWN = {id: 1, status: 1, metadata: 1, seed_ids: 1, basic_instruction: 1, actions: 1, iterations: 1,
    failure: 1, kept_answer: 1, source: 1, messages: 1, instruction: 1, _hay: 1};
  var STEP_KNOWN = {iteration: 1, instruction: 1, answers: 1, scores: 1, decision: 1, action: 1, failure: 1};
  function open(r, li) {
    Array.prototype.forEach.call(list.querySelectorAll("li.selected"),
      function (n) { n.classList.remove("selected"); });
    if (li) li.classList.add("selected");
    detail.textContent = "";
    var h = el("h3"); h.appendChild(el("span", "badge " + (r.status || ""), r.status || "?"));
    h.appendChild(document.createTextNode(r.id)); detail.appendChild(h);
    var m = r.metadata || {};
    detail.appendChild(kv([["source", r.source], ["use case", m.use_case || r.use_case],
      ["skills", (m.skills || r.skills || []).join(", ")], ["seeds", (r.seed_ids || []).join(", ")],
      ["kept answer", r.kept_answer], ["actions applied", (r.actions || []).join(" | ")]]));
    if (r.failure) {
      detail.appendChild(el("h4", null, "failure at " + (r.failure.stage || "?") + ": " + (r.failure.error || "")));
      if (r.failure.raw) detail.appendChild(el("pre", "raw", r.failure.raw));
    }
    (Array.isArray(r.messages) ? r.messages : []).forEach(function (m) {
      var box = el("div", "step"); box.appendChild(el("h4", null, m.role || "?"));
      box.appendChild(el("div", "text", str(m.content))); detail.appendChild(box);
    });
    if (r.instruction && !Array.isArray(r.messages) && !(r.iterations || []).length) {
      detail.appendChild(el("div", "text", r.instruction));
    }
    (r.iterations || []).forEach(function (s) {
      var box = el("div", "step" + (s.failure ? " failed" : ""));
      box.appendChild(el("h4", null, "iteration " + s.iteration + (s.decision ? ": " + s.decision : "")));
      box.appendChild(el("div", "text", s.instruction || ""));
      if (s.answers) {
        var grid = el("div", "answers");
        Object.keys(s.answers).forEach(function (name) {
          var col = el("div"); col.appendChild(el("b", null, name));
          col.appendChild(el("div", "text", s.answers[name] === null ? "(no answer)" : s.answers[name]));
          grid.appendChild(col);
        });
        box.appendChild(grid);
      }
      box.appendChild(kv([["scores", scoreText(s.scores)], ["action", s.action]]));
      if (s.failure) {
        box.appendChild(el("p", null, "failed at " + (s.failure.stage || "?") + ": " + (s.failure.error || "")));
        if (s.failure.raw) box.appendChild(el("pre", "raw", s.failure.raw));
      }
      var extra = {};
      Object.keys(s).forEach(function (k) { if (!STEP_KNOWN[k]) extra[k] = s[k]; });
      if (Object.keys(extra).length) box.appendChild(el("pre", null, JSON.stringify(extra, null, 2)));
      detail.appendChild(box);
    });
    var rest = {};
    Object.keys(r).forEach(function (k) { if (!KNOWN[k]) rest[k] = r[k]; });
    if (Object.keys(rest).length) {
      detail.appendChild(el("h4", null, "other fields"));
      detail.appendChild(el("pre", null, JSON.stringify(rest, null, 2)));
    }
  }
  prev.addEventListener("click", function () { page -= 1; draw(); });
  next.addEventListener("click", function () { page += 1; draw(); });
  search.addEventListener("input", refresh);
  status.addEventListener("change", refresh);
  refresh();
})();
"""

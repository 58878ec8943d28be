"""What a finished run made, read back from its run directory: where the kept pairs came from
(iteration, which model's answer, use case), how large the judge's gaps were, what failed.

The paper reports that over 70% of kept pairs come from the first iteration; this is the
place to see whether a run of yours looks like that.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from statistics import mean
from typing import Any

from ..errors import SpecError
from .quality import format_quality, quality_metrics
from .rundata import (
    RunData,
    check_intact,
    damaged_run,
    declares_histories,
    node_flow,
    outcomes,
    read_run_json,
    refuse_unfinished,
    top_failures,
)
from .store import ARTIFACTS, read_artifact


def run_report(run_dir: Path) -> dict[str, Any]:
    refuse_unfinished(run_dir)  # an interrupted rerun's folder holds the earlier run's files: never shown as it
    check_intact(run_dir)  # a damaged file is named with its line, never read as a smaller run
    manifest_path = run_dir / ARTIFACTS["manifest"]
    manifest = read_run_json(manifest_path) if manifest_path.is_file() else {}
    histories = _codec_histories(run_dir, manifest)
    if histories is None:
        if not manifest and not (run_dir / ARTIFACTS["instructions"]).is_file() and \
                not (run_dir / ARTIFACTS["stopped"]).is_file():  # no run, or one not finished
            raise SpecError(str(manifest_path), "not found: not a finished run (a run writes its manifest last; "
                            "one stopped before the end has none)",
                            hint="pass the folder `codeclm run` wrote, e.g. runs/demo; rerun a stopped run to finish "
                                 "it (its calls come from the cache)")
        return general_report(run_dir, manifest)  # a spec that keeps no CodecLM instruction histories
    counted = (manifest.get("counts") or {}).get("instructions")  # the dataset's view of them, as the run summary
    status = Counter(counted) if isinstance(counted, dict) and counted else Counter(h["status"] for h in histories)
    kept = [row["provenance"] for h in histories if h["status"] == "kept"  # one the dataset wrote carries its row
            and isinstance(row := h.get("record"), dict) and isinstance(row.get("provenance"), dict)]
    finals = [h["iterations"][-1] for h in histories if h["iterations"]]
    gaps = [step["scores"]["gap"] for step in finals if isinstance(step, dict) and step.get("scores")]
    return {
        "run": str(run_dir),
        "instructions": len(histories),
        "status": dict(status.most_common()),
        "kept_by_iteration": dict(sorted(Counter(p["iteration"] for p in kept if isinstance(p.get("iteration"), int))
                                         .items())),
        "kept_answer_from": dict(Counter(p.get("response_from") for p in kept).most_common()),
        "kept_use_cases": dict(Counter((p.get("metadata") or {}).get("use_case") for p in kept).most_common(10)),
        "mean_abs_gap_of_kept": _mean(abs(p["gap"]) for p in kept if p.get("gap") is not None),
        "mean_gap_at_last_iteration": _mean(gaps),
        "actions_per_kept_pair": _mean(len(p.get("actions") or []) for p in kept),
        **_counted(manifest, dict(status)),
        "calls": manifest.get("totals", {}),
        "quality": quality_metrics(run_dir),
        **_stopped(manifest, run_dir),
    }


def _codec_histories(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The CodecLM specs' instruction histories (a status, the loop's iterations, a kept one's dataset
    row with its provenance), or None: no such file, or another spec's output that is named
    `instructions` too (a pipeline of the user's own), which the general report describes. Whose
    it is, the manifest's spec says (an output with `iterations`); without one, the rows' shape."""
    if not (run_dir / ARTIFACTS["instructions"]).is_file():
        return None
    declared = declares_histories(manifest)
    if declared is False:
        return None
    histories = read_artifact(run_dir, "instructions")
    shaped = [isinstance(h, dict) and isinstance(h.get("status"), str) and isinstance(h.get("iterations"), list)
              for h in histories]
    if declared and not all(shaped):  # rows of another shape than the spec declares: a damaged file
        line = shaped.index(False) + 1
        raise damaged_run(run_dir, ValueError(f"{ARTIFACTS['instructions']} line {line} is not an instruction "
                                              "history (a status and a list of iterations)"))
    return histories if all(shaped) else None


def general_report(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Any spec's figures: the statuses of the records its dataset reads, calls, failures, quality."""
    status = (manifest.get("counts") or {}).get("instructions") or {}
    return {"run": str(run_dir), "instructions": sum(status.values()), "status": dict(status),
            "kept_by_iteration": _kept_by_iteration(run_dir), "mean_gap_at_last_iteration": None,
            **_counted(manifest, dict(status)),
            "calls": manifest.get("totals", {}), "quality": quality_metrics(run_dir), **_stopped(manifest, run_dir)}


def _kept_by_iteration(run_dir: Path) -> dict[int, int]:
    """Kept pairs per iteration, where the dataset's provenance has an `iteration` (a loop's `NODE.iteration`),
    as the HTML report counts them; {} when it has none."""
    found = Counter(pair["iteration"] for pair in RunData.open(run_dir).iter_kept()
                    if isinstance(pair.get("iteration"), int) and not isinstance(pair["iteration"], bool))
    return dict(sorted(found.items()))


def _counted(manifest: dict[str, Any], status: dict[str, int]) -> dict[str, Any]:
    """What became of the records (the report's and the card's counts), and every failure cause the
    manifest keeps, most common first, with how many failures the causes it left out account for."""
    reasons, left_out = top_failures(manifest, 10**9)
    return {"outcomes": outcomes(manifest, status), "flow": node_flow(manifest), "failure_reasons": dict(reasons),
            "failures_of_causes_left_out": left_out}


def _stopped(manifest: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A run its budget stopped (budget.py), or an error (its stopped.json, beside no manifest), says so;
    a finished run has no such keys."""
    if manifest.get("stopped") == "budget":
        return {"stopped": "budget", "budget_reached": (manifest.get("budget") or {}).get("reached")}
    stopped = run_dir / ARTIFACTS["stopped"]
    if not manifest and stopped.is_file():
        record = read_run_json(stopped)
        return {"stopped": "error", "error": str(record.get("error") if isinstance(record, dict) else record)}
    return {}


def format_report(report: dict[str, Any]) -> str:
    kept = report["status"].get("kept", 0) if report["kept_by_iteration"] else 0
    lines = [_records_line(report)]
    if kept:
        by_iteration = ", ".join(f"{it}: {n} ({100 * n / kept:.0f}%)" for it, n in report["kept_by_iteration"].items())
        lines.append(f"kept by iteration   {by_iteration}")
    if kept and "kept_answer_from" in report:  # CodecLM's histories: whose answer, the gaps, the use cases
        lines += ["answer kept from    " + ", ".join(f"{k} {v}" for k, v in report["kept_answer_from"].items()),
                  (f"mean |gap| of kept  {_figure(report['mean_abs_gap_of_kept'])}   "
                   if report["mean_abs_gap_of_kept"] is not None else "")  # no judge, no gap (the ablations)
                  + f"actions per kept pair {report['actions_per_kept_pair']:.2f}",
                  "top use cases       " + ", ".join(f"{k} ({v})" for k, v in report["kept_use_cases"].items())]
    if report["mean_gap_at_last_iteration"] is not None:
        lines.append("mean gap (strong - target) at each instruction's last iteration "
                     f"{report['mean_gap_at_last_iteration']:.2f}")
    lines += format_flow(report.get("flow") or {})
    if report.get("stopped") == "budget":
        lines.append(f"stopped: budget reached ({report.get('budget_reached')}): the data so far; "
                     "rerun with a higher budget to resume")
    elif report.get("stopped") == "error":
        lines.append(f"stopped on an error: {report.get('error')}; the records that finished are here, and "
                     "failures.jsonl has each failure: fix the cause and rerun to resume")
    calls = report["calls"]
    if calls:
        lines.append(f"model calls {calls.get('calls', 0)}, cache hits {calls.get('cache_hits', 0)}, "
                     f"shared {calls.get('shared', 0)}, "
                     f"retries {calls.get('retries', 0)}, failed calls {calls.get('failures', 0)}, "
                     f"truncated {calls.get('truncated', 0)}")
    reasons = list(report["failure_reasons"].items())
    for reason, count in reasons[:5]:
        lines.append(f"  {count:>4} x {reason}")
    rest = sum(count for _, count in reasons[5:]) + report.get("failures_of_causes_left_out", 0)
    if rest:
        lines.append(f"  {rest:>4} x other causes")
    if report.get("quality"):
        lines += format_quality(report["quality"])
    return "\n".join(lines)


def format_flow(flow: dict[str, Any]) -> list[str]:
    """`node_flow` in lines of text (inspect, the dataset card): per loop its records, exits, records that ran
    to `max` and mean iterations, then each switch's cases; per filter, what it removed."""
    lines = []
    for name, loop in (flow.get("loops") or {}).items():
        lines.append(loop_line(name, loop))
        for switch, cases in loop["switches"].items() if loop["records"] != 0 else ():
            lines.append(f"  {switch}: " + ", ".join(_case_text(case, row) for case, row in cases.items()))
    for name, row in (flow.get("filters") or {}).items():
        lines.append(f"{row['type']} {name}: removed {row['removed']} of {row['records']}")
    return lines


def loop_line(name: str, loop: dict[str, Any]) -> str:
    """One loop of `node_flow`: its records, how they left it, and the mean iterations."""
    if loop["records"] == 0:  # a budget, or failures upstream, stopped every record before it: no figures
        return f"loop {name}: no record reached it"
    line = f"loop {name}: " + (f"{loop['records']} records" if loop["records"] is not None else
                               "records not counted (the manifest counts no nodes)")
    line += f", {loop['failed']} failed" if loop["failed"] else ""
    ends = [f"{exit_name} {_count(n)}" for exit_name, n in loop["exits"].items()]
    ends.append(f"ran to max {_count(loop['at_max'])}"
                + (f" (status {loop['exhausted']})" if loop["emit"] == "last" else ""))
    line += "; exits: " + ", ".join(ends)
    if loop["mean_iterations"] is not None:
        line += f"; mean iterations {loop['mean_iterations']:.2f}" + (
            f" (of the {loop['records'] - loop['failed']} that did not fail)" if loop["failed"] else "")
    return line


def _case_text(case: str, row: dict[str, Any]) -> str:
    """A switch case: how often it was taken, the exit it takes, or per iteration when the loop goes on."""
    by_iteration = row.get("by_iteration") or {}
    return (f"{case} {_count(row['count'])}" + (f" -> {row['exit']}" if row["exit"] else "")
            + (" (iteration " + ", ".join(f"{i}: {n}" for i, n in by_iteration.items()) + ")" if by_iteration else ""))


def _count(value: int | None) -> str:
    """A count, or `?` where the manifest cannot tell it (a case name two loops share)."""
    return "?" if value is None else str(value)


def _records_line(report: dict[str, Any]) -> str:
    """RUN: N records: their statuses (`ok` named for a user); then those an earlier node failed or a
    filter removed, which reached no status (the printed run summary's `upstream` and `filtered out`)."""
    before = {"failed upstream", "filtered out"}
    counted = report.get("outcomes") or {}
    statuses = ", ".join(f"{count} {name}" for name, count in counted.items() if count and name not in before)
    earlier = ", ".join(f"{count} more {name}" for name, count in counted.items() if name in before)
    return (f"{report['run']}: {report['instructions']} records" + (f": {statuses}" if statuses else "")
            + (f"; {earlier}" if earlier else ""))


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mean(values: Any) -> float | None:
    values = list(values)
    return mean(values) if values else None

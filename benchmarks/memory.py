"""Memory against the number of seeds (issue #9): a live run and a `--dry-run` of the paper graph
(specs/codeclm.yaml) with 10k and 100k seeds, against the fake model server.

The pool and the dataset stay the paper's size (200 entries, 2,000 instructions, override with
--pool/--dataset), so what grows with the seeds is the encode step (one call per seed) and the
collection the pool draws from. Each run is the real CLI (`python cli.py run ...`) in a child
process; its peak RSS comes from wait4's rusage, so nothing of this script's own is counted.

    python benchmarks/memory.py --seeds 10000,100000
    python benchmarks/memory.py --seeds 1000,10000 --dry-run-only

Goals: peak RSS of a 100k-seed live run under 500 MB and within 20% of the 10k-seed run's;
a 100k-seed `--dry-run` under 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, SPEC, overrides, start_server

TOPICS = ["a refund email", "a Python function", "a SQL query", "a bash script", "a cover letter",
          "a unit test", "a regex", "a poem", "a recipe", "a travel plan", "a bug report", "a summary"]
VERBS = ["Write", "Explain", "Improve", "Shorten", "Translate", "Review", "Debug", "Outline"]


def make_seeds(path: Path, count: int) -> None:
    """`count` distinct seed instructions, deterministic."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            text = f"{VERBS[i % len(VERBS)]} {TOPICS[(i // 8) % len(TOPICS)]} for case {i}, keeping it short."
            out.write(json.dumps({"id": f"s{i:06d}", "instruction": text}) + "\n")


def run_cli(args: list[str], timeout: float) -> dict[str, Any]:
    """The CLI in a child process: exit code, wall time, peak RSS (MiB), CPU seconds."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "codeclm.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = started + timeout
    samples: list[tuple[float, int]] = []  # (seconds, RSS KiB): when the peak comes
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            samples.append((time.perf_counter() - started, rss))
        except (OSError, StopIteration, ValueError):
            pass
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    peak_at = max(samples, key=lambda s: s[1])[0] / wall if samples else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read() if proc.stderr else ""
    return {"rc": proc.returncode, "wall_s": wall, "rss_peak_mib": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_at": peak_at, "stderr_tail": stderr[-600:]}


def measure(seeds: int, args: argparse.Namespace, url: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="codeclm-mem-"))
    try:
        seed_file = work / "seeds.jsonl"
        make_seeds(seed_file, seeds)
        sets = [x for s in overrides(url, args.concurrency, args.pool, args.dataset) for x in ("--set", s)]
        common = [str(SPEC), "--seeds", str(seed_file), "--cache-dir", str(work / "cache"), *sets, "-q"]
        row: dict[str, Any] = {"seeds": seeds}
        dry = run_cli(["run", *common, "--dry-run"], args.timeout)
        row.update({f"dry_{k}": v for k, v in dry.items()})
        if not args.dry_run_only:
            report = [] if args.with_report else ["--no-report"]  # the report's metrics load their own model
            live = run_cli(["run", *common, "--out", str(work / "live"), *report], args.timeout)
            row.update({f"live_{k}": v for k, v in live.items()})
            manifest = work / "live" / "manifest.json"
            if manifest.is_file():
                totals = json.loads(manifest.read_text())["totals"]
                row["live_calls"] = totals["calls"]
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="10000,100000", help="comma-separated seed counts")
    parser.add_argument("--with-report", action="store_true",
                        help="live runs write report.html at the end, as `codeclm run` does by default")
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--dataset", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight per model role")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the fake server takes per call")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a child run is killed")
    parser.add_argument("--dry-run-only", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    server, url = start_server(args.latency)
    rows = []
    try:
        for count in (int(c) for c in args.seeds.split(",")):
            rows.append(measure(count, args, url))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("stderr_tail")}),
                  file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait()
    load = os.getloadavg()
    print(f"pool {args.pool}, dataset {args.dataset}, concurrency {args.concurrency}, latency {args.latency}s, "
          f"nproc {os.cpu_count()}, load avg {load[0]:.1f} {load[1]:.1f}, python {sys.version.split()[0]}")
    cols = [("seeds", "seeds", "{:d}"), ("dry rc", "dry_rc", "{}"), ("dry wall s", "dry_wall_s", "{:.1f}"),
            ("dry rss MiB", "dry_rss_peak_mib", "{:.0f}"), ("live rc", "live_rc", "{}"),
            ("live calls", "live_calls", "{}"), ("live wall s", "live_wall_s", "{:.1f}"),
            ("live cpu s", "live_cpu_s", "{:.1f}"), ("live rss MiB", "live_rss_peak_mib", "{:.0f}"),
            ("live peak at", "live_peak_at", "{:.2f}")]
    print("| " + " | ".join(h for h, _, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f.format(row[k]) if k in row else "-" for _, k, f in cols) + " |")
        for key in ("dry_stderr_tail", "live_stderr_tail"):
            if row.get(key.replace("stderr_tail", "rc")) not in (0, None):
                print(f"{key}: {row[key]}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Throughput of the full paper graph (specs/codeclm.yaml) against a fake model server.

For each configuration it runs the pipeline live on a fresh cache, then replays it from that
cache, and prints: calls made, wall time, the lower bound no scheduler can beat, framework CPU
per call, peak memory, and replay speed. The model server runs in its own process so its CPU
is not counted; each configuration runs in a fresh subprocess so memory peaks are its own.

    python benchmarks/throughput.py --calls 2000 --concurrency 8,32 --latency 0.1 --repeat 3
    python benchmarks/throughput.py --calls 1040,10900 --concurrency 32 --repeat 2

`--calls` is a target for the calls the run looks up; identical calls (the same instruction
decoded twice from identical metadata) are served once, so the calls made come out a few
percent lower (printed). Three kinds of child runs per configuration: timed (wall, CPU,
RSS, replay), traced (tracemalloc heap peak; tracing slows every allocation, so it is not
timed) and, with --profile, profiled (cProfile; the same reason).

Why a lower bound and not just calls/s: a run is latency-bound, so the question is how close
the scheduler gets to what the model limits allow. Two limits hold for any schedule:
- work: each role serves at most `concurrency` calls per `latency`, so a role with N calls
  needs N x latency / concurrency seconds (roles run side by side, so the largest counts);
- the critical path: the longest chain of dependent calls of any one instruction, i.e.
  encode -> decode -> per iteration respond (both models in parallel) -> judge (both orders in
  parallel) -> [rubrics, first improve only] -> improve, the last iteration without improve.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import json
import os
import pstats
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "codeclm.yaml"
SERVER = REPO / "tests" / "fake_openai_server.py"
DEFAULT_SEEDS = REPO / "seeds" / "example.jsonl"
PER_ENTRY = 10  # instructions per metadata entry: the paper's 2,000 / 200
# Calls per decoded instruction on the fake server: its judge keeps the strong answer half the
# time (gap 9 - U{2..9} > 3), so iterations average 1.875 and each costs 4 calls plus an improve.
CALLS_PER_INSTRUCTION = 8.4


@dataclass
class Config:
    """One measured configuration; travels to the child process as JSON."""

    calls: int
    concurrency: int
    latency: float
    seeds: str
    trace: bool = False  # tracemalloc on: a separate run, since tracing slows every allocation
    profile: str = ""  # write cProfile stats of the live run here: a separate run, for the same reason
    floor_loop: str = "asyncio"  # the raw client's event loop: asyncio's (the goal's floor) or uvloop's


# -- sizing and wiring ---------------------------------------------------------------------------


def count_seeds(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def plan_params(target_calls: int, seeds: int) -> tuple[int, int]:
    """Pool and dataset size expected to make about `target_calls` calls (the actual is measured):
    seeds encodes + pool decodes + pool rubrics + instructions x calls per instruction."""
    pool = max(1, round((target_calls - seeds) / (2 + PER_ENTRY * CALLS_PER_INSTRUCTION)))
    return pool, pool * PER_ENTRY


def overrides(url: str, concurrency: int, pool: int, dataset: int) -> list[str]:
    """`--set`-style overrides pointing both roles of the paper spec at the fake server."""
    sets = [f"params.pool_size={pool}", f"params.dataset_size={dataset}"]
    for role in ("strong", "target"):
        sets += [f"models.{role}.model=hosted_vllm/{role}", f"models.{role}.api_base={url}",
                 f"models.{role}.concurrency={concurrency}"]
    return sets


def merge_seeds(patterns: str, folder: Path) -> Path:
    """One seed file from a comma-separated list of JSONL files or globs (ids kept unique)."""
    paths = [Path(p) for pattern in patterns.split(",") for p in sorted(glob.glob(pattern))]
    if not paths:
        raise SystemExit(f"no seed files match {patterns!r}")
    if len(paths) == 1:
        return paths[0].resolve()
    merged = folder / "seeds.jsonl"
    with merged.open("w", encoding="utf-8") as out:
        for path in paths:
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    record = json.loads(line)
                    seed_id = f"{path.stem}-{record.get('id') or number}"
                    out.write(json.dumps({"id": seed_id, "instruction": record["instruction"]}) + "\n")
    return merged


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(port: int, latency: float) -> None:
    """Run the fake server: this process's whole job, so its CPU is not counted as codeclm's."""
    sys.path.insert(0, str(SERVER.parent))
    import fake_openai_server

    fake_openai_server._HTTPServer.request_queue_size = 1024  # 64+ connections may open at once
    fake_openai_server.main(["--port", str(port), "--latency", str(latency)])


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The fake server in its own process (its CPU is not the framework's); returns it and its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", f"{port},{latency}"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"fake server did not start (said {url!r})")
    return proc, url


# -- what a run's records say ----------------------------------------------------------------


def chain_length(iterations: int) -> int:
    """Sequential calls behind an instruction that used `iterations` iterations."""
    improves = iterations - 1
    return 2 + 2 * iterations + improves + (1 if improves else 0)  # encode, decode, ..., rubrics once


def iterations_used(run_dir: Path) -> list[int]:
    with (run_dir / "instructions.jsonl").open(encoding="utf-8") as handle:
        return [len(json.loads(line).get("iterations", [])) for line in handle]


def role_calls(manifest: dict[str, Any]) -> dict[str, int]:
    """Calls per model role, from the manifest's per stage/role rows."""
    calls: dict[str, int] = {}
    for key, row in manifest["calls"].items():
        role = key.rsplit("/", 1)[1]
        calls[role] = calls.get(role, 0) + row["calls"]
    return calls


def lower_bound(manifest: dict[str, Any], run_dir: Path, latency: float, concurrency: int) -> dict[str, float]:
    work = max(role_calls(manifest).values()) * latency / concurrency
    longest = max(iterations_used(run_dir), default=1)
    path = chain_length(longest) * latency
    return {"work_s": work, "critical_path_s": path, "bound_s": max(work, path), "max_iterations_used": longest}


# -- one configuration, in a fresh process ------------------------------------------------------


def rss_now_kib() -> int:
    """Resident set size now (Linux /proc), to separate the run's memory from the imports'."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure_one(config: Config) -> dict[str, Any]:
    """Live run on a fresh cache, then (timed runs only) its replay; the server lives as long as this."""
    sys.path.insert(0, str(REPO))
    import aiohttp  # noqa: F401  (before the memory baseline: the backend imports it lazily)
    from codeclm.programs.lang.spec import load_spec

    seeds = Path(config.seeds)
    pool, dataset = plan_params(config.calls, count_seeds(seeds))
    work = Path(tempfile.mkdtemp(prefix="codeclm-bench-"))
    server, url = start_server(config.latency)
    try:
        spec = load_spec(SPEC, overrides(url, config.concurrency, pool, dataset))
        figures: dict[str, Any] = {"pool_size": pool, "dataset_size": dataset}
        figures.update(live_run(spec, config, seeds, work))
        if not (config.trace or config.profile):
            figures.update(replay_figures(spec, work / "cache", seeds, work, work / "live"))
            figures.update(floor_figures(url, figures, config))
        return figures
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def live_run(spec: Any, config: Config, seeds: Path, work: Path) -> dict[str, Any]:
    """The live run, timed (wall and this process's CPU), traced or profiled as the config says."""
    from codeclm.programs.engine.run import RunOptions, run_spec

    options = RunOptions(out=work / "live", cache_dir=work / "cache", seeds=seeds)
    rss_before = rss_now_kib()
    profiler = cProfile.Profile() if config.profile else None
    if config.trace:
        tracemalloc.start()
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    live = run_spec(spec, options)
    if profiler:
        profiler.disable()
        profiler.dump_stats(config.profile)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = live_figures(live.manifest, live.out, config, wall, cpu, rss_before)
    if config.trace:
        figures["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return figures


def live_figures(manifest: dict[str, Any], run_dir: Path, config: Config, wall: float, cpu: float,
                 rss_before_kib: int) -> dict[str, Any]:
    totals = manifest["totals"]
    calls = totals["calls"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    bound = lower_bound(manifest, run_dir, config.latency, config.concurrency)
    return {"calls": calls, "cache_hits": totals["cache_hits"], "retries": totals["retries"],
            "role_calls": role_calls(manifest), "prompt_tokens": totals["prompt_tokens"],
            "instructions": sum(manifest["counts"]["instructions"].values()), "wall_s": wall, **bound,
            "bound_over_wall": bound["bound_s"] / wall, "cpu_s": cpu, "cpu_ms_per_call": 1000 * cpu / max(1, calls),
            "rss_peak_mib": peak / 1024, "rss_growth_mib": (peak - rss_before_kib) / 1024}


def replay_figures(spec: Any, cache: Path, seeds: Path, work: Path, live_dir: Path) -> dict[str, Any]:
    """Replay the run from its cache: every call is a hit, and the dataset must come out the same."""
    from codeclm.programs.engine.run import RunOptions, run_spec

    options = RunOptions(out=work / "replay", cache_dir=cache, cache_mode="replay", seeds=seeds)
    wall = time.perf_counter()
    replay = run_spec(spec, options)
    wall = time.perf_counter() - wall
    totals = replay.manifest["totals"]
    hits = totals["cache_hits"] + totals.get("shared", 0)  # every call it answered from the cache, repeats too
    same = (replay.out / "dataset.jsonl").read_bytes() == (live_dir / "dataset.jsonl").read_bytes()
    return {"replay_hits": hits, "replay_wall_s": wall, "replay_calls_per_s": hits / wall, "replay_identical": same}


def floor_figures(url: str, figures: dict[str, Any], config: Config) -> dict[str, Any]:
    """The floor in the same run: a raw aiohttp client making as many calls per model role, at the
    same concurrency per role, against the same server. It has no graph to wait on, so its wall is
    the best any scheduler can do; its CPU per call is what a call costs with no framework at all."""
    import asyncio

    import aiohttp

    per_role = figures["role_calls"]
    words = max(1, figures["prompt_tokens"] // max(1, figures["calls"]))  # prompts as long as the run's, on average
    filler = " ".join(["word"] * words)

    async def all_calls() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(role: str, index: int, gate: asyncio.Semaphore) -> None:
                body = {"model": f"hosted_vllm/{role}", "max_tokens": 2048, "temperature": 0.7,
                        "messages": [{"role": "user", "content": f"Instruction number {index}: {filler}"}]}
                async with gate, session.post(f"{url}/chat/completions", json=body) as response:
                    (await response.json())["choices"][0]["message"]["content"]

            gates = {role: asyncio.Semaphore(config.concurrency) for role in per_role}
            await asyncio.gather(*(one(role, i, gates[role]) for role, n in per_role.items() for i in range(n)))

    cpu, wall = time.process_time(), time.perf_counter()
    if config.floor_loop == "uvloop":  # as codeclm's own loop (programs/engine/event_loop.py)
        import uvloop

        uvloop.run(all_calls())
    else:  # the standard loop, as a raw aiohttp client is written: the goal's floor
        asyncio.run(all_calls())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    calls = sum(per_role.values())
    floor_cpu = 1000 * cpu / max(1, calls)
    return {"floor_wall_s": wall, "wall_over_floor": figures["wall_s"] / wall, "floor_cpu_ms_per_call": floor_cpu,
            "cpu_over_floor": figures["cpu_ms_per_call"] / floor_cpu if floor_cpu else 0.0}


# -- the driver ------------------------------------------------------------------------------


def run_child(config: Config) -> dict[str, Any]:
    """Measure one configuration in a fresh interpreter; its last stdout line is the JSON result."""
    done = subprocess.run([sys.executable, __file__, "--one", json.dumps(asdict(config))],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"configuration {config} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeated runs of one configuration: the median of each figure (this machine is noisy),
    the range of wall times, and a replay that counts as identical only if every one was."""
    row: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(first, bool):
            row[key] = all(values)
        elif isinstance(first, (int, float)):
            middle = statistics.median(values)
            row[key] = round(middle) if isinstance(first, int) else middle
        else:
            row[key] = first
    walls = [run["wall_s"] for run in runs]
    row["wall_range"] = f"{min(walls):.2f}-{max(walls):.2f}"
    ratios = [run["cpu_over_floor"] for run in runs if "cpu_over_floor" in run]
    if ratios:  # one run's ratio moves by +-15% here: the spread says how far to trust the median
        row["cpu_over_floor_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
    row["runs"] = len(runs)
    return row


COLUMNS = [  # (header, key, format)
    ("target", "target", "{:d}"), ("conc", "concurrency", "{:d}"), ("calls", "calls", "{:d}"),
    ("runs", "runs", "{:d}"), ("wall s", "wall_s", "{:.2f}"), ("wall range", "wall_range", "{}"),
    ("work s", "work_s", "{:.2f}"), ("path s", "critical_path_s", "{:.2f}"),
    ("bound/wall", "bound_over_wall", "{:.3f}"), ("cpu ms/call", "cpu_ms_per_call", "{:.2f}"),
    ("rss MiB", "rss_peak_mib", "{:.0f}"), ("rss+ MiB", "rss_growth_mib", "{:.1f}"),
    ("heap MiB", "tracemalloc_peak_mib", "{:.1f}"), ("replay hits", "replay_hits", "{:d}"),
    ("replay s", "replay_wall_s", "{:.2f}"), ("replay calls/s", "replay_calls_per_s", "{:.0f}"),
    ("replay same", "replay_identical", "{}"), ("floor wall s", "floor_wall_s", "{:.2f}"),
    ("wall/floor", "wall_over_floor", "{:.2f}"), ("floor cpu ms/call", "floor_cpu_ms_per_call", "{:.2f}"),
    ("cpu/floor", "cpu_over_floor", "{:.2f}"), ("cpu/floor range", "cpu_over_floor_range", "{}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, so the output pastes into RESULTS.md as it is."""
    cells = [[fmt.format(row[key]) if key in row else "-" for _, key, fmt in COLUMNS] for row in rows]
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def print_profile(path: str, title: str, top: int = 25) -> None:
    """Where the framework's CPU goes: the functions with the most time of their own (stderr)."""
    print(f"\n== profile of the live run: {title} ({path}) ==", file=sys.stderr)
    stats = pstats.Stats(path, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the fake server takes per call")
    parser.add_argument("--concurrency", default="8,32", help="comma-separated limits per model role")
    parser.add_argument("--calls", default="2000", help="comma-separated approximate call counts")
    parser.add_argument("--seeds", default=str(DEFAULT_SEEDS),
                        help="seed JSONL file(s), comma-separated, globs allowed "
                             "(e.g. '../shared/benchmarks/*.jsonl')")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per configuration (medians reported)")
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run per configuration")
    parser.add_argument("--floor-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the raw client's event loop (codeclm's is CODECLM_EVENT_LOOP's, uvloop where installed)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--profile", type=Path,
                        help="profile each configuration's live run in one more child; stats to PATH.CALLS.CONC")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: PORT,LATENCY of the fake server
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, seeds: Path) -> list[dict[str, Any]]:
    """Every configuration: timed runs (medians), then a traced and, if asked, a profiled run."""
    rows = []
    for calls in (int(c) for c in args.calls.split(",")):
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            config = Config(calls, concurrency, args.latency, str(seeds), floor_loop=args.floor_loop)
            runs = [run_child(config) for _ in range(args.repeat)]
            row = {"target": calls, "concurrency": concurrency, **combine(runs)}
            if not args.no_trace:
                traced = run_child(Config(calls, concurrency, args.latency, str(seeds), trace=True))
                row["tracemalloc_peak_mib"] = traced["tracemalloc_peak_mib"]
            if args.profile:
                stats = f"{args.profile}.{calls}.{concurrency}"
                run_child(Config(calls, concurrency, args.latency, str(seeds), profile=stats))
                print_profile(stats, f"{calls} calls, concurrency {concurrency}")
            rows.append(row)
            print(f"done: {calls} calls at concurrency {concurrency}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        port, latency = args.serve.split(",")
        serve(int(port), float(latency))
        return
    if args.one:
        print(json.dumps(measure_one(Config(**json.loads(args.one)))))
        return
    seeds_dir = Path(tempfile.mkdtemp(prefix="codeclm-seeds-"))
    try:
        seeds = merge_seeds(args.seeds, seeds_dir)
        seed_count = count_seeds(seeds)
        rows = measure(args, seeds)
    finally:
        shutil.rmtree(seeds_dir, ignore_errors=True)
    from codeclm.programs.engine.event_loop import loop_name

    print(f"latency {args.latency}s, seeds {args.seeds} ({seed_count}), nproc {os.cpu_count()}, "
          f"python {sys.version.split()[0]}, event loop: codeclm {loop_name()}, floor {args.floor_loop}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

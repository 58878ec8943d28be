"""Instructions per call: codeclm's CPU work counted by valgrind, steady where seconds are not.

On a small VM a run's CPU time moves by +-10-15% between runs, more than most changes to the
engine are worth, so an A/B in seconds needs many alternating runs and still says little. The
instructions a process executes do not depend on the machine's load: this script runs
`cpu_parts.py`'s in-process harness under valgrind's callgrind at two sizes and prints the
difference per call (what each further call costs, the imports and the fixed start cancelled
out). Two runs of the same code agree to about 0.1%.

    python benchmarks/instructions.py                 # this checkout
    PYTHONPATH=/tmp/base python benchmarks/instructions.py   # a copy of codeclm at /tmp/base/codeclm
    python benchmarks/instructions.py --without cache-writes,cache-lookups,journals  # what each part costs

With `--http` it counts #10's goal itself, steadily: the paper graph over real sockets against
`throughput.py`'s fake server (in its own process, not counted), and the raw aiohttp client of
`throughput.py`'s floor making as many calls; it prints both per call and their ratio. Under
valgrind a run is about 50x slower while the server's latency is not, so more answers wait at
each turn of the event loop than in a timed run: per-call work is the same, per-turn work is
spread over more calls (the same for both clients).

    python benchmarks/instructions.py --http
    python benchmarks/instructions.py --http --floor-loop uvloop   # the raw client on codeclm's loop too

What it cannot see: the kernel's work (system calls: the cache's SQLite writes, sockets), and
what a call costs beyond its instructions (cold caches after the event loop sleeps: on a small
VM the same work costs up to twice the CPU when spread out in time), so `cpu_parts.py` and
`throughput.py` are still the figures in seconds. It needs valgrind (`apt install valgrind`);
each size takes about 40 s (a minute with `--http`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
HARNESS = HERE / "cpu_parts.py"


def count(command: list[str]) -> tuple[int, int, dict[str, Any]]:
    """(instructions, calls made, what it printed) of one child run; its last stdout line is JSON
    with "calls"."""
    with tempfile.TemporaryDirectory(prefix="codeclm-callgrind-") as scratch:
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/out",
                               sys.executable, *command],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or collected is None:
        raise SystemExit(f"the harness failed under valgrind:\n{done.stderr[-3000:]}")
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    return int(collected.group(1)), printed["calls"], printed


def in_process(without: str, calls: int, latency: float) -> list[str]:
    return [str(HARNESS), "--one", json.dumps({"calls": calls, "concurrency": 32, "latency": latency,
                                               "without": without})]


def over_http(client: str, words: int, floor_loop: str, calls: int, latency: float) -> list[str]:
    return [__file__, "--child", client, str(calls), str(latency), str(words), floor_loop]


def child(client: str, calls: int, latency: float, words: int, floor_loop: str) -> None:
    """One run over HTTP against throughput.py's fake server: codeclm's paper graph, or the raw
    client making the calls that graph makes per model role (60% strong, 40% target), with
    prompts of `words` words (the paper graph's average, as throughput.py's floor does)."""
    sys.path.insert(0, str(HERE))
    import throughput

    seeds = throughput.DEFAULT_SEEDS
    server, url = throughput.start_server(latency)
    work = Path(tempfile.mkdtemp(prefix="codeclm-callgrind-run-"))
    try:
        config = throughput.Config(calls, 32, latency, str(seeds), floor_loop=floor_loop)
        if client == "codeclm":
            from codeclm.programs.lang.spec import load_spec

            pool, dataset = throughput.plan_params(calls, throughput.count_seeds(seeds))
            spec = load_spec(throughput.SPEC, throughput.overrides(url, 32, pool, dataset))
            figures = throughput.live_run(spec, config, seeds, work)
            made, words = figures["calls"], figures["prompt_tokens"] // max(1, figures["calls"])
        else:
            strong = calls * 6 // 10
            figures = {"role_calls": {"strong": strong, "target": calls - strong}, "prompt_tokens": words * calls,
                       "calls": calls, "wall_s": 1.0, "cpu_ms_per_call": 1.0}
            throughput.floor_figures(url, figures, config)
            made = calls
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"calls": made, "words": words}))


def per_call(command: Any, small: int, large: int, latency: float) -> tuple[float, str, dict[str, Any]]:
    """Instructions each further call costs (two sizes: the imports and the fixed start cancel out),
    and what the larger run printed."""
    (i1, c1, _), (i2, c2, printed) = count(command(small, latency)), count(command(large, latency))
    return (i2 - i1) / (c2 - c1), f"runs of {c1} and {c2} calls: {i1:,} and {i2:,} instructions", printed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="500,1500", help="the two sizes (approximate calls)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each answer takes")
    parser.add_argument("--http", action="store_true",
                        help="over real sockets, against the raw client's floor: #10's CPU ratio in instructions")
    parser.add_argument("--without", default="",
                        help="in process: comma-separated parts to switch off, as cpu_parts.py's --without; "
                             "each printed beside the whole")
    parser.add_argument("--floor-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="with --http: the raw client's event loop (codeclm's: CODECLM_EVENT_LOOP, else uvloop)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # internal: CLIENT CALLS LATENCY WORDS LOOP
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]), int(args.child[3]), args.child[4])
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    small, large = (int(n) for n in args.calls.split(","))
    python = f"python {sys.version.split()[0]}"
    if not args.http:
        whole = 0.0
        for without in ["", *filter(None, args.without.split(","))]:
            figure, runs, _ = per_call(functools.partial(in_process, without), small, large, args.latency)
            whole = whole or figure
            part = f", {without} off: {(whole - figure) / whole:.1%} less" if without else ""
            print(f"instructions per call: {figure:,.0f} ({runs}{part}; {python})")
        return
    codeclm, runs, printed = per_call(functools.partial(over_http, "codeclm", 0, args.floor_loop), small, large,
                                      args.latency)
    from codeclm.programs.engine.event_loop import loop_name

    print(f"codeclm over HTTP: {codeclm:,.0f} instructions per call ({runs}; prompts of {printed['words']} words; "
          f"on {loop_name()}'s event loop)")
    raw, runs, _ = per_call(functools.partial(over_http, "raw", printed["words"], args.floor_loop), small, large,
                            args.latency)
    print(f"raw client:        {raw:,.0f} instructions per call ({runs}; on {args.floor_loop}'s event loop)")
    print(f"ratio: {codeclm / raw:.2f} ({python})")


if __name__ == "__main__":
    main()

"""Where the framework's CPU goes per call: the paper graph in one process, with parts switched off.

`throughput.py` measures codeclm against a raw client over real sockets, which is the honest
figure but moves by +-10-15% between runs on a small VM (the server shares the cores). This
script takes the socket out: the OpenAI-compatible backend sleeps for the latency and answers
with the fake server's own answer function, in process. What is left is codeclm's CPU per call,
steady to about +-5%, and each `--without` part shows what that part costs (medians of runs,
each in a fresh process):

    python benchmarks/cpu_parts.py --calls 2000 --repeat 3 --without cache-writes,journals

The answer function's CPU (the fake server's work) is counted too, a few microseconds a call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("cache-writes", "cache-lookups", "journals")  # what --without can switch off


def switch_off(part: str) -> None:
    """Replace one part of the run by a no-op (in this process only)."""
    if part == "cache-writes":
        from codeclm.programs.models.cache import CallCache

        CallCache.put = lambda self, *args, **kwargs: True  # type: ignore[method-assign]
    elif part == "cache-lookups":  # every lookup a miss, as on the fresh cache a run starts with
        from codeclm.programs.models.cache import CallCache

        CallCache.get = lambda self, key: None  # type: ignore[method-assign]
    elif part == "journals":
        from codeclm.programs.artifacts.store import RunStore

        RunStore.append = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown part {part!r}: one of {', '.join(PARTS)}")


def answer_in_process(latency: float, spread: float = 0.0) -> None:
    """The HTTP backend sleeps `latency` (give or take `spread`/2, seeded) and answers as the fake server
    would: no socket, no server. With no spread a batch's answers arrive at one turn of the event loop
    and are handled back to back, which on a small VM costs less CPU than the same work spread out in
    time, as answers over HTTP are (RESULTS.md, eighth pass)."""
    draw = random.Random(0).random
    sys.path.insert(0, str(REPO / "tests"))
    from codeclm.programs.models import backends
    from fake_openai_server import answer_text

    async def complete(self, messages, params):  # the backend's own signature
        await asyncio.sleep(latency + (draw() - 0.5) * spread)
        return backends.Completion(answer_text(messages, self.model), "stop", 10, 10)

    backends.OpenAICompatibleBackend.complete = complete  # type: ignore[method-assign]


def measure_one(calls: int, concurrency: int, latency: float, without: str, spread: float = 0.0) -> dict[str, float]:
    """One live run on a fresh cache; CPU seconds and calls made."""
    sys.path.insert(0, str(Path(__file__).parent))
    import throughput
    from codeclm.programs.engine.run import RunOptions, run_spec
    from codeclm.programs.lang.spec import load_spec

    answer_in_process(latency, spread)
    for part in filter(None, without.split(",")):
        switch_off(part)
    seeds = throughput.DEFAULT_SEEDS
    pool, dataset = throughput.plan_params(calls, throughput.count_seeds(seeds))
    work = Path(tempfile.mkdtemp(prefix="codeclm-cpu-"))
    try:
        spec = load_spec(throughput.SPEC, throughput.overrides("http://127.0.0.1:9", concurrency, pool, dataset))
        cpu = time.process_time()
        run = run_spec(spec, RunOptions(out=work / "run", cache_dir=work / "cache", seeds=seeds))
        cpu = time.process_time() - cpu
        return {"calls": run.manifest["totals"]["calls"], "cpu_s": cpu}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="approximate calls per run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per model role")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each answer takes")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="answers take latency +- spread/2 seconds (uniform): spread out in time, as over HTTP")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians reported)")
    parser.add_argument("--without", default="", help=f"comma-separated parts to switch off: {', '.join(PARTS)}")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: JSON of one configuration
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(**json.loads(args.one))))
        return
    configs = [""] + [part for part in args.without.split(",") if part]
    print(f"calls ~{args.calls}, concurrency {args.concurrency}, latency {args.latency}s +- {args.spread / 2:g}s, "
          f"python {sys.version.split()[0]}")
    print("| switched off | calls | cpu ms/call (median) | range |\n|---|---|---|---|")
    for without in configs:
        per_call = []
        for _ in range(args.repeat):  # each run in a fresh process: no part stays switched off for the next
            one = json.dumps({"calls": args.calls, "concurrency": args.concurrency, "latency": args.latency,
                              "spread": args.spread,
                              "without": without})
            done = subprocess.run([sys.executable, __file__, "--one", one], capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            per_call.append(1000 * figures["cpu_s"] / figures["calls"])
        print(f"| {without or 'nothing'} | {figures['calls']} | {statistics.median(per_call):.3f} | "
              f"{min(per_call):.3f}-{max(per_call):.3f} |")


if __name__ == "__main__":
    main()

"""Calls per second and CPU per call: the local executor against the Ray executor with 1 and 2
workers, and the floor (a raw aiohttp client making as many calls), on specs/codeclm.yaml against
the fake server (its own process, so its CPU is not counted).

    python benchmarks/ray_throughput.py --calls 1500 --latency 0.01 --concurrency 64

Each configuration runs in a fresh child process on a fresh cache. CPU is the CPU time of the
child and every process below it (Ray's GCS, raylet, the coordinator and the worker actors: all
of them, since a Ray run pays for them), read from /proc every 0.1 s, so each process's last
reading counts (a process that lives under 0.1 s can be missed: a few ms). Every Ray run's
dataset is compared with the local run's, byte for byte (`same`).

It also times the coordinator actor alone (`coordinator`): sequential round trips from the
driver (latency) and a burst of concurrent ones (throughput), the figures that bound the cache,
the dedup and the limiter at scale (benchmarks/RESULTS.md, "The Ray executor").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from throughput import (  # noqa: E402
    DEFAULT_SEEDS,
    SPEC,
    Config,
    count_seeds,
    floor_figures,
    overrides,
    plan_params,
    start_server,
)

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of `root` and every process below it, per pid."""
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    found = {}
    for pid, cpu in times.items():
        chain, seen = pid, 0
        while chain and chain != root and seen < 64:
            chain, seen = parents.get(chain, 0), seen + 1
        if chain == root:
            found[pid] = cpu
    return found


class CpuWatch:
    """Polls the process tree; the total is each pid's last reading (CPU time only grows)."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}
        self.start = tree_cpu(os.getpid())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        while not self.stop.wait(0.1):
            self.last.update(tree_cpu(os.getpid()))

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        self.last.update(tree_cpu(os.getpid()))
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.last.items())


def coordinator_figures(ray: Any) -> dict[str, float]:
    """Round trips to a CallCoordinator (one async actor), sequential and in a burst of 2,000."""
    import asyncio

    from codeclm.programs.engine.ray_executor import CallCoordinator

    async def measure() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as cache:
            actor = ray.remote(CallCoordinator).options(num_cpus=0, max_concurrency=10_000).remote(
                cache, "live", {"strong": (8, None)})
            await actor.peak.remote()
            started = time.perf_counter()
            for i in range(300):
                await actor.claim.remote(f"{i:064x}", "bench")
            sequential = (time.perf_counter() - started) / 300
            started = time.perf_counter()
            await asyncio.gather(*(actor.claim.remote(f"{i + 10_000:064x}", "bench") for i in range(2000)))
            burst = 2000 / (time.perf_counter() - started)
            started = time.perf_counter()  # as workers send them: batches of claims, then of puts
            entry = {"text": "x" * 2000, "usage": {"prompt_tokens": 500, "completion_tokens": 500}}
            keys = [f"{i + 20_000:064x}" for i in range(4000)]
            batches = [keys[i:i + 50] for i in range(0, len(keys), 50)]
            await asyncio.gather(*(actor.claim_many.remote([(k, None) for k in b], "bench") for b in batches))
            await asyncio.gather(*(actor.put_many.remote([(k, "m", entry, None) for k in b], "bench") for b in batches))
            batched = len(keys) / (time.perf_counter() - started)
            await actor.close.remote()
            ray.kill(actor)
        return {"claim_ms": 1000 * sequential, "claims_per_s": burst, "batched_calls_per_s": batched}

    return asyncio.run(measure())


def measure_one(kind: str, url: str, sets: list[str], seeds: str, work: Path) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from codeclm.programs.engine.run import RunOptions, run_spec
    from codeclm.programs.lang.spec import load_spec

    spec = load_spec(SPEC, sets)
    options = RunOptions(out=work / kind, cache_dir=work / f"cache-{kind}", seeds=Path(seeds), overrides=sets)
    extra: dict[str, Any] = {}
    if kind == "local":
        watch = CpuWatch()
        wall = time.perf_counter()
        result = run_spec(spec, options)
    else:
        import ray
        from codeclm.programs.engine.ray_executor import LAST_RUN, run_on_ray

        os.environ["CODECLM_RAY_WORKERS"] = kind.removeprefix("ray")
        watch = CpuWatch()  # Ray's own start counts in the CPU: a run pays for it
        wall = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        init = time.perf_counter() - wall
        wall = time.perf_counter()
        result = run_on_ray(spec, options)
        wall_run = time.perf_counter() - wall
        extra = {"init_s": init, "ready_s": LAST_RUN["workers_ready_s"], **coordinator_figures(ray)}
        ray.shutdown()
    wall = wall_run if kind != "local" else time.perf_counter() - wall
    cpu = watch.total()
    warm = wall - extra.get("ready_s", 0.0)  # after the workers are up (Ray's start and the imports excluded)
    calls = result.manifest["totals"]["calls"]
    roles: dict[str, int] = {}
    for row in result.manifest["calls"].values():
        roles[row["model"]] = roles.get(row["model"], 0) + row["calls"]
    return {"kind": kind, "calls": calls, "wall_s": wall, "calls_per_s": calls / wall,
            "warm_calls_per_s": calls / warm, "cpu_s": cpu,
            "cpu_ms_per_call": 1000 * cpu / max(1, calls), "prompt_tokens": result.manifest["totals"]["prompt_tokens"],
            "role_calls": roles, "dataset": str(result.out / "dataset.jsonl"), **extra}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--kinds", default="local,ray1,ray2")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(measure_one(job["kind"], job["url"], job["sets"], job["seeds"], Path(job["work"]))))
        return
    server, url = start_server(args.latency)
    rows = []
    try:
        pool, dataset = plan_params(args.calls, count_seeds(DEFAULT_SEEDS))
        sets = overrides(url, args.concurrency, pool, dataset)
        with tempfile.TemporaryDirectory() as work:
            for kind in args.kinds.split(","):
                job = {"kind": kind, "url": url, "sets": sets, "seeds": str(DEFAULT_SEEDS), "work": work}
                done = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                      text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
                if done.returncode != 0:
                    raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            reference = Path(rows[0]["dataset"]).read_bytes()
            for row in rows:
                row["same"] = Path(row["dataset"]).read_bytes() == reference
            config = Config(calls=args.calls, concurrency=args.concurrency, latency=args.latency, seeds="")
            roles = {model.split("/")[-1]: n for model, n in rows[0]["role_calls"].items()}
            figures = {**rows[0], "role_calls": roles}
            floor = floor_figures(url, figures, config)  # only its floor_* figures are printed
    finally:
        server.kill()
    print(f"latency {args.latency}s, concurrency {args.concurrency} per role, {rows[0]['calls']} calls\n")
    print("| executor | calls | wall s | ray.init s | workers up s | calls/s | warm calls/s | cpu s | cpu ms/call "
          "| same | claim ms | claims/s | batched claim+put/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['kind']} | {row['calls']} | {row['wall_s']:.2f} | {row.get('init_s', 0):.2f} "
              f"| {row.get('ready_s', 0):.2f} "
              f"| {row['calls_per_s']:.0f} | {row['warm_calls_per_s']:.0f} | {row['cpu_s']:.2f} "
              f"| {row['cpu_ms_per_call']:.2f} | {row['same']} | {row.get('claim_ms', 0):.2f} "
              f"| {row.get('claims_per_s', 0):.0f} | {row.get('batched_calls_per_s', 0):.0f} |")
    floor_rate = rows[0]["calls"] / floor["floor_wall_s"]
    print(f"| floor (raw aiohttp) | {rows[0]['calls']} | {floor['floor_wall_s']:.2f} | - | - | {floor_rate:.0f} "
          f"| - | - | {floor['floor_cpu_ms_per_call']:.2f} | - | - | - | - |")


if __name__ == "__main__":
    main()

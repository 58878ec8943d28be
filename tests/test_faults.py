"""Whole pipeline runs against the fault-injecting OpenAI-compatible server on loopback.

These exercise the real transport path (OpenAICompatibleBackend over aiohttp, the hub's retries,
timeouts and semaphores), which the scripted in-process backend of the other tests bypasses.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from codeclm.programs.engine.run import RunOptions, RunResult, run_spec
from codeclm.programs.errors import ModelCallError
from codeclm.programs.lang.spec import ModelSpec, load_spec
from codeclm.programs.models.backends import CallParams, DSPyBackend
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import ModelHub
from conftest import base_spec, write_spec
from fake_openai_server import FakeOpenAIServer, FaultPlan

# Every transport fault the hub must absorb. "length" is not one: a truncated completion is data.
TRANSPORT_FAULTS = ("429", "500", "hang", "malformed_json", "empty")


def model_section(url: str, concurrency: int = 4) -> dict[str, Any]:
    """Both roles on the fake server; a short timeout so an injected hang costs half a second."""
    common = {"api_base": url, "timeout": 0.5, "retries": 6, "concurrency": concurrency, "max_tokens": 64}
    return {"strong": {"model": "hosted_vllm/strong", **common},
            "target": {"model": "hosted_vllm/target", **common}}


def run_on(server: FakeOpenAIServer, seeds_file: Path, folder: Path, concurrency: int = 4,
           through_dspy: bool = False) -> RunResult:
    """One run with its own cache and run folder, and a backoff small enough for a unit test.
    `through_dspy` sends the calls through dspy.LM's own HTTP client (the path Gemini and
    Anthropic take) instead of codeclm's OpenAI-compatible one."""
    folder.mkdir(parents=True)
    data = base_spec(seeds_file)
    data["models"] = model_section(server.url, concurrency)
    spec = load_spec(write_spec(folder, data))
    cache = CallCache(folder / "cache", "live")
    backends = {role: DSPyBackend(model) for role, model in spec.models.items()} if through_dspy else None
    hub = ModelHub(spec.models, cache, backends=backends)
    hub.backoff_base = 0.01
    try:
        return run_spec(spec, RunOptions(out=folder / "run", cache_dir=folder / "cache"), hub)
    finally:
        cache.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def instruction_ids(result: RunResult) -> list[str]:
    return [h["id"] for h in read_jsonl(result.out / "instructions.jsonl")]


def test_transport_faults_are_retried_without_changing_the_dataset(tmp_path: Path, seeds_file: Path) -> None:
    """Faults cost retries, never records: the faulty run writes the fault-free run's bytes."""
    with FakeOpenAIServer() as clean_server:
        clean = run_on(clean_server, seeds_file, tmp_path / "clean")
    plan = FaultPlan(rate=0.2, kinds=TRANSPORT_FAULTS, retry_after=0.01, hang_seconds=2.0)
    with FakeOpenAIServer(faults=plan) as faulty_server:
        faulty = run_on(faulty_server, seeds_file, tmp_path / "faulty")
        injected = sum(faulty_server.faults.values())

    assert (faulty.out / "dataset.jsonl").read_bytes() == (clean.out / "dataset.jsonl").read_bytes()
    assert (clean.out / "dataset.jsonl").read_bytes(), "the fault-free run keeps some pairs"
    ids = instruction_ids(faulty)
    assert ids == instruction_ids(clean)
    assert len(ids) == len(set(ids)) == 3 * 2
    totals = faulty.manifest["totals"]
    assert injected > 0
    assert totals["retries"] == injected  # each fault hits a first attempt only: one retry each
    assert totals["failures"] == 0
    assert totals["calls"] == clean.manifest["totals"]["calls"]


def test_the_dspy_backend_absorbs_the_same_faults(tmp_path: Path, seeds_file: Path) -> None:
    """dspy.LM's client with 20% faults gives the bytes codeclm's own client gives without any."""
    with FakeOpenAIServer() as clean_server:
        clean = run_on(clean_server, seeds_file, tmp_path / "clean")
    plan = FaultPlan(rate=0.2, kinds=TRANSPORT_FAULTS, retry_after=0.01, hang_seconds=2.0)
    with FakeOpenAIServer(faults=plan) as faulty_server:
        faulty = run_on(faulty_server, seeds_file, tmp_path / "faulty", through_dspy=True)
        injected = sum(faulty_server.faults.values())
    assert (faulty.out / "dataset.jsonl").read_bytes() == (clean.out / "dataset.jsonl").read_bytes()
    assert injected > 0 and faulty.manifest["totals"]["retries"] == injected
    assert faulty.manifest["totals"]["failures"] == 0


@pytest.mark.parametrize(("kind", "retryable"), [("500", True), ("429", True), ("malformed_json", True)])
def test_dspy_backend_classifies_provider_errors(kind: str, retryable: bool) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    with FakeOpenAIServer(faults=FaultPlan(rate=1.0, kinds=(kind,), retry_after=0.25)) as server:
        backend = DSPyBackend(ModelSpec(role="strong", model="hosted_vllm/strong", api_base=server.url))
        with pytest.raises(ModelCallError) as caught:
            asyncio.run(backend.complete(messages, CallParams({"temperature": 0.0, "max_tokens": 20})))
    assert caught.value.retryable is retryable
    assert "\n" not in str(caught.value)
    if kind == "429":
        assert caught.value.retry_after == 0.25


def test_dspy_backend_reads_answers_and_truncation() -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    with FakeOpenAIServer(faults=FaultPlan(rate=1.0, kinds=("length",))) as server:
        backend = DSPyBackend(ModelSpec(role="strong", model="hosted_vllm/strong", api_base=server.url))
        completion = asyncio.run(backend.complete(messages, CallParams({"temperature": 0.0, "max_tokens": 20})))
    assert completion.text and completion.finish_reason == "length" and completion.completion_tokens > 0


def test_truncated_completions_are_counted_not_retried(tmp_path: Path, seeds_file: Path) -> None:
    """finish_reason=length is an answer (possibly unparsable), recorded in the manifest's totals."""
    with FakeOpenAIServer(faults=FaultPlan(rate=1.0, kinds=("length",))) as server:
        result = run_on(server, seeds_file, tmp_path / "truncated")
    totals = result.manifest["totals"]
    assert totals["truncated"] == totals["calls"] > 0  # every completion was cut, none retried
    assert totals["retries"] == 0
    assert (result.out / "manifest.json").is_file()


def test_a_call_that_always_fails_becomes_a_failure_record(tmp_path: Path, seeds_file: Path) -> None:
    """Every improve call gets HTTP 500: those instructions fail at improve, the rest still finish."""
    with FakeOpenAIServer(always_fail="instruction improver") as server:
        result = run_on(server, seeds_file, tmp_path / "improve_fails")
    histories = read_jsonl(result.out / "instructions.jsonl")
    failed = [h for h in histories if h["status"] == "failed"]
    kept = [h for h in histories if h["status"] == "kept"]
    assert failed, "some instruction needs an improve step"
    assert all(h["failure"]["stage"] == "improve" and "500" in h["failure"]["error"] for h in failed)
    assert kept and all(len(h["iterations"]) == 1 for h in kept)
    assert result.manifest["totals"]["failures"] == len(failed)


def test_concurrency_limit_per_model_is_respected(tmp_path: Path, seeds_file: Path) -> None:
    """Two roles with two slots each: never more than four requests at the server at once."""
    with FakeOpenAIServer(latency=0.05) as server:
        run_on(server, seeds_file, tmp_path / "limited", concurrency=2)
        peak = server.max_in_flight
    assert 2 <= peak <= 4


def test_openai_compatible_backend_honours_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY routes calls through a proxy (here a closed port), NO_PROXY exempts a host."""
    from codeclm.programs.models.backends import OpenAICompatibleBackend

    async def ask(spec: ModelSpec) -> Any:
        backend = OpenAICompatibleBackend(spec)
        try:
            return await backend.complete([{"role": "user", "content": "Say hi."}], CallParams({"max_tokens": 8}))
        finally:
            await backend.aclose()

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with FakeOpenAIServer() as server:
        spec = ModelSpec(role="strong", model="hosted_vllm/strong", api_base=server.url, timeout=5)
        with pytest.raises(ModelCallError):
            asyncio.run(ask(spec))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        completion = asyncio.run(ask(spec))
    assert completion.text and server.completions == 1


def test_the_api_key_goes_to_the_server_never_to_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp sends a session's own headers to the proxy too (an https tunnel's CONNECT, as
    Proxy-Authorization): where a proxy is used, the key goes with each request instead, inside the
    tunnel, for the server alone. A plain-http request through a proxy still carries it."""
    from codeclm.programs.models.backends import OpenAICompatibleBackend

    seen: list[bytes] = []

    async def through_a_proxy(api_base: str | None) -> None:
        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        for scheme in ("HTTPS_PROXY", "HTTP_PROXY"):
            monkeypatch.setenv(scheme, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        backend = OpenAICompatibleBackend(ModelSpec(role="strong", model="openai/gpt-4o-mini", api_base=api_base))
        try:
            with pytest.raises(ModelCallError):
                await backend.complete([{"role": "user", "content": "Hi"}], CallParams({"max_tokens": 8}))
        finally:
            await backend.aclose()
            server.close()

    for name in ("NO_PROXY", "no_proxy", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-proxies")
    asyncio.run(through_a_proxy(None))  # https://api.openai.com/v1: a tunnel
    asyncio.run(through_a_proxy("http://models.example/v1"))  # plain http: the proxy forwards the request itself
    assert len(seen) == 2 and seen[0].startswith(b"CONNECT api.openai.com:443 "), seen
    assert b"sk-test-not-for-proxies" not in seen[0] and b"authorization" not in seen[0].lower()
    assert seen[1].startswith(b"POST http://models.example/v1/chat/completions ")
    assert b"\r\nAuthorization: Bearer sk-test-not-for-proxies\r\n" in seen[1]


def test_a_404_at_a_base_url_without_v1_suggests_it() -> None:
    """`api_base: http://HOST:PORT` (no /v1) gets 404 from vLLM and llama.cpp: the error says what to try."""
    from codeclm.programs.models.backends import OpenAICompatibleBackend

    async def ask(base: str) -> Any:
        backend = OpenAICompatibleBackend(ModelSpec(role="strong", model="hosted_vllm/strong", api_base=base))
        try:
            return await backend.complete([{"role": "user", "content": "Say hi."}], CallParams({"max_tokens": 8}))
        finally:
            await backend.aclose()

    with FakeOpenAIServer() as server:
        base = server.url.removesuffix("/v1") + "/api"
        with pytest.raises(ModelCallError) as caught:
            asyncio.run(ask(base))
        assert "HTTP 404" in str(caught.value) and f"did you mean {base}/v1?" in str(caught.value)
        with pytest.raises(ModelCallError) as caught:
            asyncio.run(ask(server.url + "/nowhere/v1"))
        assert "HTTP 404" in str(caught.value) and "did you mean" not in str(caught.value)  # has /v1: no guess


def test_a_host_that_cannot_be_encoded_fails_each_call_as_a_model_error() -> None:
    """The spec check refuses such an api_base (test_issue9_checks); a backend made without it (a library
    user's ModelSpec) fails every call with a ModelCallError, recorded, never a traceback."""
    from codeclm.programs.models.backends import OpenAICompatibleBackend

    async def ask_twice() -> list[str]:
        backend = OpenAICompatibleBackend(ModelSpec(role="strong", model="hosted_vllm/m", api_base="http://\u00e4..b/v1"))
        errors = []
        try:
            for _ in range(2):
                with pytest.raises(ModelCallError) as caught:
                    await backend.complete([{"role": "user", "content": "Hi"}], CallParams({"max_tokens": 8}))
                errors.append(str(caught.value))
        finally:
            await backend.aclose()
        return errors

    errors = asyncio.run(ask_twice())
    assert all("is not a valid URL" in e and "idna" in e for e in errors), errors


def test_a_model_nobody_serves_fails_the_run_with_the_reason(tmp_path: Path, seeds_file: Path) -> None:
    """Refused connections are retried, then recorded; when every encode failed the run stops
    and says why, naming the file with each failure (exit 1, no traceback)."""
    from click.testing import CliRunner
    from codeclm.cli import main

    data = base_spec(seeds_file)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": "http://127.0.0.1:9/v1", "retries": 1}
                      for role in ("strong", "target")}
    spec = write_spec(tmp_path, data)
    result = CliRunner().invoke(main, ["run", str(spec), "-q", "--out", str(tmp_path / "run"),
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "node 'encode': all 4 records failed" in result.output and "Cannot connect" in result.output
    assert "Traceback" not in result.output
    records = read_jsonl(tmp_path / "run" / "metadata.jsonl")
    assert len(records) == 4 and all(r["status"] == "failed" for r in records)
    assert all(r["error"].startswith("hosted_vllm/strong: ClientConnectorError") for r in records)
    # inspect shows the stopped run and why (it refuses a folder an interrupted rerun left, which has no such record)
    stopped = json.loads((tmp_path / "run" / "stopped.json").read_text())
    assert stopped["stopped"] == "error" and "all 4 records failed" in stopped["error"]
    inspected = CliRunner().invoke(main, ["inspect", str(tmp_path / "run")])
    assert inspected.exit_code == 0 and "stopped on an error: node 'encode': all 4 records failed" in inspected.output
    reported = CliRunner().invoke(main, ["report", str(tmp_path / "run")])
    assert reported.exit_code == 0, reported.output
    assert "Stopped on an error:</b> node &#x27;encode&#x27;: all 4 records failed" in \
        (tmp_path / "run" / "report.html").read_text()
    from codeclm.programs.artifacts.store import RunStore

    RunStore(tmp_path / "run").claim()  # a rerun into the folder: the earlier stop is not its own
    assert not (tmp_path / "run" / "stopped.json").exists()


def test_openai_gets_max_completion_tokens_and_servers_get_max_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from codeclm.programs.models.backends import OpenAICompatibleBackend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    params = CallParams({"temperature": 0.2, "max_tokens": 64}, seed=7)
    messages = [{"role": "user", "content": "Hi"}]
    openai = OpenAICompatibleBackend(ModelSpec(role="strong", model="openai/gpt-4o-mini")).request_body(messages,
                                                                                                        params)
    assert openai["max_completion_tokens"] == 64 and "max_tokens" not in openai and openai["model"] == "gpt-4o-mini"
    server = OpenAICompatibleBackend(ModelSpec(role="strong", model="hosted_vllm/m", api_base="http://h/v1"))
    body = server.request_body(messages, params)
    assert body["max_tokens"] == 64 and body["seed"] == 7 and body["temperature"] == 0.2


def test_request_and_response_json_read_and_write_what_json_did() -> None:
    """orjson makes the bodies; what it refuses goes through json exactly as before (no failed call)."""
    from codeclm.programs.models.backends import _request_json, _response_json

    body = {"messages": [{"role": "user", "content": "café 🙂"}], "temperature": 0.7, "seed": 7}
    assert json.loads(_request_json(body)) == body
    odd = {"content": "\ud800", "big": 2**70}  # orjson refuses both; json wrote them
    assert _request_json(odd) == json.dumps(odd).encode("utf-8")
    for number in (float("nan"), float("inf")):  # orjson would write null
        assert _request_json({"presence_penalty": number}) == json.dumps({"presence_penalty": number}).encode()
    assert _response_json('{"a": "café"}'.encode()) == {"a": "café"}
    assert _response_json(b'{"a": "bad \xff byte"}') == {"a": "bad \ufffd byte"}  # not UTF-8: replaced
    assert _response_json(b'{"a": "\\ud800", "n": NaN}')["a"] == "\ud800"  # Completion replaces it later
    with pytest.raises(ValueError):
        _response_json(b"<html>not json</html>")


def test_a_run_with_failed_calls_replays_them_as_failures_and_its_bundle_carries_them(tmp_path, seeds_file):
    """A failed call is data like an answer: replay (and a replay from an exported bundle) fails it
    with the recorded error, so the dataset and failures.jsonl come out the same; a live run calls
    it again. A replay used to stop at the first failed call with exit 3 ("no cached completion")."""
    from click.testing import CliRunner
    from codeclm import cli

    invoke = CliRunner().invoke
    plan = FaultPlan(rate=0.15, kinds=("500", "empty"), seed=3)
    with FakeOpenAIServer(faults=plan) as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {**spec, "retries": 0} for role, spec in model_section(server.url).items()}
        spec, cache = str(write_spec(tmp_path, data)), str(tmp_path / "cache")
        out = tmp_path / "run"
        ran = invoke(cli.main, ["run", spec, "-q", "--out", str(out), "--cache-dir", cache])
        failed_calls = server.faults["500"] + server.faults["empty"]
        assert ran.exit_code == 0 and failed_calls, ran.output
        assert (out / "failures.jsonl").read_text().strip()

        replayed = invoke(cli.main, ["replay", str(out), "--out", str(tmp_path / "replay"), "--cache-dir", cache])
        assert replayed.exit_code == 0, replayed.output
        assert "dataset.jsonl identical to the recorded run" in replayed.output
        assert (out / "failures.jsonl").read_bytes() == (tmp_path / "replay" / "failures.jsonl").read_bytes()

        stats = invoke(cli.main, ["cache", "stats", "--cache-dir", cache])
        assert f"(and {failed_calls} failed calls, kept for replay)" in stats.output, stats.output

        bundle, elsewhere = str(tmp_path / "calls.jsonl.gz"), str(tmp_path / "other-cache")
        assert invoke(cli.main, ["cache", "export", str(out), bundle, "--cache-dir", cache]).exit_code == 0
        assert invoke(cli.main, ["cache", "import", bundle, "--cache-dir", elsewhere]).exit_code == 0
        offline = invoke(cli.main, ["replay", str(out), "--out", str(tmp_path / "offline"), "--cache-dir", elsewhere])
        assert offline.exit_code == 0 and "identical" in offline.output, offline.output

        made = server.completions
        again = invoke(cli.main, ["run", spec, "-q", "--out", str(tmp_path / "again"), "--cache-dir", cache])
        assert again.exit_code == 0, again.output
        assert server.completions - made >= failed_calls  # each failed call is asked again (and what follows it)

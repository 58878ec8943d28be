"""A server that accepts connections and never answers: each call fails within a bounded time
(retries included), and the failure names the model, the endpoint and the timeout to raise."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from codeclm.programs.errors import ModelCallError
from codeclm.programs.lang.spec import ModelSpec
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import CALL_BUDGET, CallContext, ModelHub
from conftest import base_spec, write_spec


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback port that completes TCP handshakes (the kernel's backlog) and never reads or answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


def test_a_silent_server_fails_a_call_within_its_budget(silent_server: str, tmp_path: Path) -> None:
    """retries: 5 would cost 6 timeouts; the call's budget stops it after CALL_BUDGET x timeout."""
    spec = ModelSpec(role="strong", model="hosted_vllm/m", api_base=silent_server, timeout=0.5, retries=5)
    cache = CallCache(tmp_path / "cache", "live")
    hub = ModelHub({"strong": spec}, cache)
    hub.backoff_base = 0.05

    async def call() -> None:
        try:
            await hub.complete("strong", [{"role": "user", "content": "hi"}], {"temperature": 0.0},
                               CallContext("encode", "s0"))
        finally:
            await hub.aclose()

    started = time.monotonic()
    with pytest.raises(ModelCallError) as failure:
        asyncio.run(call())
    elapsed = time.monotonic() - started
    cache.close()
    assert elapsed < CALL_BUDGET * 0.5 + 1.0, elapsed
    message = str(failure.value)
    assert "hosted_vllm/m" in message and silent_server in message and "0.5s" in message
    assert "models.strong.timeout" in message
    row = hub.summary()["encode/strong"]
    assert row["failures"] == 1 and row["retries"] == CALL_BUDGET - 1


def test_a_run_against_a_silent_server_records_why_and_stops(silent_server: str, tmp_path: Path,
                                                              seeds_file: Path) -> None:
    """timeout 0.5 s, retries 2: every encode fails in bounded time, recorded with model, endpoint,
    timeout and the setting to raise; the run exits 1 with that reason, no traceback. One call in
    flight: once a call to a model that never answered has timed out, the queued ones fail at once
    instead of each waiting out its own budget."""
    from click.testing import CliRunner
    from codeclm.cli import main

    data = base_spec(seeds_file)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": silent_server, "timeout": 0.5,
                             "retries": 2, "concurrency": 1} for role in ("strong", "target")}
    spec = write_spec(tmp_path, data)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(spec), "-q", "--out", str(tmp_path / "run"),
                                       "--cache-dir", str(tmp_path / "cache")])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert elapsed < 8, elapsed  # one call's budget (1 s) and the default backoff, not 4 x 3 timeouts
    records = [json.loads(line) for line in (tmp_path / "run" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "failed" for r in records)
    for record in records:
        error = record["error"]
        assert error.startswith("hosted_vllm/strong (model 'strong') at " + silent_server), error
        assert "0.5s timeout" in error and "raise models.strong.timeout" in error
    assert sum("not tried" in r["error"] for r in records) == 3
    assert "models.strong.timeout" in result.output


def test_a_model_that_answered_once_is_not_cut_short(tmp_path: Path) -> None:
    """The fail-fast holds only for a model that never answered: one slow call is not a dead server."""
    from codeclm.programs.models.backends import CallParams, Completion
    from conftest import ScriptedBackend

    class SlowOnce(ScriptedBackend):
        async def complete(self, messages: list[dict[str, str]], params: CallParams) -> Completion:
            if messages[0]["content"] == "hang":
                await asyncio.sleep(10)
            return await super().complete(messages, params)

    spec = ModelSpec(role="strong", model="hosted_vllm/m", api_base="http://127.0.0.1:9/v1", timeout=0.2, retries=1)
    cache = CallCache(tmp_path / "cache", "live")
    hub = ModelHub({"strong": spec}, cache, backends={"strong": SlowOnce("scripted/m", lambda m: "ok")})
    hub.backoff_base = 0.01

    async def ask(text: str) -> str:
        entry = await hub.complete("strong", [{"role": "user", "content": text}], {}, CallContext("encode", text))
        return entry["text"]

    async def scenario() -> list[str]:
        first = await ask("hi")
        with pytest.raises(ModelCallError, match="no answer within"):
            await ask("hang")
        return [first, await ask("again")]

    assert asyncio.run(scenario()) == ["ok", "ok"]
    cache.close()

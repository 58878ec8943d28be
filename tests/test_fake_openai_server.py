"""Quick tests of the fake OpenAI-compatible server (stdlib urllib only)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

from fake_openai_server import FakeOpenAIServer, FaultPlan

ENCODE_BODY: dict[str, Any] = {
    "model": "fake",
    "messages": [
        {"role": "system", "content": "You are an instruction analyzer."},
        {"role": "user", "content": "Write a poem about the sea."},
    ],
    "temperature": 0.0,
    "max_tokens": 64,
}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(
        url + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_models_endpoint() -> None:
    with FakeOpenAIServer() as server:
        data = _get(server.url + "/models")
    assert data == {"object": "list", "data": [{"id": "fake", "object": "model"}]}


def test_chat_completion_encode_format() -> None:
    with FakeOpenAIServer() as server:
        status, _, data = _post(server.url, ENCODE_BODY)
        assert server.completions == 1 and server.requests == 1
    assert status == 200
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    lines = choice["message"]["content"].splitlines()
    assert lines[0].startswith("Use case: ")
    assert lines[1].startswith("Skills: ")
    skills = lines[1].removeprefix("Skills: ").split(", ")
    assert len(skills) == 2 and skills[0] != skills[1]
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_same_request_same_content() -> None:
    with FakeOpenAIServer() as server:
        first = _post(server.url, ENCODE_BODY)[2]["choices"][0]["message"]["content"]
        second = _post(server.url, ENCODE_BODY)[2]["choices"][0]["message"]["content"]
    assert first == second


def test_fault_429_then_success() -> None:
    plan = FaultPlan(rate=1.0, kinds=("429",), retry_after=0.05)
    with FakeOpenAIServer(faults=plan) as server:
        status, headers, data = _post(server.url, ENCODE_BODY)
        assert status == 429
        assert float(headers["Retry-After"]) == 0.05
        assert data["error"]["type"] == "rate_limit"
        status, _, data = _post(server.url, ENCODE_BODY)
        assert status == 200
        assert data["choices"][0]["message"]["content"].startswith("Use case: ")
        assert server.faults["429"] == 1 and server.completions == 1 and server.requests == 2


def test_max_in_flight_counts_concurrency() -> None:
    with FakeOpenAIServer(latency=0.2) as server:
        results: list[int] = []

        def call(i: int) -> None:
            body = dict(ENCODE_BODY, seed=i)
            results.append(_post(server.url, body)[0])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 5
        assert server.max_in_flight >= 2
        assert server.in_flight == 0

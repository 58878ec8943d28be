"""A deterministic, OpenAI-compatible chat-completions server on loopback.

Used by the tests and the benchmark: it answers in the text formats the pipeline's parsers read
(encode, decode, rubrics, improve, respond, pairwise judge), with configurable latency and
deterministic fault injection (429, 500, hang, malformed JSON, empty content, truncated output).

Run it by hand with ``python tests/fake_openai_server.py --port 8000``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

FAULT_KINDS: tuple[str, ...] = ("429", "500", "hang", "malformed_json", "empty", "length")

USE_CASES: tuple[str, ...] = (
    "creative writing",
    "code generation",
    "question answering",
    "business planning",
    "data analysis",
    "travel advice",
)

SKILLS: tuple[str, ...] = (
    "logical reasoning",
    "creative thinking",
    "domain knowledge",
    "clear communication",
    "mathematical reasoning",
    "code writing",
    "critical analysis",
    "persuasive writing",
    "structured planning",
    "factual recall",
    "empathetic tone",
    "concise summarization",
)

ASPECTS: tuple[str, ...] = (
    "depth",
    "clarity",
    "accuracy",
    "creativity",
    "specificity",
    "structure",
    "tone",
    "reasoning",
)

JUDGE_MARKER = "[The Start of Assistant 1's Answer]"


@dataclass
class FaultPlan:
    """Which requests get a fault, and how faults behave."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 0.05
    hang_seconds: float = 5.0
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Deterministic answers
# ---------------------------------------------------------------------------------------------


def _sha_int(text: str) -> int:
    """The sha256 of ``text`` as an integer."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def _content_text(content: Any) -> str:
    """The text of a message's content (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return "" if content is None else str(content)


def _between(text: str, start: str, end: str) -> str:
    """The stripped text between the last ``start`` and ``end`` (or to the end of ``text``):
    the last occurrence, since worked examples in a prompt come before the real question."""
    i = text.rfind(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return (text[i:] if j < 0 else text[i:j]).strip()


def _judge_score(answer: str) -> int:
    """A deterministic 1-10 style score for one answer in a pairwise judgement."""
    if answer.startswith("STRONG:"):
        return 9
    if answer.startswith("TARGET:"):
        return 2 + _sha_int(answer) % 8
    return 5


def _aspect(j: int) -> str:
    """A distinct aspect name for index ``j`` (0-based)."""
    base = ASPECTS[j % len(ASPECTS)]
    rounds = j // len(ASPECTS)
    return base if rounds == 0 else f"{base} {rounds + 1}"


def answer_text(messages: list[dict[str, Any]], model: str) -> str:
    """The deterministic answer to ``messages``, in the format the asking stage parses."""
    contents = [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    full = "\n".join(contents)
    last_user = next(
        (
            _content_text(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )
    h = _sha_int(last_user)

    if JUDGE_MARKER in full:
        a1 = _between(full, JUDGE_MARKER, "[The End of Assistant 1's Answer]")
        a2 = _between(full, "[The Start of Assistant 2's Answer]", "[The End of Assistant 2's Answer]")
        s1, s2 = _judge_score(a1), _judge_score(a2)
        return f"{s1} {s2}\nAssistant 1 and 2 were compared on helpfulness."

    if "instruction analyzer" in full:
        use_case = USE_CASES[h % len(USE_CASES)]
        i = (h // len(USE_CASES)) % len(SKILLS)
        j = (i + 1 + (h // 97) % (len(SKILLS) - 1)) % len(SKILLS)
        return f"Use case: {use_case}\nSkills: {SKILLS[i]}, {SKILLS[j]}"

    if "instruction writer" in full:
        match = re.search(r"[Ww]rite (\d+) instructions", last_user)
        count = int(match.group(1)) if match else 3
        k = h % 100000
        return "\n".join(
            f"{i}. Write a short piece about topic-{k} number {i}." for i in range(1, count + 1)
        )

    if "instruction judge" in full:
        match = re.search(r"generate (\d+) domain", last_user)
        count = int(match.group(1)) if match else 4
        rubrics = [f"{i + 1}. Rubric {i + 1} about {_aspect(i)}." for i in range(count)]
        actions = [f"{i + 1}. Add a constraint about {_aspect(i)}." for i in range(count)]
        return "Rubrics:\n" + "\n".join(rubrics) + "\nActions:\n" + "\n".join(actions)

    if "instruction improver" in full:
        start = full.rfind("Input instruction:")
        rest = full[start + len("Input instruction:") :] if start >= 0 else last_user
        match = re.search(r"^\s*Improved instruction", rest, flags=re.MULTILINE)
        instruction = (rest[: match.start()] if match else rest).strip()
        return f"{instruction} Also, add a constraint #{h % 1000}."

    generic = _generic_answer(full, last_user, h)
    if generic is not None:
        return generic

    if "strong" in model.lower():
        return "STRONG: a detailed answer " + hex(h)[:12]
    return "TARGET: a short answer " + hex(h)[:12]


def _generic_answer(full: str, last_user: str, h: int) -> str | None:
    """Answers for the other pipelines' prompts (specs/self_instruct, evol_instruct, alpagasus,
    critique_rewrite), by their markers; None for a prompt none of them asks."""
    if "Come up with a series of tasks" in full:  # Self-Instruct: new numbered tasks
        match = re.search(r"Write (\d+) new tasks", last_user)
        count = int(match.group(1)) if match else 4
        words = ("summarize", "compare", "plan", "explain", "list", "draft", "classify", "rewrite")
        return "\n".join(f"{i}. {words[(h >> i) % len(words)].capitalize()} item {h % 997 + i} of "
                         f"topic-{(h >> (2 * i)) % 89}." for i in range(1, count + 1))
    if "Prompt Rewriter" in full:  # Evol-Instruct: the given prompt with one more constraint
        given = _between(full, "#Given Prompt#:", "\x00")
        return f"{given} Also respect constraint #{h % 1000}."
    if "Are they equal?" in full:  # Evol-Instruct's elimination check: equal one time in five
        return "Yes" if h % 5 == 0 else "No"
    if "Please rate according to the accuracy" in full:  # AlpaGasus: a 0-5 rating
        return f"{(h % 11) / 2:.1f}\nThe response is rated for accuracy."
    if "Rate the answer for helpfulness" in full:  # critique-rewrite's judge: each rewrite gains 2
        answer = _between(full, "[The Start of the Answer]", "[The End of the Answer]")
        return f"{min(10, 4 + 2 * answer.count('[revised]'))}\nScored on helpfulness."
    if "Answer in two lines:\nInstruction:" in full:  # persona x topic, `fields` parser
        return f"Instruction: Explain topic-{h % 97} to me.\nDifficulty: {'hard' if h % 2 else 'easy'}"
    if "Answer with a JSON object" in full:  # persona x topic, `json` parser
        return json.dumps({"instruction": f"Explain topic-{h % 97} to me.", "difficulty": "hard" if h % 2 else "easy"})
    if "Critique the answer" in full:
        return "It lacks a concrete example and a short summary."
    if "Rewrite the answer so that" in full:
        answer = _between(full, "[The Start of the Answer]", "[The End of the Answer]")
        return f"{answer} [revised]"
    return None


def request_key(body: dict[str, Any]) -> str:
    """The identity of a request for fault draws: sha256 of its canonical JSON fields."""
    fields = {k: body.get(k) for k in ("messages", "model", "temperature", "seed")}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows its :class:`FakeOpenAIServer`."""

    daemon_threads = True
    block_on_close = False  # do not wait for idle keep-alive connections on close
    request_queue_size = 128  # http.server's backlog of 5 drops bursts of connections
    fake: FakeOpenAIServer


class _Handler(BaseHTTPRequestHandler):
    """Serves ``GET /v1/models`` and ``POST /v1/chat/completions``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Nagle adds ~40 ms to every response
    timeout = 60  # idle keep-alive connections are closed after this many seconds
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Send a response with Content-Length; ignore clients that already hung up."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        """Send ``obj`` as a JSON response."""
        self._send(status, json.dumps(obj).encode("utf-8"), headers)

    def do_GET(self) -> None:
        """List the one fake model."""
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self._send_json(*_error(404, f"no route for GET {self.path}", "not_found"))

    def do_POST(self) -> None:
        """Answer a chat completion; counters are settled before the response is sent."""
        fake = self.server.fake
        with fake.lock:
            fake.requests += 1
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            status, payload, headers, completed = self._chat()
        finally:
            with fake.lock:
                fake.in_flight -= 1
        if completed:
            with fake.lock:
                fake.completions += 1
        if isinstance(payload, bytes):
            self._send(status, payload, headers)
        else:
            self._send_json(status, payload, headers)

    def _chat(self) -> tuple[int, Any, dict[str, str] | None, bool]:
        """Parse the body, apply latency and faults; return (status, payload, headers, completed)."""
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            return (*_error(404, f"no route for POST {self.path}", "not_found"), None, False)
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            message = "body must be a JSON object with a 'messages' list"
            return (*_error(400, message, "invalid_request_error"), None, False)

        if fake.latency > 0:
            fake.stopping.wait(fake.latency)

        messages: list[dict[str, Any]] = body["messages"]
        model = str(body.get("model") or "fake")
        prompt = "\n".join(_content_text(m.get("content")) for m in messages if isinstance(m, dict))
        kind = fake.draw_fault(body, prompt)
        if kind is not None:
            with fake.lock:
                fake.faults[kind] += 1

        plan = fake.fault_plan
        if kind == "429":
            error = {"error": {"message": "rate limited", "type": "rate_limit"}}
            return 429, error, {"Retry-After": f"{plan.retry_after:g}"}, False
        if kind == "500":
            return (*_error(500, "injected server error", "server_error"), None, False)
        if kind == "malformed_json":
            return 200, b'{"id": "x", "choices": [', None, False
        if kind == "hang":
            fake.stopping.wait(plan.hang_seconds)

        text = answer_text(messages, model)
        finish_reason = "stop"
        if kind == "empty":
            text = ""
        elif kind == "length":
            text = text[: len(text) // 2]
            finish_reason = "length"

        prompt_tokens = len(prompt.split())
        completion_tokens = len(text.split())
        completion = {
            "id": "chatcmpl-" + request_key(body)[:24],
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return 200, completion, None, kind is None


def _error(status: int, message: str, kind: str) -> tuple[int, dict[str, Any]]:
    """An OpenAI-style error (status, body)."""
    return status, {"error": {"message": message, "type": kind}}


class FakeOpenAIServer:
    """A loopback OpenAI-compatible server with deterministic answers and injected faults."""

    def __init__(
        self,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        always_fail: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency = latency
        self.fault_plan = faults or FaultPlan()
        self.always_fail = always_fail
        self.host = host
        self.port = port
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.requests = 0
        self.completions = 0
        self.faults: collections.Counter[str] = collections.Counter()
        self.max_in_flight = 0
        self.in_flight = 0
        self._attempts: collections.Counter[str] = collections.Counter()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def draw_fault(self, body: dict[str, Any], prompt: str) -> str | None:
        """The fault kind for this request, or None; faults hit only a request's first attempt."""
        if self.always_fail is not None and self.always_fail in prompt:
            return "500"
        plan = self.fault_plan
        if plan.rate <= 0 or not plan.kinds:
            return None
        key = request_key(body)
        with self.lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
        if attempt != 0:
            return None
        rng = random.Random(f"{plan.seed}:{key}")
        if rng.random() < plan.rate:
            return rng.choice(plan.kinds)
        return None

    def start(self) -> Self:
        """Bind and serve in a background daemon thread."""
        if self._httpd is not None:
            return self
        self.stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; sleeping (latency/hang) handlers wake up."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self._httpd is None:
            raise RuntimeError("server is not started")
        return f"http://{self.host}:{self.port}/v1"


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of first attempts that fail")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        latency=args.latency,
        faults=FaultPlan(rate=args.fault_rate, seed=args.seed),
        host=args.host,
        port=args.port,
    ).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""Backends: the one place that talks to a model. Each makes exactly one attempt per call;
retries, limits, the cache and accounting live in `hub.py`.

- `LocalBackend`: the embedded SmolLM2-135M-Instruct, llama-cpp-python in a child process.
- `OpenAICompatibleBackend`: any `/v1/chat/completions` server (OpenAI, vLLM, Ollama,
  llama.cpp, the test server), over aiohttp.
- `DSPyBackend`: every other provider DSPy knows (Gemini, Anthropic, ...), through `dspy.LM`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..errors import ModelCallError
from ..lang.spec import ModelSpec
from ..redact import register_key_env, safe_url
from .local_model import LocalModel, local_model_path

# provider prefix -> (default api_base, api key variable); servers run by the user need no key
OPENAI_COMPATIBLE = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "hosted_vllm": (None, None),
    "ollama": ("http://127.0.0.1:11434/v1", None),
    "llamacpp": ("http://127.0.0.1:8080/v1", None),
}


LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_RESPONSE_BYTES = 64 << 20  # a completion is kilobytes; a body past this is a broken server, not an answer


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        # A server can send a lone surrogate ("\ud800" in its JSON): not text, and it would crash
        # every later write. It becomes U+FFFD here, the one door completions come in through. ASCII text
        # has none (isascii reads a flag; the regex walks every character, most of a completion's cost).
        if not self.text.isascii():
            self.text = LONE_SURROGATE.sub("\ufffd", self.text)
        # Token counts as a server sent them: NaN, negative or text would be written to the manifest and the
        # cache (whose entries then read as damaged) and counted against a budget. Such a count is 0; two
        # counts of 0 or more, the usual, are kept as they are, as `_count` would keep them.
        prompt, completion = self.prompt_tokens, self.completion_tokens
        if not (type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0):
            self.prompt_tokens, self.completion_tokens = _count(prompt), _count(completion)

    def to_entry(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason,
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}}


@dataclass
class CallParams:
    """Decoding parameters of one call, plus the sampling seed derived from its identity."""

    values: dict[str, Any]
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str  # the model as recorded in call identities (no endpoint, no key)
    retry_empty: bool  # an empty completion is a transport fault worth retrying

    async def complete(self, messages: list[dict[str, str]], params: CallParams) -> Completion: ...

    async def aclose(self) -> None: ...


class LocalBackend:
    """The embedded model, in a child process (local_model.py says why). One thread waits on
    it: a llama context answers one call at a time, and the event loop stays free meanwhile."""

    retry_empty = False  # the same call gives the same text: retrying cannot help

    def __init__(self, spec: ModelSpec):
        path = Path(spec.model.split("/", 1)[1]) if spec.model.startswith("local/") else local_model_path()
        self.name = f"local/{path.stem}"
        self.model = LocalModel(path, spec.n_ctx)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codeclm-local")

    def _generate(self, messages: list[dict[str, str]], params: CallParams) -> Completion:
        values = params.values
        answer = self.model.generate({
            "messages": messages, "temperature": values.get("temperature", 0.7), "top_p": values.get("top_p", 0.95),
            "max_tokens": int(values.get("max_tokens", 512)), "seed": params.seed,
        })
        if "error" in answer:  # llama.cpp: the prompt does not fit the context
            raise ModelCallError(f"local model: {answer['error']}")
        return Completion(answer["text"], answer["finish_reason"], answer["prompt_tokens"],
                          answer["completion_tokens"])

    async def complete(self, messages: list[dict[str, str]], params: CallParams) -> Completion:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._generate, messages, params)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
        self.model.close()


class OpenAICompatibleBackend:
    """POST /chat/completions over aiohttp; status codes become retryable or final ModelCallErrors.

    aiohttp rather than httpx: httpcore's pool rescans every connection for every request
    (encode/httpcore#1035), which made the transport cost more CPU than the rest of codeclm
    at 32 calls in flight and collapses above ~50 (benchmarks/RESULTS.md).
    """

    retry_empty = True

    def __init__(self, spec: ModelSpec):
        provider, _, model = spec.model.partition("/")
        default_base, default_key_env = OPENAI_COMPATIBLE[provider]
        self.name = spec.model
        self.model = model
        self.url = (spec.api_base or default_base or "").rstrip("/") + "/chat/completions"
        self.endpoint = safe_url(self.url)  # for messages: never a credential
        # OpenAI's own API wants max_completion_tokens (its reasoning models refuse max_tokens);
        # servers (vLLM, llama.cpp, Ollama) read max_tokens, and llama.cpp ignores the other name.
        self.max_tokens_field = "max_completion_tokens" if provider == "openai" else "max_tokens"
        key_env = spec.api_key_env or default_key_env
        register_key_env(key_env)  # its value is masked in everything codeclm writes
        self.api_key = os.environ.get(key_env) if key_env else None
        # Read once: aiohttp's trust_env would look proxies and netrc up in threads on every request.
        self.proxy = _env_proxy(self.url)
        self._auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._request_headers = self._auth if self.proxy and self._auth else None  # the key per request, if a proxy
        self._sessions: dict[int, Any] = {}  # one per event loop: a session is bound to the loop that made it
        self._target: Any = None  # self.url as a yarl.URL, parsed once (aiohttp would look it up per request)

    def _session(self) -> Any:
        import aiohttp
        import yarl

        loop_id = id(asyncio.get_running_loop())
        if self._target is None:
            try:
                self._target = yarl.URL(self.url)
            except ValueError as exc:  # a host IDNA cannot encode: refused by the spec check, not by a ModelSpec
                raise ModelCallError(f"{self.name}: api_base {self.endpoint} is not a valid URL ({exc})",
                                     retryable=False) from None
        if loop_id not in self._sessions:
            # Every request's headers and proxy, set once on the session: given per request, aiohttp merges
            # them into the session's anew for each call. Not the key where a proxy is used: aiohttp sends a
            # session's headers to the proxy too (in an https tunnel's CONNECT), and the key is the server's.
            headers = {"Content-Type": "application/json", **({} if self.proxy else self._auth)}
            self._sessions[loop_id] = aiohttp.ClientSession(
                # No timer of aiohttp's own: the hub times every attempt out (models/deadlines.py), and a second
                # timer per request cost CPU for nothing.
                headers=headers, timeout=aiohttp.ClientTimeout(), proxy=self.proxy,
                connector=aiohttp.TCPConnector(limit=0),  # the hub's semaphore is the concurrency limit
            )
        return self._sessions[loop_id]

    def _not_found_hint(self, status: int) -> str:
        """For a 404 at a base URL without /v1, where OpenAI-compatible servers (vLLM, llama.cpp) answer."""
        base = self.url.removesuffix("/chat/completions")
        return f" (api_base {base} has no /v1: did you mean {base}/v1?)" if status == 404 and \
            not base.endswith("/v1") else ""

    async def complete(self, messages: list[dict[str, str]], params: CallParams) -> Completion:
        import aiohttp

        body = _request_json(self.request_body(messages, params))
        try:
            async with self._session().post(self._target, data=body, headers=self._request_headers) as response:
                status, raw = response.status, await self._read_capped(response)
                retry_after = _retry_after(response.headers.get("retry-after"))
        except aiohttp.ClientError as exc:
            raise ModelCallError(f"{self.name}: {type(exc).__name__} {exc}", retryable=True) from None
        if status != 200:
            retryable = status in (408, 409, 429) or status >= 500
            raise ModelCallError(f"{self.name}: HTTP {status} {raw.decode('utf-8', errors='replace')[:200]}"
                                 + self._not_found_hint(status), retryable=retryable, retry_after=retry_after)
        try:
            data = _response_json(raw)
            choice, usage = data["choices"][0], data.get("usage") or {}
            return Completion(choice["message"].get("content") or "", choice.get("finish_reason") or "stop",
                              usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            text = raw.decode("utf-8", errors="replace")
            raise ModelCallError(f"{self.name}: malformed response body {text[:120]!r}", retryable=True) from None

    async def _read_capped(self, response: Any) -> bytes:
        """The body, or a failed call once it passes MAX_RESPONSE_BYTES: a server that streams without
        end (a broken proxy, the wrong port) must not fill the memory before the timeout."""
        limit, length = MAX_RESPONSE_BYTES, response.content_length
        if length is not None:
            if length > limit:
                raise ModelCallError(f"{self.name} at {self.endpoint}: response body of {length:,} "
                                     f"bytes, over the {limit >> 20} MiB a completion can need", retryable=False)
            if "Content-Encoding" not in response.headers:
                # aiohttp's parser stops a plain body at its Content-Length: one read is capped already
                # (not a compressed one, which can inflate past it).
                return await response.content.read()
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise ModelCallError(f"{self.name} at {self.endpoint}: response body over the {limit >> 20} MiB "
                                     "a completion can need", retryable=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def request_body(self, messages: list[dict[str, str]], params: CallParams) -> dict[str, Any]:
        values = dict(params.values)
        if "max_tokens" in values:
            values[self.max_tokens_field] = values.pop("max_tokens")
        return {"model": self.model, "messages": messages, **values, "seed": params.seed, **params.extra}

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


class DSPyBackend:
    """Any other provider through dspy.LM (its own retries off: the hub retries)."""

    retry_empty = True

    def __init__(self, spec: ModelSpec):
        import dspy

        self.name = spec.model
        self.endpoint = safe_url(spec.api_base) or f"{spec.model.partition('/')[0]}'s API"
        kwargs: dict[str, Any] = {"cache": False, "num_retries": 0}
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        register_key_env(spec.api_key_env)
        if spec.api_key_env:
            kwargs["api_key"] = os.environ.get(spec.api_key_env)
        self.lm = dspy.LM(spec.model, **kwargs)

    async def complete(self, messages: list[dict[str, str]], params: CallParams) -> Completion:
        from dspy.lm15 import Config, Message, Request

        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
        turns = [Message.user(m["content"]) if m["role"] == "user" else Message.assistant(m["content"])
                 for m in messages if m["role"] != "system"]
        config = Config(temperature=params.values.get("temperature"), max_tokens=params.values.get("max_tokens"),
                        top_p=params.values.get("top_p"), seed=params.seed)
        request = Request(model=self.lm.model, messages=tuple(turns), system=system, config=config)
        try:
            response = await self.lm.acall(request)
        except Exception as exc:  # noqa: BLE001 - any provider's error, classified as retryable or not
            raise _classify_dspy_error(self.name, exc) from None
        usage = response.usage
        return Completion(response.text or "", str(response.finish_reason or "stop"),
                          usage.input_tokens or 0, usage.output_tokens or 0)

    async def aclose(self) -> None:
        return None


def _classify_dspy_error(model: str, exc: Exception) -> ModelCallError:
    """DSPy's LM errors, as the hub needs them: worth retrying or not, and how long to wait.
    A request the provider refuses as such (auth, billing, an invalid request) fails at once;
    transport, rate-limit, timeout, server and unclassified provider errors are retried."""
    from dspy.utils import exceptions as lm_errors

    final = (lm_errors.LMAuthError, lm_errors.LMBillingError, lm_errors.LMInvalidRequestError,
             lm_errors.LMConfigurationError, lm_errors.LMUnsupportedFeatureError)
    retryable = isinstance(exc, lm_errors.LMError) and not isinstance(exc, final)
    first_line = (str(exc).splitlines() or [""])[0]  # DSPy appends a multi-line "To fix" advice
    return ModelCallError(f"{model}: {type(exc).__name__}: {first_line}", retryable=retryable,
                          retry_after=getattr(exc, "retry_after", None))


def build_backend(spec: ModelSpec) -> Backend:
    if spec.is_local:
        return LocalBackend(spec)
    problem = missing_key(spec)
    if problem is not None:
        raise ModelCallError(problem)
    provider = spec.model.partition("/")[0]
    if provider in OPENAI_COMPATIBLE:
        return OpenAICompatibleBackend(spec)
    return DSPyBackend(spec)


# provider prefix -> the variables DSPy reads its key from (any one will do), for providers through dspy.LM
DSPY_KEYS = {"gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "anthropic": ("ANTHROPIC_API_KEY",)}


def missing_key(spec: ModelSpec) -> str | None:
    """Why every call to this model would fail before reaching it: the variable holding its key is
    unset (the one `api_key_env` names, or the provider's own without an `api_base`: OpenAI's,
    Gemini's, Anthropic's); else None."""
    if spec.is_local:
        return None
    provider = spec.model.partition("/")[0]
    defaults = DSPY_KEYS.get(provider) or (OPENAI_COMPATIBLE.get(provider, (None, None))[1],)
    envs = (spec.api_key_env,) if spec.api_key_env else defaults if not spec.api_base else ()
    envs = tuple(env for env in envs if env)
    if envs and not any(os.environ.get(env, "").strip() for env in envs):
        return f"model '{spec.role}' ({spec.model}) needs the {' or '.join(envs)} environment variable"
    return None


def _env_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY names for `url`, unless NO_PROXY exempts its host (as the OpenAI
    SDK and httpx read them)."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _count(value: Any) -> int:
    """A token count: a whole number of at least 0 (12.0 is 12), anything else 0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _request_json(body: dict[str, Any]) -> bytes:
    """The request body as JSON. orjson is a tenth of json's CPU, and a call's body is kilobytes;
    json takes what orjson refuses (a lone surrogate, an integer past 64 bits) as it always did, and
    any body where orjson wrote `null`: it writes NaN and infinities so, where json wrote `NaN`."""
    try:
        encoded = orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body).encode("utf-8")
    return json.dumps(body).encode("utf-8") if b"null" in encoded else encoded


def _response_json(raw: bytes) -> Any:
    """A response body's JSON; what orjson refuses (bytes that are not UTF-8, a lone surrogate
    escape) is read as before, the bad bytes replaced, so a server's slip is not a failed call.
    (orjson reads an integer past 64 bits as a float, json as an int: no answer holds one.)"""
    try:
        return orjson.loads(raw)
    except ValueError:  # orjson.JSONDecodeError
        return json.loads(raw.decode("utf-8", errors="replace"))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None

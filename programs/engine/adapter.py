"""DSPy glue: a Jinja-template adapter, and an engine that routes dspy.LM calls to the hub.

The adapter renders a stage's messages from its template, with the signature's
instructions and the predictor's demos as template variables, so DSPy optimizers that
change those change the prompt. Parsing is the stage's lenient parser.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage
from dspy.utils.exceptions import AdapterParseError

from ..lang.parsers import ParseError
from ..lang.templates import StageTemplate
from ..models.hub import CURRENT_CALL, CallContext, ModelHub
from . import event_loop

# The signature's instructions when neither the template nor the node has any: DSPy needs some,
# and the template renders none (`{% if instructions %}` is false).
NO_INSTRUCTIONS = "(none)"


class TemplateAdapter(dspy.Adapter):
    def __init__(self, template: StageTemplate, parse: Callable[[str], dict[str, Any]]):
        super().__init__()
        self.template = template
        self.parse_text = parse
        self._instructions: tuple[Any, str] = (object(), "")  # (signature docstring, its cleaned instructions)

    def format(self, signature: type[dspy.Signature], demos: list[Any], inputs: dict[str, Any]) -> list[dict]:
        return self.messages(signature, demos, inputs)

    def messages(self, signature: type[dspy.Signature], demos: list[Any], inputs: dict[str, Any]) -> list[dict]:
        """What `format` returns, without the DSPy callbacks DSPy wraps `format` in: the engine's run
        path renders with this, as it calls the hub without dspy.LM (callbacks are for dspy.Predict)."""
        cached = self._instructions  # one tuple, so threads (optimize) read a matching pair
        if cached[0] is not signature.__doc__:  # DSPy cleans the docstring up on each read: once per docstring here
            cached = self._instructions = (signature.__doc__, signature.instructions)
        instructions = cached[1]
        variables = {**inputs, "instructions": "" if instructions == NO_INSTRUCTIONS else instructions,
                     "demos": [demo.toDict() if hasattr(demo, "toDict") else dict(demo) for demo in demos]}
        return self.template.render(variables)

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        try:
            return self.parse_text(completion)
        except ParseError as exc:
            ctx = CURRENT_CALL.get()
            if ctx is not None:
                ctx.parse_error = str(exc)
            raise AdapterParseError(adapter_name="TemplateAdapter", signature=signature, lm_response=completion,
                                    message=str(exc)) from None


def request_messages(request: Any) -> list[dict[str, str]]:
    """A dspy.lm15.Request as plain chat messages."""
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


def request_params(request: Any, extra: dict[str, Any]) -> dict[str, Any]:
    config = request.config
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    if config.top_p is not None:
        params["top_p"] = config.top_p
    return {**params, **extra}


class AsyncHubEngine:
    """dspy.LM async engine: one canonical Request in, one Response out, through the hub."""

    def __init__(self, hub: ModelHub, role: str):
        self.hub, self.role = hub, role

    async def complete(self, request: Any) -> Response:
        ctx = CURRENT_CALL.get() or CallContext(stage="dspy", item="-")
        messages = request_messages(request)
        entry = await self.hub.complete(self.role, messages, request_params(request, self.hub.models[self.role].extra),
                                        ctx)
        usage = entry["usage"]
        return Response(id=None, model=self.hub.models[self.role].model,
                        message=Message.assistant([TextPart(entry["text"])]),
                        finish_reason="length" if entry["finish_reason"] == "length" else "stop",
                        usage=Usage(input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"],
                                    total_tokens=usage["prompt_tokens"] + usage["completion_tokens"]))

    async def stream(self, request: Any):  # DSPy's engine protocol
        from dspy.lm15 import response_to_events

        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        return None


class HubEngine:
    """Synchronous counterpart, for DSPy optimizers and scripts that call modules directly.
    Runs the hub on a private event loop thread, so sync callers share one set of limits."""

    _loop: asyncio.AbstractEventLoop | None = None
    _loop_lock = threading.Lock()

    def __init__(self, hub: ModelHub, role: str):
        self.async_engine = AsyncHubEngine(hub, role)

    @classmethod
    def _background_loop(cls) -> asyncio.AbstractEventLoop:
        with cls._loop_lock:
            if cls._loop is None:
                cls._loop = event_loop.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, daemon=True, name="codeclm-hub").start()
            return cls._loop

    def complete(self, request: Any) -> Response:
        ctx = CURRENT_CALL.get()

        async def call() -> Response:
            CURRENT_CALL.set(ctx)
            return await self.async_engine.complete(request)

        return run_on_hub_loop(call())

    def stream(self, request: Any):  # DSPy's engine protocol
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        return None


def run_on_hub_loop(coroutine: Any) -> Any:
    """Run a coroutine on the loop that serves synchronous DSPy calls (and owns their
    connections), e.g. to close the hub after an optimizer is done."""
    return asyncio.run_coroutine_threadsafe(coroutine, HubEngine._background_loop()).result()


def hub_lm(hub: ModelHub, role: str, decoding: dict[str, Any]) -> dspy.LM:
    """A dspy.LM whose calls go through the hub. DSPy's own cache and retries are off:
    the hub's cache is content-addressed, strict in replay, and shared across runs."""
    return dspy.LM(f"openai/codeclm-{role}", engine=HubEngine(hub, role), async_engine=AsyncHubEngine(hub, role),
                   cache=False, num_retries=0, **decoding)

"""Dollar prices per token, read offline from the price map LiteLLM ships (no import of
litellm itself, which costs seconds, and no network), or from a model role's own `price:`
in the spec (per million tokens), which wins over the map."""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PRICE_FILE = "model_prices_and_context_window_backup.json"
SELF_HOSTED = ("local", "hosted_vllm/", "ollama/", "llamacpp/")  # run on your own machines: $0 per token


@lru_cache(maxsize=1)
def _price_map() -> dict[str, dict]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / PRICE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=256)
def price_per_token(model: str) -> tuple[float, float] | None:
    """(input, output) dollars per token, or None where the price is unknown (local, self-hosted)."""
    if model.startswith(SELF_HOSTED):
        return None
    prices = _price_map()
    for name in (model, model.split("/", 1)[-1]):
        entry = prices.get(name)
        if entry and "input_cost_per_token" in entry:
            return float(entry["input_cost_per_token"]), float(entry.get("output_cost_per_token", 0.0))
    return None


def override_per_token(price: dict[str, Any] | None) -> tuple[float, float] | None:
    """A spec's `price: {input_per_mtok, output_per_mtok}` as dollars per token."""
    if not price:
        return None
    return float(price.get("input_per_mtok", 0.0)) / 1e6, float(price.get("output_per_mtok", 0.0)) / 1e6


def model_price(model: str, price: dict[str, Any] | None = None) -> tuple[tuple[float, float] | None, str]:
    """(input, output) dollars per token and where the figure comes from: the spec's `price:`,
    LiteLLM's cost map, $0 for a self-hosted model (local, hosted_vllm, ollama, llamacpp), or
    (None, "no price") for a hosted model the map does not know."""
    given = override_per_token(price)
    if given is not None:
        return given, "spec price"
    if model.startswith(SELF_HOSTED):
        return (0.0, 0.0), "self-hosted: $0"
    found = price_per_token(model)
    return (found, "LiteLLM cost map") if found is not None else (None, "no price")


def cost_of(model: str, prompt_tokens: int, completion_tokens: int,
            price: dict[str, Any] | None = None) -> float | None:
    found = override_per_token(price) or price_per_token(model)
    if found is None:
        return None
    return prompt_tokens * found[0] + completion_tokens * found[1]

"""Dollar prices per token, read offline from the price map LiteLLM ships (no import of
litellm itself, which costs seconds, and no network)."""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

PRICE_FILE = "model_prices_and_context_window_backup.json"


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
    if model.startswith(("local", "hosted_vllm/", "ollama/", "llamacpp/")):
        return None
    prices = _price_map()
    for name in (model, model.split("/", 1)[-1]):
        entry = prices.get(name)
        if entry and "input_cost_per_token" in entry:
            return float(entry["input_cost_per_token"]), float(entry.get("output_cost_per_token", 0.0))
    return None


def cost_of(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    price = price_per_token(model)
    if price is None:
        return None
    return prompt_tokens * price[0] + completion_tokens * price[1]

"""`run --dry-run`'s cost estimate: per node and model role, the calls (an upper bound from the
graph), how many are cached, input and output tokens and dollars, before anything is spent.

- **Calls**: `lang/bounds.py`'s upper bound (a loop counted at its `max`; it may stop early), and
  the cached ones, found by walking the run against the cache with no model (`engine/dryrun.py`).
  Only the calls not cached are priced: a cached call costs nothing. A walk where the cache answered
  every call and no record failed went the whole way (a finished run): a rerun makes no call,
  whatever the bound says.
- **Input tokens per call**: the mean over the node's real prompts where the walk renders them (the
  walk goes as far as cached calls take it, so a node fed by the seeds always has its real
  prompts), else its template rendered on sample inputs, where an input that reads another model
  node's answer is a text as long as that node's expected output. Counted with tiktoken's
  `cl100k_base` (the tokenizer files LiteLLM ships: no network), plus 4 tokens per message and 3
  per call (OpenAI's chat overhead); without tiktoken, characters / 4.
- **Output tokens per call**: `max_tokens` is the upper bound; the expected figure is the mean of
  the node's cached completions when the walk met some, else `EXPECTED_OUTPUT_SHARE` of
  `max_tokens`.
- **Dollars**: `pricing.py` (a role's `price:`, else LiteLLM's cost map; local and self-hosted
  models cost $0; a hosted model the map does not know has "no price" and adds nothing).
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..lang.expressions import tree_references
from ..lang.nodes import JudgeNode, LLMNode
from ..lang.spec import Spec
from ..models.cache import CallCache, default_cache_dir
from ..models.hub import ModelHub
from ..models.pricing import model_price
from .progress import Progress

EXPECTED_OUTPUT_SHARE = 0.25  # of max_tokens, for a node with no cached completion to measure
PROMPTS_COUNTED = 256  # prompts tokenized per node and role: their mean stands for the rest (big runs walk fast)
TOKENIZER = "cl100k_base"


@lru_cache(maxsize=1)
def _encoding() -> Any:
    """tiktoken's cl100k_base from the files LiteLLM ships (offline), or None."""
    try:
        import tiktoken
    except ImportError:
        return None
    spec = importlib.util.find_spec("litellm")
    folder = os.path.join(os.path.dirname(spec.origin), "litellm_core_utils", "tokenizers") \
        if spec and spec.origin else None
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    try:
        if folder and os.path.isdir(folder):
            os.environ["TIKTOKEN_CACHE_DIR"] = folder
        return tiktoken.get_encoding(TOKENIZER)
    except Exception:  # noqa: BLE001 - no file and no network: fall back to the heuristic
        return None
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


def tokenizer_name() -> str:
    return f"tiktoken {TOKENIZER}" if _encoding() is not None else "characters / 4 (tiktoken unavailable)"


def count_text(text: str) -> int:
    encoding = _encoding()
    if encoding is None:
        return (len(text) + 3) // 4
    return len(encoding.encode(text, disallowed_special=()))


def count_messages(messages: list[dict[str, str]]) -> int:
    return 3 + sum(4 + count_text(m.get("content") or "") for m in messages)


@dataclass
class Row:
    node: str
    role: str
    model: str
    calls: int  # upper bound
    cached: int
    input_per_call: float
    input_from: str  # "N prompts" (rendered in the walk) or "sample inputs"
    output_max_per_call: int
    output_per_call: float  # expected
    output_from: str
    price: tuple[float, float] | None
    price_from: str
    walked_all: bool = False  # nothing stopped the walk: its cached calls are every call a rerun would make

    @property
    def to_call(self) -> int:
        return 0 if self.walked_all else max(0, self.calls - self.cached)

    def figures(self) -> dict[str, Any]:
        n = self.to_call
        tokens_in, out, out_max = round(n * self.input_per_call), round(n * self.output_per_call), \
            n * self.output_max_per_call
        usd = usd_max = None
        if self.price is not None:
            usd = tokens_in * self.price[0] + out * self.price[1]
            usd_max = tokens_in * self.price[0] + out_max * self.price[1]
        return {"node": self.node, "role": self.role, "model": self.model, "calls_upper_bound": self.calls,
                "cached": self.cached, "to_call": n, "input_tokens_per_call": round(self.input_per_call),
                "input_from": self.input_from, "output_tokens_per_call": round(self.output_per_call),
                "output_tokens_per_call_max": self.output_max_per_call, "output_from": self.output_from,
                "input_tokens": tokens_in, "output_tokens": out, "output_tokens_max": out_max,
                "usd": None if usd is None else round(usd, 6),
                "usd_max": None if usd_max is None else round(usd_max, 6),
                "price_from": self.price_from}


@dataclass
class Estimate:
    rows: list[Row] = field(default_factory=list)
    budget: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        rows = [r.figures() for r in self.rows]
        total = {key: sum(r[key] for r in rows) for key in ("calls_upper_bound", "cached", "to_call", "input_tokens",
                                                           "output_tokens", "output_tokens_max")}
        total["usd"] = round(sum(r["usd"] or 0.0 for r in rows), 6)
        total["usd_max"] = round(sum(r["usd_max"] or 0.0 for r in rows), 6)
        total["unpriced"] = sorted({r["model"] for r in rows if r["usd"] is None and r["to_call"]})
        return {"rows": rows, "total": total, "tokenizer": tokenizer_name(),
                "expected_output_share": EXPECTED_OUTPUT_SHARE, **({"budget": self.budget} if self.budget else {})}


class _Watch:
    """What the dry walk sees per (node, role): rendered prompts' tokens and cached completions'."""

    def __init__(self) -> None:
        self.prompts: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.outputs: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.seen: Counter = Counter()  # prompts rendered per (node, role), counted or not
        self.missed = 0  # calls the cache did not hold: the walk stopped there

    def __call__(self, stage: str, role: str, messages: list[dict[str, str]], entry: dict[str, Any] | None) -> None:
        self.seen[(stage, role)] += 1
        self.missed += entry is None
        if len(self.prompts[(stage, role)]) < PROMPTS_COUNTED:
            self.prompts[(stage, role)].append(count_messages(messages))
        if entry is not None:
            self.outputs[(stage, role)].append(int(entry.get("usage", {}).get("completion_tokens", 0)))


def estimate(spec: Spec, options: Any, hub: ModelHub | None = None) -> Estimate:
    """Walk the spec against the cache (no model, nothing written) and estimate what it costs."""
    from .dryrun import dry_run
    from .llm import build_module

    cache = None
    if hub is None:
        mode = "read" if options.cache_mode == "live" else options.cache_mode
        cache = CallCache(options.cache_dir or spec.cache_dir or default_cache_dir(), mode)
        hub = ModelHub(spec.models, cache, concurrency=options.concurrency, dry_run=True)
    watch = _Watch()
    hub.on_lookup = watch
    # its failures tell a walk cut short from one that went the whole way (a missing API key fails before any lookup)
    options.progress = options.progress or Progress(stream=None)
    try:
        counts = dry_run(spec, options, hub)
    finally:
        hub.on_lookup = None
        if cache is not None:
            cache.close()
    walked_all = not watch.missed and not any(options.progress.failed.values())
    nodes = {n.name: n for n in spec.graph.model_nodes()}
    expected: dict[str, float] = {}  # node -> expected output tokens per call (for sample inputs downstream)
    for node in nodes.values():
        model = spec.models[node.model]
        out_max = node.max_tokens or model.max_tokens
        seen = watch.outputs.get((node.name, node.model))
        expected[node.name] = sum(seen) / len(seen) if seen else EXPECTED_OUTPUT_SHARE * out_max
        if node.explode is not None and node.explode.limit is not None:  # one item of the list
            expected[node.name] /= max(1, spec.graph.static(node.explode.limit))
    rows = []
    for name, row in counts.items():
        node_name, role = name.split("/", 1)
        node, model = nodes[node_name], spec.models[role]
        out_max = node.max_tokens or model.max_tokens
        seen, prompts = watch.outputs.get((node_name, role)), watch.prompts.get((node_name, role))
        if prompts:
            input_per_call, input_from = sum(prompts) / len(prompts), f"{watch.seen[(node_name, role)]} prompts"
        else:
            module = build_module(node, spec, hub, role)
            input_per_call, input_from = count_messages(module.render(_sample(node, spec, expected))), "sample inputs"
        price, price_from = model_price(model.model, model.price)
        rows.append(Row(node_name, role, model.model, row["upper_bound"], row["cached"], input_per_call, input_from,
                        out_max, sum(seen) / len(seen) if seen else EXPECTED_OUTPUT_SHARE * out_max,
                        f"{len(seen)} cached" if seen else f"{EXPECTED_OUTPUT_SHARE:.0%} of max", price, price_from,
                        walked_all=walked_all))
    return Estimate(rows, spec.budget.as_dict() if spec.budget else None)


def _filler(tokens: float) -> str:
    return " ".join(["text"] * max(1, round(tokens)))


def _sample(node: LLMNode, spec: Spec, expected: dict[str, float]) -> dict[str, Any]:
    """Sample inputs for a node the walk did not reach: an input that reads a model node's output
    is as long as that node's expected answer; the others take `engine/llm.py`'s sample values."""
    from .samples import placeholder

    values: dict[str, Any] = {}
    for name, expr in node.inputs.items():
        read = [r.root for r in tree_references(expr) if r.root in expected]
        values[name] = _filler(expected[read[0]]) if read else placeholder(name)
    if isinstance(node, JudgeNode):
        low, high = spec.graph.static(node.scale)
        values.update(scale_low=low, scale_high=high)
        for i, expr in enumerate(node.pair or [], start=1):
            read = [r.root for r in tree_references(expr) if r.root in expected]
            values[f"answer_{i}"] = _filler(expected[read[0]]) if read else placeholder(f"answer_{i}")
    return values

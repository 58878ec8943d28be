"""A run's budget (`budget:` in the spec): dollars and/or tokens, in total and per model role.

It caps what one `codeclm run` spends on new model calls: a cached call costs nothing against
it. When a limit is reached no new call starts (the calls already in flight finish and count),
every record still waiting on a call stops there (failures.jsonl says `not called: budget ...`),
the data so far is written, the manifest says `stopped: budget` with the figures, and the CLI
exits 4. Rerunning resumes from the cache: the calls already made are free, so a higher budget
(`--budget-usd`, `--set budget.usd=...`) pays only for the calls still missing.

Dollars come from `pricing.py`: a role's `price:` in the spec, else LiteLLM's cost map; local and
self-hosted models cost $0. A dollar limit over a model with no known price is refused at load.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ModelCallError
from .pricing import model_price

if TYPE_CHECKING:
    from ..lang.spec import Checker, ModelSpec

LIMIT_KEYS = {"usd", "tokens"}
BUDGET_KEYS = LIMIT_KEYS | {"per_model"}
PRICE_KEYS = {"input_per_mtok", "output_per_mtok"}
EXAMPLE = "e.g. budget: {usd: 5, tokens: 2000000, per_model: {strong: {usd: 4}}}"


@dataclass
class Limits:
    usd: float | None = None
    tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("usd", self.usd), ("tokens", self.tokens)) if v is not None}


@dataclass
class Budget:
    total: Limits = field(default_factory=Limits)
    per_model: dict[str, Limits] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.total.as_dict(), **({"per_model": {r: lim.as_dict() for r, lim in self.per_model.items()}}
                                           if self.per_model else {})}


class BudgetReached(ModelCallError):
    """A call not started because the run's budget is spent (the record stops there)."""


# -- checking the spec ----------------------------------------------------------------------------

def _number(checker: Checker, where: tuple, value: Any, integer: bool, what: str) -> float | int | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf  # .nan fails too
    if ok and integer and not float(value).is_integer():
        ok = False
    if not ok:
        kind = "a whole number of tokens" if integer else "a number of dollars"
        checker.error(where, f"{what} must be {kind} above 0, got {value!r}", EXAMPLE)
        return None
    return int(value) if integer else float(value)


def _limits(checker: Checker, where: tuple, raw: dict[str, Any], what: str) -> Limits:
    limits = Limits()
    if "usd" in raw:
        limits.usd = _number(checker, (*where, "usd"), raw["usd"], False, f"{what}.usd")
    if "tokens" in raw:
        limits.tokens = _number(checker, (*where, "tokens"), raw["tokens"], True, f"{what}.tokens")
    return limits


def check_budget(checker: Checker, raw: Any, models: dict[str, ModelSpec]) -> Budget | None:
    """The spec's `budget:`, checked (each problem with its line and a fix), or None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        checker.error(("budget",), f"budget must be a mapping, got {type(raw).__name__}", EXAMPLE)
        return None
    checker.check_keys(("budget",), raw, BUDGET_KEYS, "budget")
    budget = Budget(total=_limits(checker, ("budget",), raw, "budget"))
    per_model = raw.get("per_model") or {}
    if not isinstance(per_model, dict):
        checker.error(("budget", "per_model"), "budget.per_model must map model roles to limits", EXAMPLE)
        per_model = {}
    for role, conf in per_model.items():
        where = ("budget", "per_model", role)
        if role not in models:
            checker.error(where, f"budget.per_model names '{role}', which is not a model role",
                          f"roles: {', '.join(sorted(models))}")
            continue
        if not isinstance(conf, dict):
            checker.error(where, f"budget.per_model.{role} must be a mapping of limits", EXAMPLE)
            continue
        checker.check_keys(where, conf, LIMIT_KEYS, f"budget.per_model.{role}")
        budget.per_model[role] = _limits(checker, where, conf, f"budget.per_model.{role}")
    priced = [role for role in models if budget.total.usd is not None
              or (role in budget.per_model and budget.per_model[role].usd is not None)]
    for role in priced:
        model = models[role]
        if model_price(model.model, model.price)[0] is None:
            where = ("budget", "per_model", role, "usd") if budget.total.usd is None else ("budget", "usd")
            checker.error(where, f"a dollar budget cannot count model '{role}' ({model.model}): LiteLLM's cost map "
                          "has no price for it",
                          f"give it one: models.{role}.price: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}, "
                          "or budget tokens instead")
    if not budget.total.as_dict() and not budget.per_model:
        checker.error(("budget",), "budget sets no limit", EXAMPLE)
    return budget


def check_price(checker: Checker, where: tuple, raw: Any) -> bool:
    """A model role's `price: {input_per_mtok, output_per_mtok}`: dollars per million tokens. False
    when it is broken (the error is recorded)."""
    if raw is None:
        return True
    errors = len(checker.errors)
    hint = "e.g. price: {input_per_mtok: 0.15, output_per_mtok: 0.6} (dollars per million tokens)"
    if not isinstance(raw, dict) or not raw:
        checker.error(where, "price must be a mapping of input_per_mtok and output_per_mtok", hint)
        return False
    checker.check_keys(where, raw, PRICE_KEYS, ".".join(map(str, where)))
    for key in PRICE_KEYS & set(raw):
        value = raw[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:  # .nan
            checker.error((*where, key), f"{key} must be a non-negative number of dollars, got {value!r}", hint)
    return len(checker.errors) == errors


# -- during a run ---------------------------------------------------------------------------------

class BudgetTracker:
    """What this run spent on new calls, against its budget. Thread-safe (the hub counts from
    the event loop, the embedded model from its thread)."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.usd: dict[str, float] = defaultdict(float)
        self.tokens: Counter = Counter()
        self.not_made: Counter = Counter()
        self.nodes_not_started: set[str] = set()  # mixes and dedups the stop kept from drawing on a cut collection
        self.reached: str | None = None  # the first limit reached, in words
        self.reached_limit: str | None = None  # its key path (budget.per_model.strong.usd): what to raise
        self._lock = threading.Lock()

    def refuse(self, role: str) -> str | None:
        """Why a new call may not start (any limit reached stops every model), or None."""
        with self._lock:
            if self.reached is None:
                return None
            self.not_made[role] += 1
            return f"not called: budget reached ({self.reached})"

    def charge(self, role: str, tokens: int, usd: float) -> None:
        with self._lock:
            self.usd[role] += usd
            self.tokens[role] += tokens
            if self.reached is None:
                self.reached_limit, self.reached = self._over()

    def _over(self) -> tuple[str | None, str | None]:
        """The first limit reached: its key path, and it in words; (None, None) while none is."""
        checks = [("budget", self.budget.total, sum(self.usd.values()), sum(self.tokens.values()))]
        checks += [(f"budget.per_model.{role}", lim, self.usd[role], self.tokens[role])
                   for role, lim in self.budget.per_model.items()]
        for name, lim, usd, tokens in checks:
            if lim.usd is not None and usd >= lim.usd:
                return f"{name}.usd", f"{name}.usd ${lim.usd:g}: ${usd:.4f} spent"
            if lim.tokens is not None and tokens >= lim.tokens:
                return f"{name}.tokens", f"{name}.tokens {lim.tokens:,}: {tokens:,} tokens spent"
        return None, None

    def report(self) -> dict[str, Any]:
        """The manifest's `budget`: the limits, what this run spent on new calls, what stopped it."""
        roles = sorted(set(self.usd) | set(self.tokens) | set(self.not_made))
        return {"limits": self.budget.as_dict(),
                "spent": {"usd": round(sum(self.usd.values()), 6), "tokens": sum(self.tokens.values()),
                          "per_model": {r: {"usd": round(self.usd[r], 6), "tokens": self.tokens[r]} for r in roles}},
                "reached": self.reached, "reached_limit": self.reached_limit,
                "calls_not_made": sum(self.not_made.values()), "nodes_not_started": sorted(self.nodes_not_started)}

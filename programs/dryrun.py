"""`run --dry-run`: the calls a spec implies (an upper bound where the loop may stop early)
and how many of them the cache already holds, found by walking the run against the cache
with no model: every path goes as far as cached calls take it."""

from __future__ import annotations

import math
from collections import Counter

from .hub import ModelHub
from .runner import RunOptions, run_spec
from .seeds import read_seeds
from .spec import Spec


def upper_bounds(spec: Spec, seeds: int) -> Counter:
    """Calls per (stage, model role) if no instruction stops early and nothing fails."""
    p = spec.params
    bounds: Counter = Counter()
    entries: dict[str, int] = {"seeds": seeds, "metadata": len(spec.metadata or [])}
    pending = [s for s in spec.stages.values() if s.kind in ("encode", "augment")]
    while pending:
        for stage in [s for s in pending if s.input in entries]:
            pending.remove(stage)
            if stage.kind == "encode":
                bounds[(stage.name, stage.model)] += entries[stage.input]
            entries[stage.name] = p["pool_size"] if stage.kind == "augment" else entries[stage.input]
    refine = spec.refine
    for stage in spec.stages_of("decode"):
        if refine and stage.name != refine.instructions:
            continue
        n_entries = entries.get(stage.input, 0)
        bounds[(stage.name, stage.model)] += n_entries
        if not refine:
            continue
        per_entry = p["instructions_per_entry"] or math.ceil(p["dataset_size"] / max(1, n_entries))
        instructions, iterations = n_entries * per_entry, p["max_iterations"]
        answered = iterations if refine.decide == "contrastive" else 1
        for name in refine.respond:
            bounds[(name, spec.stages[name].model)] += instructions * answered
        if refine.judge:
            orders = 2 if p["both_orders"] else 1
            bounds[(refine.judge, spec.stages[refine.judge].model)] += instructions * iterations * orders
        if refine.improve and iterations > 1:
            improve = spec.stages[refine.improve]
            bounds[(improve.name, improve.model)] += instructions * (iterations - 1)
            rubrics = spec.stages[improve.actions]
            bounds[(rubrics.name, rubrics.model)] += n_entries
    return bounds


def dry_run(spec: Spec, options: RunOptions, hub: ModelHub | None = None) -> dict[str, dict[str, int]]:
    seeds = 0
    if any(s.input == "seeds" for s in spec.stages.values()):
        path = options.seeds or spec.seeds.path
        seeds = len(read_seeds(path, spec.seeds.field, spec.seeds.id_field, options.limit))
    bounds = upper_bounds(spec, seeds)
    options.dry_run = True
    if options.cache_mode == "live":  # a dry run only reads: it works on a read-only cache, writes nothing
        options.cache_mode = "read"
    if hub is not None:
        hub.dry_run = True
    result = run_spec(spec, options, hub)
    rows = {}
    for (stage, role), bound in bounds.items():
        cached = result.calls.get(f"{stage}/{role}", {}).get("cache_hits", 0)
        rows[f"{stage}/{role}"] = {"upper_bound": bound, "cached": cached}
    return rows

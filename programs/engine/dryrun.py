"""`run --dry-run`: the calls a spec implies (upper bounds from the graph) and how many of them the
cache already holds, found by walking the run against the cache with no model: every path goes
as far as cached calls take it, and nothing is written."""

from __future__ import annotations

from ..lang.bounds import upper_bounds
from ..lang.nodes import SourceNode
from ..lang.seeds import stream_records
from ..lang.spec import Spec
from ..models.hub import ModelHub
from .checks import check_source_files
from .nodes import seed_file
from .run import RunOptions, run_spec


def dry_run(spec: Spec, options: RunOptions, hub: ModelHub | None = None) -> dict[str, dict[str, int]]:
    check_source_files(spec, options.seeds)
    sources = {}
    for node in spec.graph.nodes.values():
        if isinstance(node, SourceNode):
            sources[node.name] = len(node.records) if node.records is not None else \
                stream_records(seed_file(spec, node, options.seeds), node.fields, node.id_field, options.limit)[0]
    bounds = upper_bounds(spec.graph, sources)
    options.dry_run = True
    if options.cache_mode == "live":  # a dry run only reads: it works on a read-only cache, writes nothing
        options.cache_mode = "read"
    if hub is not None:
        hub.dry_run = True
    result = run_spec(spec, options, hub)
    return {f"{node}/{role}": {"upper_bound": bound, "cached": _cached(result.calls.get(f"{node}/{role}", {}))}
            for (node, role), bound in bounds.items()}


def _cached(row: dict[str, int]) -> int:
    """The node's calls the cache answered: a call the walk asked twice (shared) is in the bound twice."""
    return row.get("cache_hits", 0) + row.get("shared", 0)

"""The spec language, free of DSPy, the engine and the hub: node types (nodes.py), expressions
(expressions.py), the checked graph (graph.py), named parsers (parsing.py), dry-run bounds (bounds.py),
`graph` (describe.py). The `budget:` and `optimize:` sections are checked by the packages that own them
(models/budget.py, tuning/config.py), which import neither."""

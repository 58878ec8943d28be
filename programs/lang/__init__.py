"""The spec language, free of DSPy and models: node types (nodes.py), expressions (expressions.py),
the checked graph (graph.py), named parsers (parsing.py), dry-run bounds (bounds.py), `graph` (describe.py)."""

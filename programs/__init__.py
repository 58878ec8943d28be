"""codeclm: specs in a small node language, run by a streaming engine over a cached model hub.

Packages and modules, in the order data flows:
  spec        YAML spec -> models, params and the checked graph (errors with file:line and a fix)
  lang/       the language: node types, expressions, graph checks, parsers, dry-run bounds (no DSPy)
  engine/     running a graph: records flowing node to node, the DSPy module of each llm node, outputs
  templates   Jinja (sandboxed) -> chat messages; adapter.py holds the DSPy glue
  hub         every model call: identity, cache, limits, retries, accounting (backends.py talks to models)
  store       the run directory
"""

import os

# DSPy/LiteLLM fetch a price list from the internet on first use unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

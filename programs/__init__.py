"""codeclm: specs in a small node language, run by a streaming engine over a cached model hub.

Packages, in the order data flows (README.md's Layout names every module):
  lang/       the spec language: YAML spec -> checked graph (file:line and a fix), expressions,
              templates, parsers, dry-run bounds; no DSPy
  engine/     running a graph: records flowing node to node, the DSPy module of each llm node, outputs
  models/     every model call: identity, cache, limits, retries, accounting, and the backends
  artifacts/  the run folder and its manifest, reading them back, quality, the report and the export
  tuning/     the `optimize:` section and its metrics (optimize.py runs them)
"""

import os

# DSPy/LiteLLM fetch a price list from the internet on first use unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

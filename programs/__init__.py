"""codeclm's engine: specs, templates, the model hub and cache, DSPy stages and the runner.

Modules, in the order data flows:
  spec        YAML spec -> typed, validated objects
  templates   Jinja (sandboxed) -> chat messages
  seeds       seed files -> seed records
  stages      one DSPy module per kind of model call (adapter.py holds the DSPy glue)
  hub         every model call: identity, cache, limits, retries, accounting (backends.py talks to models)
  method      the pure steps of the paper: augment, action sampling, score averaging, the decision
  runner      executes a spec's graph concurrently and writes the run directory (store.py)
"""

import os

# DSPy/LiteLLM fetch a price list from the internet on first use unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

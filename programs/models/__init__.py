"""The model layer: every call's identity, cache, limits and retries (hub), the backends that talk
to models (the embedded one in a worker process), prices and budgets. Keys are masked by redact.py."""

"""Running a checked graph: `run.run_spec` is the entry point (see run.py's docstring)."""

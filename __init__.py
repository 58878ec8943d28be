"""codeclm: tailored instruction-tuning data from declarative YAML specs.

Installed, this folder is the `codeclm` package (pyproject.toml maps the repository root to it):
`codeclm.cli` is the command line, `codeclm.programs` the engine, and `specs/`, `prompts/` and
`seeds/` ship inside it as package data, for `codeclm init` and `codeclm run demo`.
"""

__version__ = "0.1.0"

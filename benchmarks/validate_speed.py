"""How long `codeclm validate` takes on long specs: a chain of N llm nodes, each running on the records
of the one before and reading its answer. Real specs have tens of nodes; a generated one can have
thousands, and every check that walks a node's lineage per node makes the whole quadratic or worse.

    python benchmarks/validate_speed.py --nodes 300,1200,3000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def chain_spec(nodes: int) -> dict:
    graph: dict = {"seeds": {"type": "source", "records": [{"instruction": "Say hello."}]}}
    previous, field = "seeds", "instruction"
    for index in range(nodes):
        name = f"n{index}"
        graph[name] = {"type": "llm", "model": "strong", "for_each": previous, "template": "respond.jinja",
                       "inputs": {"instruction": f"{previous}.{field}"}, "outputs": ["answer"]}
        previous, field = name, "answer"
    return {"name": "chain", "seed": 0, "prompts": str(REPO / "prompts"), "models": {"strong": {"model": "local"}},
            "nodes": graph, "outputs": {"dataset": {"from": previous, "fields": {"answer": f"{previous}.answer"}}}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="300,1200,3000", help="comma-separated chain lengths")
    args = parser.parse_args(argv)
    from codeclm.programs.lang.spec import load_spec

    print(f"python {sys.version.split()[0]}\n| llm nodes in a chain | validate, CPU s |\n|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for nodes in (int(n) for n in args.nodes.split(",")):
            path = Path(folder) / f"chain{nodes}.yaml"
            path.write_text(yaml.safe_dump(chain_spec(nodes), sort_keys=False))
            started = time.process_time()
            load_spec(path)
            print(f"| {nodes:,} | {time.process_time() - started:.2f} |", flush=True)


if __name__ == "__main__":
    main()

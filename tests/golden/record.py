"""Record the golden outputs of every shipped spec on the fake OpenAI-compatible server.

    PYTHONPATH=. python tests/golden/record.py

For each spec in specs/*.yaml, one run on a fresh cache, every model role pointed at the fake
server (`hosted_vllm/strong`, `hosted_vllm/target`), with the small parameters below so the
files stay a few KB. The artifacts land in tests/golden/SPEC/; for codeclm.yaml the run's calls
are also exported as a cache bundle (tests/golden/codeclm-cache.jsonl.gz), which
tests/test_golden.py replays with no model at all. Re-record only on purpose: the files are
the reference the engine must reproduce byte for byte.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

ARTIFACTS = ("dataset.jsonl", "instructions.jsonl", "metadata.jsonl", "pool.jsonl", "rubrics.jsonl")
# Small parameters per spec (demo.yaml is small already): 20 seeds, a pool of 4, 2 instructions each.
SMALL = ["params.pool_size=4", "params.dataset_size=8"]
PARAMS = {"codeclm": SMALL, "ablation_metadata": SMALL, "ablation_rubrics": SMALL, "no_seed": SMALL, "demo": []}
BUNDLE = HERE / "codeclm-cache.jsonl.gz"


def overrides(spec: str, url: str) -> list[str]:
    """Every role of the spec on the fake server, plus the spec's small parameters."""
    import yaml

    roles = yaml.safe_load((REPO / "specs" / f"{spec}.yaml").read_text())["models"]
    sets = []
    for role in roles:
        sets += [f"models.{role}.model=hosted_vllm/{role}", f"models.{role}.api_base={url}"]
    return sets + PARAMS[spec]


def golden_run(spec: str, out: Path, cache_dir: Path, url: str, mode: str = "live"):
    """Run one shipped spec as the goldens were recorded; returns the run's result."""
    from codeclm.programs.engine.run import RunOptions, run_spec
    from codeclm.programs.lang.spec import load_spec

    sets = overrides(spec, url)
    loaded = load_spec(REPO / "specs" / f"{spec}.yaml", sets)
    return run_spec(loaded, RunOptions(out=out, cache_dir=cache_dir, cache_mode=mode, overrides=sets))


def main() -> None:
    from codeclm.programs.models.bundle import export_bundle
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server, tempfile.TemporaryDirectory() as tmp:
        for spec in PARAMS:
            out, cache = Path(tmp) / spec, Path(tmp) / f"{spec}-cache"
            golden_run(spec, out, cache, server.url)
            target = HERE / spec
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for name in ARTIFACTS:  # no_seed.yaml encodes nothing: it has no metadata.jsonl
                if (out / name).is_file():
                    shutil.copyfile(out / name, target / name)
            if spec == "codeclm":
                export_bundle(out, BUNDLE, cache)
            print(f"{spec}: recorded in {target}")


if __name__ == "__main__":
    main()

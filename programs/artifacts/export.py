"""`codeclm export`: a finished run as a folder that `datasets.load_dataset(DEST)` and the Hugging Face Hub
take as it is.

DEST/
  report.html                           the run's report (codeclm report), when it can be had
  README.md                             the dataset card: a YAML header in the Hub's conventions, then the
                                        method, the models per role, the counts, the quality metrics, how to
                                        train on it and how to replay it
  data/train-00000-of-00001.parquet     what `load_dataset(DEST)` reads (the card's `configs` point at it)
  data/train.jsonl                      the run's dataset.jsonl, byte for byte
  pipeline/spec.yaml                    the spec as it ran (overrides applied), paths made local to pipeline/
  pipeline/prompts/*.jinja              the templates the run used
  pipeline/seeds/FILE                   the seed file it read (a replay renders the seeds again)
  pipeline/programs/*.json              any optimized stage programs
  pipeline/manifest.json                the run's manifest, with no local path (portable_manifest)
  pipeline/calls.jsonl.gz               the cache bundle of every call the run made (when the cache is there)
  .codeclm-export                       what was exported from where, and which files are codeclm's

The run is read generically: dataset.jsonl (chat `messages`, `provenance` and any other columns) and
manifest.json (the resolved spec, templates, calls and counts); the spec's own sections are read only
to make its paths local, and to describe its graph in words.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import CodecError, SpecError
from ..redact import redact_text
from .manifest import template_sha
from .quality import MAX_TOKENS, quality_metrics
from .report import format_flow
from .rundata import (
    FINISHED_RUN_FIX,
    file_sources,
    finished_run_manifest,
    node_flow,
    outcomes,
    source_fields,
    spec_nodes,
    top_failures,
    written_spec,
)
from .store import ARTIFACTS, DAMAGED_RUN, write_atomic

MARKER = ".codeclm-export"
PARQUET = "data/train-00000-of-00001.parquet"
JSONL = "data/train.jsonl"
PIPELINE = "pipeline"
BUNDLE = f"{PIPELINE}/calls.jsonl.gz"
REPORT = "report.html"  # the run's report (`codeclm report`): one self-contained page
INSTALL_HINT = "pip install 'codeclm[export]'"
# The Hub's size buckets (dataset card metadata `size_categories`), by row count.
SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
# License ids the Hub knows (https://huggingface.co/docs/hub/repositories-licenses; huggingface_hub has no list),
# the common ones: another id of that shape is written with a warning, since the Hub may not show it.
HUB_LICENSES = frozenset({  # the Hub's license ids (its API's enum of them, as of 2026)
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other"})
CITATION = """@inproceedings{wang2024codeclm,
  title     = {CodecLM: Aligning Language Models with Tailored Synthetic Data},
  author    = {Wang, Zifeng and Li, Chun-Liang and Perot, Vincent and Le, Long T. and Miao, Jin and
               Zhang, Zizhao and Lee, Chen-Yu and Pfister, Tomas},
  booktitle = {Findings of the Association for Computational Linguistics: NAACL 2024},
  year      = {2024}
}"""


@dataclass
class ExportOptions:
    license: str = "unknown"
    languages: list[str] = field(default_factory=lambda: ["en"])
    pretty_name: str | None = None
    repo: str | None = None  # the Hub repo the card's snippets name (the one --push-to-hub uploads to)
    cache_bundle: bool = True
    cache_dir: Path | None = None


@dataclass
class ExportResult:
    dest: Path
    rows: int
    files: list[str]  # every file written, relative to dest, in the order written
    bundle_calls: int | None  # calls in pipeline/calls.jsonl.gz; None when no bundle was written
    notes: list[str]  # what the user should know: a skipped bundle, a template changed since the run
    metrics: dict[str, Any] | None


def size_category(rows: int) -> str:
    for bound, name in SIZE_BUCKETS:
        if rows < bound:
            return name
    return "n>1B"


def require(module: str, what: str) -> Any:
    """Import an optional dependency of `export`, or a SpecError (exit 2) saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpecError("codeclm export", f"{what} needs the Python package '{module}', which is not installed",
                        hint=INSTALL_HINT) from None


# -- reading the run ----------------------------------------------------------------------------


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's manifest and dataset rows; a SpecError (exit 2) for a folder that is not a finished run."""
    dataset_path = run_dir / ARTIFACTS["dataset"]
    manifest = finished_run_manifest(run_dir, ("spec.resolved",))
    if not dataset_path.is_file():
        raise SpecError(str(run_dir), "the run has no dataset.jsonl", hint=FINISHED_RUN_FIX)
    rows = []
    with dataset_path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                raise SpecError(str(dataset_path), f"not a JSON line ({exc})", line=number,
                                hint=DAMAGED_RUN) from None
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                raise SpecError(str(dataset_path), "a dataset line without a chat `messages` list", line=number,
                                hint="export reads the chat format `codeclm run` writes")
            rows.append(row)
    return manifest, rows


# -- where the export may write -------------------------------------------------------------------


def run_identity(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"run_dir": str(run_dir.resolve()), "spec_name": manifest["spec"].get("name")}


def check_dest(dest: Path, run_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Where an export may write, checked before anything is touched: a new or empty folder, or an earlier export
    of this same run folder. Returns the files that earlier export wrote (codeclm's to replace or remove)."""
    dest = dest.expanduser()
    fix = "choose a new or empty DEST, e.g. exports/NAME"
    if dest.exists() and not dest.is_dir():
        raise SpecError(str(dest), "DEST is a file, not a folder", hint=fix)
    if dest.resolve() == run_dir.resolve():
        raise SpecError(str(dest), "DEST is the run folder itself", hint=fix)
    if not dest.is_dir():
        return []
    try:
        empty = next(dest.iterdir(), None) is None
    except OSError as exc:
        raise SpecError(str(dest), f"cannot read DEST: {exc.strerror}", hint=fix) from None
    if empty:
        return []
    try:
        marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        raise SpecError(str(dest), "DEST is not empty and is not a codeclm export: export never writes into a "
                        "folder of files it did not make", hint=f"{fix}, or empty this folder yourself")
    mine = run_identity(run_dir, manifest)["run_dir"]
    if marker.get("run_dir") != mine:
        raise SpecError(str(dest), f"DEST holds the export of another run ({marker.get('run_dir')}), not of {mine}",
                        hint=f"{fix}; an export folder is rewritten only by an export of the same run folder")
    return [name for name in marker["files"] if isinstance(name, str) and _inside(name)]


def _inside(name: str) -> bool:
    """A relative path that stays inside DEST (a marker edited by hand must not reach out of it)."""
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts and name not in ("", ".")


# -- the pipeline folder: spec, templates, seeds, programs, manifest ---------------------------------------------


def portable_manifest(manifest: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The run's manifest as an export ships it: its spec is the shipped one (paths inside pipeline/), and it
    names no place of the machine that ran it (the cache folder, the spec's and the seeds' folders), which
    `--push-to-hub` published, a home folder's user name with them. Any other absolute path is cut to its name."""
    portable = _names_only({key: value for key, value in manifest.items() if key != "spec"})
    recorded = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
    portable["spec"] = {**recorded, "path": "spec.yaml", "resolved": json.loads(json.dumps(spec)),
                        "resolved_yaml": yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)}
    if isinstance(portable.get("options"), dict):
        portable["options"].update({key: None for key in ("cache_dir", "seeds") if key in portable["options"]})
    return portable


def _names_only(value: Any) -> Any:
    """`value` with each text that is an absolute path cut to its last part (`/home/me/runs/x` -> `x`)."""
    if isinstance(value, dict):
        return {key: _names_only(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_names_only(item) for item in value]
    if isinstance(value, str) and _LOCAL_PATH.match(value):
        return Path(value).name
    return value


_LOCAL_PATH = re.compile(r"(?:/|~/|[A-Za-z]:[\\/])")  # POSIX, home-relative and Windows absolute paths


def _template_files(prompts_dir: Path, names: list[str]) -> dict[str, Path]:
    """The templates the run used and any template they extend, include or import, by name."""
    import jinja2
    from jinja2 import meta

    env = jinja2.Environment()
    found: dict[str, Path] = {}
    queue = list(names)
    while queue:
        name = queue.pop()
        path = prompts_dir / name
        if name in found or not _inside(name) or not path.is_file():
            continue
        found[name] = path
        try:
            parsed = env.parse(path.read_text(encoding="utf-8"))
        except (jinja2.TemplateSyntaxError, UnicodeDecodeError, OSError):
            continue
        queue += [ref for ref in meta.find_referenced_templates(parsed) if isinstance(ref, str)]
    return found


def pipeline_files(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path], list[str]]:
    """The spec to ship (paths rewritten into pipeline/), the files it needs {relative name: source}, and notes.

    Paths in the recorded spec are relative to where the spec was; the shipped spec names copies beside it:
    `prompts: prompts`, a source node's `path: seeds/FILE`, `program: programs/STAGE.json`. `cache:` is dropped
    (a folder of the machine that ran it)."""
    recorded = manifest["spec"]
    spec = written_spec(manifest)  # in its order: a loop body runs in the order it is written
    notes: list[str] = []
    if spec is None:
        spec = json.loads(json.dumps(recorded["resolved"]))
        if "resolved_yaml" in recorded:
            notes.append("the manifest's YAML copy of the spec is damaged: pipeline/spec.yaml is its sorted JSON "
                         "copy, where a loop body's nodes are in A-Z order, not the order the run ran them in")
    spec_dir = Path(str(recorded.get("path", "."))).parent
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    files: dict[str, Path] = {}

    def local(value: Any) -> Path:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else (spec_dir / path).resolve()  # as the spec loader resolves it

    prompts_dir = local(spec.get("prompts", "../prompts"))
    spec["prompts"] = "prompts"
    spec.pop("cache", None)
    templates = manifest.get("templates") if isinstance(manifest.get("templates"), dict) else {}
    for name, path in sorted(_template_files(prompts_dir, list(templates)).items()):
        files[f"prompts/{name}"] = path
        if name in templates and template_sha(path) != templates[name]:
            notes.append(f"template {name} changed since the run: the copy is the current file, so a replay "
                         "of it may miss the cache")
    if not files and not spec.get("models"):  # a spec that calls no model needs no prompts folder, nor ships one
        del spec["prompts"]
    missing = [name for name in templates if f"prompts/{name}" not in files]
    if missing:
        notes.append(f"templates not found in {prompts_dir}: {', '.join(missing)} (not shipped)")

    for source_node in file_sources(spec):  # seed files: each source node's `path` (--seeds replaces it)
        source = Path(options["seeds"]) if options.get("seeds") else local(source_node["path"])
        if source.is_file():
            source_node["path"] = f"seeds/{source.name}"
            files[f"seeds/{source.name}"] = source
            if (line := _credential_line(source)) is not None:
                notes.append(f"seed file {source}:{line} holds something shaped like a credential; it is shipped "
                             "as is, since a replay renders the seeds byte for byte: check it before sharing")
        else:
            notes.append(f"seed file {source} not found (not shipped): a replay needs it")
    for name, conf in spec_nodes(spec):  # optimized programs (`program:`), loop bodies included
        if isinstance(conf.get("program"), str):
            source = local(conf["program"])
            if source.is_file():
                conf["program"] = f"programs/{re.sub(r'[^A-Za-z0-9_.-]', '_', str(name))}.json"
                files[conf["program"]] = source
            else:
                notes.append(f"optimized program {source} not found (not shipped)")
    return spec, files, notes


def _credential_line(path: Path) -> int | None:
    """The first line of a text file that redaction would change (a key-shaped value), if any."""
    from ..redact import redact_text

    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if redact_text(line) != line:
                    return number
    except OSError:
        return None
    return None


# -- the card -------------------------------------------------------------------------------------------


def quality(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The data-quality metrics of the run's files (quality.py), and a note if they could not be computed."""
    try:
        metrics = quality_metrics(run_dir)
    except Exception as exc:  # noqa: BLE001 - metrics are a courtesy of the card: never a reason not to ship data
        return None, f"quality metrics could not be computed ({type(exc).__name__}: {exc}); card made without them"
    return (metrics if isinstance(metrics, dict) and metrics else None), None


def _flat(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _flat(child, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _figure(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if not value:
            return "none"
        shown = ", ".join(_figure(v) for v in value[:5])
        return f"{shown}, ... ({len(value)})" if len(value) > 5 else shown
    return str(value).replace("|", "\\|").replace("\n", " ")


def _graph(spec: dict[str, Any]) -> list[str]:
    """The spec's graph in words: each stage (or node) with its kind, model role, template and inputs."""
    lines = []
    for section in ("stages", "nodes"):
        parts = spec.get(section)
        for name, conf in (parts.items() if isinstance(parts, dict) else ()):
            if not isinstance(conf, dict):
                continue
            body = conf.get("body") if isinstance(conf.get("body"), dict) else None
            calls = f"model role `{conf['model']}`" if conf.get("model") else \
                None if body else "no model call"  # a loop's or rounds' calls are its body's
            bits = [f"`{conf.get('kind') or conf.get('type')}`" if conf.get("kind") or conf.get("type") else None,
                    calls, f"template `{conf['template']}`" if conf.get("template") else None,
                    "body: " + ", ".join(f"{b} (`{c.get('type')}`" + (f", model role `{c['model']}`"
                                                                     if c.get("model") else "") + ")"
                                         for b, c in body.items() if isinstance(c, dict)) if body else None]
            inputs = [f"{key}: {_figure(conf[key])}" for key in ("input", "inputs", "answers", "actions")
                      if conf.get(key)]
            lines.append(f"- **{name}**: " + ", ".join(b for b in bits if b) + (f" ({'; '.join(inputs)})"
                                                                                 if inputs else ""))
    refine = spec.get("refine")
    if isinstance(refine, dict):
        params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
        lines.append(f"- **refine loop**, per instruction from `{refine.get('instructions')}`: respond with "
                     f"{_figure(refine.get('respond'))}, judge with `{refine.get('judge')}`, decide "
                     f"`{refine.get('decide', 'contrastive')}` (threshold {params.get('threshold', 3)}), improve "
                     f"with `{refine.get('improve')}` for at most {params.get('max_iterations', 4)} iterations")
    return lines


def _models(spec: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Models per role, with the stages that called each: model names and decoding parameters only (never an
    endpoint, a key variable or `extra`)."""
    calls = manifest.get("calls") if isinstance(manifest.get("calls"), dict) else {}
    models = {role: conf if isinstance(conf, dict) else {"model": conf}
              for role, conf in (spec.get("models") if isinstance(spec.get("models"), dict) else {}).items()}
    nodes = dict(spec_nodes(spec))
    stages_of: dict[str, list[str]] = {}
    for name, row in calls.items():
        stage, _, role = str(name).rpartition("/")
        if stage and isinstance(row, dict):
            used = sum(row.get(key) or 0 for key in ("calls", "cache_hits"))  # a resumed run's calls are hits
            own = _own_decoding(nodes.get(stage, {}), models.get(role, {}))
            stages_of.setdefault(role, []).append(f"{stage} ({used}{'; ' + own if own else ''})")
    lines = ["| role | model | decoding | used by (calls, live or cached) |", "| --- | --- | --- | --- |"]
    for role, conf in models.items():
        decoding = ", ".join(f"{key} {conf[key]}" for key in ("temperature", "top_p", "max_tokens")
                             if conf.get(key) is not None) or "defaults"
        used = ", ".join(sorted(stages_of.get(role, []))) or "-"
        lines.append(f"| {role} | `{_figure(conf.get('model'))}` | {decoding} | {used} |")
    return lines


def _own_decoding(node: dict[str, Any], role: dict[str, Any]) -> str:
    """A node's own temperature and max_tokens where they differ from its role's: the calls ran with them."""
    return ", ".join(f"{key} {node[key]}" for key in ("temperature", "max_tokens")
                     if node.get(key) is not None and node[key] != role.get(key))


def _counts(pipeline_dir: Path, manifest: dict[str, Any], spec: dict[str, Any], rows: int) -> list[str]:
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    status = counts.get("instructions") if isinstance(counts.get("instructions"), dict) else {}
    seeds = _seed_count(pipeline_dir, manifest, spec)
    lines = ["| | count |", "| --- | --- |"]
    if seeds is not None:
        lines.append(f"| seeds | {seeds} |")
    counted = outcomes(manifest, {k: v for k, v in status.items() if isinstance(v, int)})
    if status:  # every record the outcomes count, a filter's removed ones too: the dataset node's alone were fewer
        lines.append(f"| records (all outcomes below) | {sum(counted.values())} |")
    lines.append(f"| kept (rows here) | {rows} |")
    for name, count in counted.items():
        if name != "kept":
            lines.append(f"| {name} | {count} |")
    lines += _cost(manifest)
    flow = format_flow(node_flow(manifest))
    if flow:  # what the loops' switches decided (an elimination check too) and what the filters removed
        lines += ["", "Loops and filters:", ""]
        lines += [f"  - {line.strip()}" if line.startswith(" ") else f"- {line}" for line in flow]
    reasons, rest = top_failures(manifest, 5)
    if reasons:
        lines += ["", "Most common failures:", ""]
        lines += [f"- {count} x {_figure(reason)}" for reason, count in reasons]
        lines += [f"- {rest} x other causes"] if rest else []
    return lines


def _number(table: dict[str, Any], key: str) -> float:
    """A figure of the manifest, 0 where it is missing or not a number (an edited manifest)."""
    value = table.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _cost(manifest: dict[str, Any]) -> list[str]:
    """What the data took to make. The manifest is the last run's into the folder, and a rerun from the cache
    (or a resumed run) counts what it found there as cache hits, not calls: the calls behind the data are
    both. A call the run asked again (`shared`: duplicate seeds, a round's repeated prompt) is one of them,
    not one more. Tokens and wall time are this run's alone, and say so when some calls came from the cache."""
    totals = manifest.get("totals") if isinstance(manifest.get("totals"), dict) else {}
    made, cached = int(_number(totals, "calls")), int(_number(totals, "cache_hits"))
    shared = int(_number(totals, "shared"))  # 0 in a manifest older than the count
    from_cache = "every call" if not made else f"{cached} call{'' if cached == 1 else 's'}"
    lines = []
    if totals:
        notes = [f"{from_cache} served from the cache in this run"] if cached else []
        notes += [f"asked {made + cached + shared} times: identical calls were answered once"] if shared else []
        lines.append(f"| model calls behind the data | {made + cached}"
                     + (f" ({'; '.join(notes)})" if notes else "") + " |")
        tokens = f"{int(_number(totals, 'prompt_tokens'))} / {int(_number(totals, 'completion_tokens'))}"
        if not cached:
            lines.append(f"| tokens in / out | {tokens} |")
        elif made:
            lines.append(f"| tokens in / out, of the {made} calls made in this run | {tokens} |")
        else:
            lines.append("| tokens in / out | not recorded: this run took every call from the cache |")
        spent, saved = _number(totals, "cost_usd"), _number(totals, "saved_usd")  # saved: the cached calls, priced
        if spent or saved:
            lines.append(f"| dollars the calls cost | {spent + saved:.4f}"
                         + (f" ({saved:.4f} of it saved by the cache in this run)" if saved else "") + " |")
    wall = manifest.get("wall_seconds")
    if isinstance(wall, (int, float)) and not isinstance(wall, bool):
        lines.append(f"| wall time | {wall:.1f} s |" if not cached else
                     f"| wall time of this run | {wall:.1f} s (not what the data took: {from_cache} came from "
                     "the cache) |")
    return lines


def _a_role(spec: dict[str, Any]) -> str:
    """A role of the spec's own for the card's rerun example (the first of its `models:`)."""
    models = spec.get("models") if isinstance(spec.get("models"), dict) else {}
    return str(next(iter(models), "ROLE"))


def _seed_count(pipeline_dir: Path, manifest: dict[str, Any], spec: dict[str, Any]) -> int | None:
    """The seeds the run read: the shipped seed files (the spec's file sources), read as a run reads them."""
    sources = file_sources(spec)
    if not sources:
        return None
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    limit = options.get("limit") if isinstance(options.get("limit"), int) else None
    try:
        from ..lang.seeds import read_records

        return sum(len(read_records(pipeline_dir / s["path"], source_fields(s), s.get("id_field", "id"), limit))
                   for s in sources)
    except (CodecError, OSError, ValueError):
        return None


def card_header(name: str, rows: int, options: ExportOptions) -> dict[str, Any]:
    return {
        "license": options.license,
        "language": list(options.languages),
        "tags": ["synthetic", "codeclm"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(rows)],
        "pretty_name": options.pretty_name or name,
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": PARQUET}]}],
    }


def render_card(run_dir: Path, pipeline_dir: Path, manifest: dict[str, Any], spec: dict[str, Any],
                rows: list[dict[str, Any]], columns: dict[str, str], options: ExportOptions,
                metrics: dict[str, Any] | None, bundle_calls: int | None, has_report: bool = False) -> str:
    """The dataset card (README.md): the Hub's YAML header, then its sections in order."""
    name = str(manifest["spec"].get("name") or run_dir.name)
    header = card_header(name, len(rows), options)
    codeclm_graph = any(c.get("template") in ("encode.jinja", "decode.jinja") for _, c in spec_nodes(spec))
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {header['pretty_name']}", "",
             *_card_structure(name, spec, len(rows), columns, has_report),
             *_card_how_made(spec, manifest, pipeline_dir, len(rows)),
             *_card_quality(metrics),
             *_card_use(name, options.repo or f"path/to/{name}"),
             *_card_replay(manifest, spec, bundle_calls, _changed_templates(manifest, pipeline_dir)),
             "## Limitations", "",
             "The rows were written or chosen by language models and were not reviewed by people: they can be "
             "wrong, biased or unsafe, and so can any model that judged them. Check the terms of use of the models "
             "above (and of any file the spec read) before training on or sharing this data; the `license` above "
             "was chosen by whoever exported it.", ""]
    if codeclm_graph:
        lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _card_structure(name: str, spec: dict[str, Any], rows: int, columns: dict[str, str],
                    has_report: bool) -> list[str]:
    return [
        f"Synthetic instruction-tuning data: {rows} chat conversation{'' if rows == 1 else 's'} (`messages`) made by "
        f"codeclm from the spec `{name}`, each row with its `provenance`: where it "
        "came from and the model calls behind it.", "",
        "## Dataset structure", "", "One split, `train`. Columns:", "",
        *[f"- `{column}`: {kind}" for column, kind in columns.items()], "",
        f"Files: `{PARQUET}` (what `load_dataset` reads), `{JSONL}` (the run's `dataset.jsonl` byte for byte, "
        "`provenance` as a nested object), "
        + (f"`{REPORT}` (the run's report: its funnel, every record's history, and what the run has data for; "
           "open it in a browser, it needs no network), " if has_report else "")
        + f"`{PIPELINE}/` (everything needed to rerun or replay the run).", ""]


def _card_how_made(spec: dict[str, Any], manifest: dict[str, Any], pipeline_dir: Path, rows: int) -> list[str]:
    """The method in the spec's own words (its `description:`; the card never guesses one from the
    graph: an ablation of CodecLM is not CodecLM), then the graph, the models and the counts."""
    description = spec.get("description")
    lines = ["## How it was made", ""]
    if isinstance(description, str) and description.strip():
        lines += [description.strip(), ""]
    models = [*_models(spec, manifest), "", "Keys are not part of it: codeclm never writes one to the spec or the "
              "manifest. The models' endpoints (`api_base`) are, in pipeline/spec.yaml and pipeline/manifest.json."] \
        if spec.get("models") else ["None: no node of the spec calls a model; the rows come from its sources."]
    return lines + ["The spec's graph:", "", *_graph(spec), "", "## Models", "", *models,
                    "", "## Counts", "", *_counts(pipeline_dir, manifest, spec, rows), ""]


def _card_quality(metrics: dict[str, Any] | None) -> list[str]:
    if not metrics:
        return []
    shown = {key: value for key, value in metrics.items() if key != "notes"}
    if isinstance(shown.get("judge"), dict) and not shown["judge"].get("judged_both_orders"):
        del shown["judge"]  # no pair was judged in both orders: every consistency figure is empty
    rows = [(key, value) for key, value in _flat(shown) if value is not None]  # as the report: no row without data
    notes = metrics.get("notes") if isinstance(metrics.get("notes"), list) else []
    return ["## Quality", "", "Measured by `codeclm` on the kept rows (and their seeds): diversity (distinct-n, "
            "pairwise ROUGE-L), near duplicates, closeness to the seeds, metadata coverage and the judge's "
            f"consistency, where the run has what each needs. ROUGE-L reads the first {MAX_TOKENS} tokens of each "
            "text.", "",
            "| metric | value |", "| --- | --- |",
            *[f"| {key} | {_figure(value)} |" for key, value in rows], "",
            *[f"- {_figure(note)}" for note in notes], *([""] if notes else [])]


def _card_use(name: str, where: str) -> list[str]:
    """Loading it with 🤗 Datasets, and training on it with TRL, axolotl and LLaMA-Factory."""
    return ["## Use it", "", "With 🤗 Datasets:", "", "```python", "from datasets import load_dataset", "",
            f'ds = load_dataset("{where}", split="train")',
            'print(ds[0]["messages"])',
            "import json; provenance = json.loads(ds[0][\"provenance\"])  # where the row came from", "```", "",
            "TRL (`SFTTrainer` reads the `messages` column as conversations):", "", "```python",
            "from trl import SFTConfig, SFTTrainer", "",
            'trainer = SFTTrainer(model="YOUR/BASE-MODEL", train_dataset=ds.select_columns(["messages"]),',
            '                     args=SFTConfig(output_dir="sft-out"))', "trainer.train()", "```", "",
            "axolotl:", "", "```yaml", "datasets:", f"  - path: {where}", "    type: chat_template",
            "    field_messages: messages", "```", "",
            "LLaMA-Factory (an entry in your `dataset_info.json`, then `dataset: " + name + "`):", "", "```json",
            json.dumps({name: {"hf_hub_url": where, "formatting": "sharegpt", "columns": {"messages": "messages"},
                               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                        "assistant_tag": "assistant", "system_tag": "system"}}}, indent=2),
            "```", "",
            f"For a local copy, LLaMA-Factory can also read `{JSONL}` (`\"file_name\": \"PATH/{JSONL}\"`).", ""]


def _changed_templates(manifest: dict[str, Any], pipeline_dir: Path) -> list[str]:
    """The shipped templates whose text is not what the run rendered (edited since): its manifest's hashes."""
    recorded = manifest.get("templates") if isinstance(manifest.get("templates"), dict) else {}
    return [name for name, sha in sorted(recorded.items())
            if (pipeline_dir / "prompts" / name).is_file() and template_sha(pipeline_dir / "prompts" / name) != sha]


def _card_replay(manifest: dict[str, Any], spec: dict[str, Any], bundle_calls: int | None,
                 changed: list[str]) -> list[str]:
    """What pipeline/ holds, the commands that replay and rerun the run, and what made it; a caution where
    a shipped template was edited since the run (its replay then misses the cache where it renders anew)."""
    limit = (manifest.get("options") or {}).get("limit")
    limit_flag = f" --limit {limit}" if isinstance(limit, int) else ""
    versions = manifest.get("versions") if isinstance(manifest.get("versions"), dict) else {}
    lines = ["## Replay or rerun it", "",
             f"`{PIPELINE}/` holds the spec as it ran (`spec.yaml`, overrides applied, paths local to the folder), "
             "the templates it rendered (`prompts/`), the seeds, and the run's `manifest.json` (template hashes, "
             "package versions, the hash of codeclm's code, the calls, tokens and dollars per node and model, "
             "the counts, and the run's wall time).", ""]
    if bundle_calls:
        lines += [f"`{BUNDLE}` holds the {bundle_calls} model completions the run used, so the run replays "
                  "bit for bit with no model and no key:", "", "```bash",
                  f"codeclm cache import {BUNDLE}",
                  f"codeclm run {PIPELINE}/spec.yaml --replay --out replayed{limit_flag}",
                  f"cmp replayed/dataset.jsonl {JSONL}   # identical", "```", ""]
    else:
        lines += ["No cache bundle was shipped, so a replay needs the run's cache; with it:", "", "```bash",
                  f"codeclm run {PIPELINE}/spec.yaml --replay --out replayed{limit_flag}", "```", ""]
    if changed:
        lines += [f"**Caution:** {', '.join(f'`{name}`' for name in changed)} changed after the run, and "
                  f"`{PIPELINE}/prompts/` holds the changed file{'s' if len(changed) > 1 else ''}: a replay makes "
                  "the calls they render differently, which the bundle does not hold (exit 3).", ""]
    return lines + [
        "Rerun it on your own models (only the calls whose model or prompt changed are made again):", "",
        "```bash", f"codeclm run {PIPELINE}/spec.yaml --out rerun{limit_flag} \\",
        f"    --set models.{_a_role(spec)}.model=openai/gpt-4o-mini   # any role, any provider codeclm supports",
        "```",
        "", f"Made with codeclm {versions.get('codeclm') or '?'} (code sha256 "
        f"`{str(manifest.get('code_sha256', '?'))[:16]}`), DSPy {versions.get('dspy') or '?'}, Python "
        f"{versions.get('python') or '?'}. A replay is bit for bit with the same codeclm code, since answers "
        "are parsed after the cache.", ""]


# -- data files -----------------------------------------------------------------------------------------------


def data_table(rows: list[dict[str, Any]]) -> tuple[Any, dict[str, str]]:
    """The rows as an Arrow table: `messages` as a list of {role, content} structs, `provenance` (and any other
    non-text column) as JSON text. JSON text keeps one stable schema whatever a spec records (per-stage answer
    names, free-form metadata, empty lists, scores that are null for some rows), which nested structs would
    not: a struct's type changes from run to run and breaks concatenating or loading two exports together."""
    pa = require("pyarrow", "codeclm export")
    names: list[str] = ["messages"]
    for row in rows:
        names += [key for key in row if key not in names]
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    plain = all(isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["role"], str)
                and isinstance(m["content"], str) for row in rows for m in row["messages"])
    columns, kinds = {}, {}
    if plain:
        columns["messages"] = pa.array([row["messages"] for row in rows], type=pa.list_(message))
        kinds["messages"] = "the conversation, a list of `{role, content}` (`user`, `assistant`, maybe `system`)"
    else:
        columns["messages"] = pa.array([json.dumps(row["messages"], ensure_ascii=False) for row in rows],
                                       type=pa.string())
        kinds["messages"] = "the conversation as JSON text (its messages carry more than role and content)"
    for name in names[1:]:
        values = [row.get(name) for row in rows]
        if all(v is None or isinstance(v, str) for v in values):
            columns[name], kinds[name] = pa.array(values, type=pa.string()), "text"
        else:
            columns[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True)
                                      for v in values], type=pa.string())
            kinds[name] = "JSON text (`json.loads` it)"
    if "provenance" in kinds:
        keys: dict[str, None] = {}
        for row in rows:
            if isinstance(row.get("provenance"), dict):
                keys.update(dict.fromkeys(row["provenance"]))
        kinds["provenance"] = "JSON text (`json.loads` it): where the row came from" + (
            f"; its keys: {', '.join(f'`{key}`' for key in keys)}" if keys else "") + (
            " (`calls` lists every model call behind the row: stage, model, cache key)" if "calls" in keys else "")
    return pa.table(columns), kinds


def write_parquet(table: Any, path: Path) -> None:
    pq = require("pyarrow.parquet", "codeclm export")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- the export -------------------------------------------------------------------------------------------------


def export_run(run_dir: Path, dest: Path, options: ExportOptions) -> ExportResult:
    """Write DEST from a finished run. Checks everything first (the run, DEST, the dependencies); writes each file
    atomically; removes only files an earlier export of this run wrote and this one does not."""
    require("pyarrow", "codeclm export")
    if not LICENSE_ID.match(options.license):
        raise SpecError("--license", f"not a license id: {options.license!r}",
                        hint="a Hub license id such as apache-2.0, mit, cc-by-4.0, odc-by, other or unknown")
    notes = [note] if (note := license_note(options.license)) else []
    for language in options.languages:
        if not re.fullmatch(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*", language):
            raise SpecError("--language", f"not a language code: {language!r}", hint="an ISO 639 code, e.g. en, fr")
    dest = dest.expanduser()
    manifest, rows = read_run(run_dir)
    if not rows:
        raise CodecError(f"{run_dir}: the run kept no rows, so there is nothing to export; `codeclm inspect "
                         f"{run_dir}` says what was dropped or failed")
    earlier = check_dest(dest, run_dir, manifest)
    spec, sources, more = pipeline_files(manifest)
    notes += more
    table, columns = data_table(rows)
    metrics, note = quality(run_dir)
    if note:
        notes.append(note)
    if manifest.get("stopped") == "budget":  # budget.py: the data so far, not what the spec makes
        notes.append(f"the run was stopped by its budget ({(manifest.get('budget') or {}).get('reached')}): "
                     "this export holds the data so far; rerun with a higher budget, then export again")

    clashes = [name for name in [PARQUET, JSONL, "README.md", REPORT, f"{PIPELINE}/spec.yaml",
                                 f"{PIPELINE}/manifest.json",
                                 *(f"{PIPELINE}/{n}" for n in sources),
                                 *([BUNDLE] if options.cache_bundle else [])]
               if (dest / name).exists() and name not in earlier]
    if clashes:  # a user's file where an earlier export of this run wrote none: never overwritten
        raise SpecError(str(dest / clashes[0]), "a file export would write is already there and was not written "
                        "by codeclm export", hint="move it out of DEST, or export to a new folder")
    try:
        return _write(run_dir, dest, options, manifest, rows, earlier, spec, sources, notes, table, columns, metrics)
    except OSError as exc:
        raise SpecError(str(getattr(exc, "filename", None) or dest), f"cannot write the export: {exc.strerror or exc}",
                        hint="free some space or choose a writable DEST; rerun the same command to finish") from None


def license_note(license_id: str) -> str | None:
    """A warning for a license id the Hub may not know (HUB_LICENSES), with the closest it knows, if any."""
    if license_id in HUB_LICENSES:
        return None
    closest = difflib.get_close_matches(license_id, sorted(HUB_LICENSES), n=1)
    return (f"--license {license_id} is not one of the Hub's license ids, so it may not show it"
            + (f" (did you mean {closest[0]}? check: a close name can be another license)" if closest else "")
            + "; for a license of your own, pass "
            "`other` and add license_name and license_link to the card's header "
            "(https://huggingface.co/docs/hub/repositories-licenses)")


def _write(run_dir: Path, dest: Path, options: ExportOptions, manifest: dict[str, Any], rows: list[dict[str, Any]],
           earlier: list[str], spec: dict[str, Any], sources: dict[str, Path], notes: list[str], table: Any,
           columns: dict[str, str], metrics: dict[str, Any] | None) -> ExportResult:
    written: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    planned = sorted(set(earlier) | {PARQUET, JSONL, "README.md", REPORT, f"{PIPELINE}/spec.yaml",
                                      f"{PIPELINE}/manifest.json", BUNDLE, *(f"{PIPELINE}/{n}" for n in sources)})
    _mark(dest, run_dir, manifest, planned, complete=False)  # claimed first: a crash leaves a folder export owns

    def put(name: str, text: str | None = None, source: Path | None = None) -> None:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        else:
            write_atomic(target, text or "")
        written.append(name)

    (dest / "data").mkdir(exist_ok=True)
    write_parquet(table, dest / PARQUET)
    written.append(PARQUET)
    put(JSONL, source=run_dir / ARTIFACTS["dataset"])
    for name, source in sources.items():
        put(f"{PIPELINE}/{name}", source=source)
    put(f"{PIPELINE}/spec.yaml", redact_text(
        f"# The spec of the run {manifest['spec'].get('name')!r} as it ran (overrides applied), exported by codeclm.\n"
        "# Paths are relative to this file. Rerun: codeclm run pipeline/spec.yaml; replay: see ../README.md\n"
        + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)))
    put(f"{PIPELINE}/manifest.json", json.dumps(portable_manifest(manifest, spec), indent=2, ensure_ascii=False,
                                                sort_keys=True) + "\n")
    report = _report(run_dir, dest)
    if report is None:
        written.append(REPORT)
    else:
        notes.append(report)

    bundle_calls = None
    if options.cache_bundle:
        bundle_calls, note = _bundle(run_dir, dest, manifest, options.cache_dir)
        if note:
            notes.append(note)
        if bundle_calls:
            written.append(BUNDLE)
    put("README.md", redact_text(render_card(run_dir, dest / PIPELINE, manifest, spec, rows, columns, options,
                                             metrics, bundle_calls, REPORT in written)))
    for stale in sorted(set(earlier) - set(written)):  # codeclm's own files from the earlier export, not rewritten
        (dest / stale).unlink(missing_ok=True)
    _mark(dest, run_dir, manifest, sorted(written), complete=True)
    return ExportResult(dest=dest, rows=len(rows), files=written, bundle_calls=bundle_calls, notes=notes,
                        metrics=metrics)


def _report(run_dir: Path, dest: Path) -> str | None:
    """DEST/report.html, made now from the run it ships: a report.html in the run folder may be an earlier run's
    (one an older codeclm left there at a `--no-report` rerun). A note (never a failed export) when it cannot be."""
    try:
        from .html_report import write_report

        write_report(run_dir, dest / REPORT, shown_folder=f"run folder {Path(run_dir).resolve().name}")
    except Exception as exc:  # noqa: BLE001 - the report is a courtesy beside the data
        (dest / REPORT).unlink(missing_ok=True)
        return f"no report.html shipped ({type(exc).__name__}: {exc})"
    return None


def _mark(dest: Path, run_dir: Path, manifest: dict[str, Any], files: list[str], complete: bool) -> None:
    write_atomic(dest / MARKER, json.dumps({"written_by": "codeclm export", **run_identity(run_dir, manifest),
                                            "complete": complete, "files": files}, indent=2) + "\n")


def _bundle(run_dir: Path, dest: Path, manifest: dict[str, Any],
            cache_dir: Path | None) -> tuple[int | None, str | None]:
    """pipeline/calls.jsonl.gz through `codeclm cache export`'s code, when the run's cache is reachable."""
    from .bundle import export_bundle, run_call_keys

    recorded = (manifest.get("options") or {}).get("cache_dir")
    folder = Path(cache_dir).expanduser() if cache_dir else Path(recorded) if isinstance(recorded, str) else None
    skip = "no cache bundle shipped"
    if folder is None or not folder.is_dir():
        return None, f"{skip}: the run's cache folder {folder} is not here (pass --cache-dir, or --no-cache-bundle)"
    path = dest / BUNDLE
    try:
        count = export_bundle(run_dir, path, folder)
    except CodecError as exc:
        path.unlink(missing_ok=True)
        return None, f"{skip}: {exc}"
    if not count:
        path.unlink(missing_ok=True)
        return None, f"{skip}: the cache at {folder} holds none of the run's calls"
    total = len(run_call_keys(run_dir))
    if count < total:
        return count, f"the cache bundle holds {count} of the run's {total} calls (the rest are no longer cached)"
    return count, None


# -- the Hub ------------------------------------------------------------------------------------------------------


def hub_token() -> str:
    """The Hugging Face token (HF_TOKEN, or the cached login), checked before any work; a SpecError if none."""
    hub = require("huggingface_hub", "--push-to-hub")
    token = hub.get_token()
    if not token:
        raise SpecError("--push-to-hub", "no Hugging Face token: not logged in and HF_TOKEN is not set",
                        hint="log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN to a token "
                             "with write access (huggingface.co/settings/tokens); the export folder is written "
                             "either way without --push-to-hub")
    return token


def check_repo_id(repo: str) -> None:
    if not REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", "-", ".")):
        raise SpecError("--push-to-hub", f"not a Hub repo id: {repo!r}", hint="NAME or ORG/NAME, e.g. alice/my-data")


def push(dest: Path, repo: str, files: list[str], private: bool, token: str) -> str:
    """Upload the files the export wrote (never other files in DEST) to the dataset repo REPO; returns its URL."""
    hub = require("huggingface_hub", "--push-to-hub")
    api = hub.HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(dest), repo_type="dataset",
                          allow_patterns=[glob.escape(name) for name in files],  # fnmatch patterns: [ * ? literal
                          commit_message="Upload dataset exported by codeclm")
    except Exception as exc:  # noqa: BLE001 - HTTP, network and auth errors of any huggingface_hub version
        raise CodecError(f"push to the Hub dataset {repo} failed: {type(exc).__name__}: {exc}\n"
                         f"  the export folder {dest} is complete; fix the cause and run the same command again") \
            from None
    return str(getattr(url, "url", None) or url or f"https://huggingface.co/datasets/{repo}")

"""codeclm: generate tailored instruction-tuning data with CodecLM, from a YAML spec.

Heavy imports (DSPy, llama.cpp) happen inside the commands that need them, so that
`codeclm --help` answers at once.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

import click

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

CACHE_DIR_HELP = "Cache folder (default: the spec's 'cache:', else $CODECLM_CACHE_DIR, else ~/.cache/codeclm)."
SHARED_CACHE_HELP = "Cache folder (default: $CODECLM_CACHE_DIR, else ~/.cache/codeclm)."


EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), e.g. `kill`, a job scheduler, `docker stop`


# The commands that call models: interrupted, they say that what they called is cached (validate,
# graph and the others call nothing, and said so wrongly).
CALLS_MODELS = frozenset({"run", "replay", "evaluate", "optimize", "compare"})


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stop as Ctrl-C does, outside an event loop (inside one, `event_loop.run` cancels the run instead)."""
    from codeclm.programs.errors import Terminated

    raise Terminated()


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a CodecError as a message (no traceback) and exit with its code; SIGINT and SIGTERM
    print how to resume and exit 130 and 143."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal
        import threading

        from codeclm.programs.errors import CodecError

        installed, previous = False, None
        if threading.current_thread() is threading.main_thread():
            previous, installed = signal.signal(signal.SIGTERM, _on_sigterm), True
        try:
            return command(*args, **kwargs)
        except CodecError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # the machine, not the input: a full disk, too many open files, a lost mount
            if isinstance(exc, BrokenPipeError) and exc.filename is None:  # our reader went away (`| head`)
                _quiet_stdout()
                sys.exit(1)
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"error: {where}{exc.strerror or exc or type(exc).__name__}", fg="red", err=True)
            click.secho("fix the cause and run the command again (a run resumes: what finished is cached)",
                        fg="yellow", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            resume = ("every finished call is cached; run the same command again to resume."
                      if command.__name__ in CALLS_MODELS else "run the command again.")
            _exit_interrupted(exc, resume)
        finally:
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper


def _exit_interrupted(exc: KeyboardInterrupt, what_now: str) -> NoReturn:
    """Say what an interruption (Ctrl-C, or SIGTERM) left and what to do, and exit 130 (143)."""
    from codeclm.programs.errors import Terminated

    terminated = isinstance(exc, Terminated)
    click.secho(f"\ninterrupted{' (SIGTERM)' if terminated else ''}: {what_now}", fg="yellow", err=True)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def reads_run(command: Callable[..., Any]) -> Callable[..., Any]:
    """For commands that read a finished run folder (`run_dir`): a file in it that is damaged or
    edited (not JSON, not UTF-8, the wrong shape) is a located error, not a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from codeclm.programs.errors import CodecError

        try:
            return command(*args, **kwargs)
        except CodecError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            from codeclm.programs.artifacts.rundata import damaged_run

            raise damaged_run(kwargs["run_dir"], exc) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="codeclm")
def main() -> None:
    """Generate instruction-tuning data tailored to your seeds, with CodecLM.

    A spec (YAML) declares the models and a graph of nodes (docs/spec.md, which
    `codeclm init` copies into a project beside the specs). The CodecLM
    spec encodes seeds into metadata, grows a metadata pool, decodes it into instructions,
    improves them with Self-Rubrics, and keeps the pairs that Contrastive Filtering selects;
    other specs in specs/ are Self-Instruct, Evol-Instruct, AlpaGasus and critique-rewrite.

    \b
    Quick start, on the small model that ships with codeclm:
      codeclm run demo                           the shipped demo spec, from any folder
      codeclm init my-project                    an editable copy of the specs, prompts, seeds
    \b
    Other commands:
      codeclm validate specs/codeclm.yaml        check a spec and its templates
      codeclm graph specs/codeclm.yaml --mermaid the graph, in words or as Mermaid
      codeclm render specs/demo.yaml encode --input '{"instruction": "Hi"}'
      codeclm run specs/demo.yaml --dry-run      count calls before spending
      codeclm replay runs/demo                   re-run from the cache, no model
      codeclm inspect runs/demo                  what was kept, from which iteration
      codeclm report runs/demo --open            look at a run: one offline HTML page
      codeclm export runs/demo exports/demo      a Hugging Face dataset folder with a card
      codeclm optimize specs/demo.yaml encode    tune an llm node's demos with DSPy
      codeclm evaluate specs/demo.yaml BENCH.jsonl   CRR of the target vs the strong model
      codeclm cache stats                        what the cache holds
      codeclm compare A.yaml B.yaml --judge strong   which spec makes better data
    """


def _quiet_stdout() -> None:
    """stdout's reader has gone (`codeclm ... | head`): stdout goes nowhere from here, so that Python's
    own flush at exit does not fail a second time. (A socket's broken pipe reaches us as a model error.)"""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _yaml_float(value: float) -> str:
    """A float as YAML reads it back as one: YAML 1.1 wants a dot, so 5e-05 (Python's repr) is 5.0e-05
    (the bare form was read as text and refused: `--budget-usd 0.00005`)."""
    text = repr(value)
    return text if "." in text or "e" not in text else text.replace("e", ".0e", 1)


class _NamedPath(click.Path):
    """A path option: an empty value (`--cache-dir "$UNSET"`) is refused, not read as the current folder."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path (an unset shell variable?): name one, or leave the option out", param, ctx)
        return super().convert(value, param, ctx)


FOLDER = _NamedPath(file_okay=False, path_type=Path)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A number option that must be finite (FloatRange lets nan and inf through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


def _cache_mode(replay: bool, refresh: bool) -> str | None:
    """`run`'s --replay or --refresh. Both at once used to let the last one win: a replay meant to
    call nothing became a live run that overwrote the cache."""
    from codeclm.programs.errors import SpecError

    if replay and refresh:
        raise SpecError("--replay", "--replay and --refresh contradict each other: --replay calls no model and "
                        "writes no cache entry, --refresh calls every model again and overwrites the cache",
                        hint="drop one of them")
    return "replay" if replay else "refresh" if refresh else None


def _load(spec_path: str, overrides: tuple[str, ...], roles: tuple[str | None, ...] | None = None) -> Any:
    """SPEC is a path, or the name of a shipped spec (`demo`, `codeclm`, ...). `roles`: the model roles
    the command reads by name; given, a `--set models.ROLE...` that nothing reads is refused (a typo)."""
    from codeclm.programs.errors import SpecError, SpecErrors
    from codeclm.programs.lang.spec import load_spec
    from codeclm.programs.starter import builtin_specs, resolve_spec, told_not_to_edit

    path = resolve_spec(spec_path)
    if not path.exists() and path == Path(spec_path) and not path.suffix and len(path.parts) == 1:  # a name
        close = difflib.get_close_matches(spec_path, builtin_specs(), n=1)
        raise SpecError(spec_path, "no such spec file, and no shipped spec of that name",
                        hint=(f"did you mean '{close[0]}'? " if close else "")
                        + f"give a path, or one of: {', '.join(builtin_specs())} (`codeclm init` copies them)")
    if not path.exists() and not path.is_symlink() and path.stem in builtin_specs():
        # `specs/codeclm.yaml`, as the help writes it, is a checkout's or an init project's path: an installed
        # codeclm run elsewhere has the spec by its name
        command = click.get_current_context().info_name
        raise SpecError(spec_path, "no such spec file",
                        hint=f"the shipped spec of that name is `codeclm {command} {path.stem}` (by name, from any "
                             "folder); `codeclm init DIR` copies the specs to edit")
    named = None if roles is None else [role for role in roles if role]
    try:
        return load_spec(str(path), list(overrides), named)
    except (SpecError, SpecErrors) as exc:
        raise SpecErrors(told_not_to_edit(path, exc.errors if isinstance(exc, SpecErrors) else [exc])) from None


@main.command()
@click.argument("folder", default=".", type=click.Path(path_type=Path))
@reports_errors
def init(folder: Path) -> None:
    """Start a project in FOLDER [default: here]: the shipped specs, their prompts,
    example seeds, the spec reference (docs/spec.md) and a README of what to edit first.
    Writes each of these files that is missing and keeps each one you have: never
    overwrites or deletes a file, so running it again restores a deleted one.

    \b
      codeclm init my-data && cd my-data
      codeclm run specs/demo.yaml
    """
    from codeclm.programs.starter import init_project

    written, kept = init_project(folder)
    click.echo(f"wrote {len(written)} file{'' if len(written) == 1 else 's'} to {folder}"
               + (f": {_init_summary(written)}" if written else ""))
    if kept:
        shown = ", ".join(map(str, kept[:10])) + (f", ... and {len(kept) - 10} more" if len(kept) > 10 else "")
        click.echo(f"kept {len(kept)} file{'' if len(kept) == 1 else 's'} you have: {shown}")
    click.echo(f"next: cd {shlex.quote(str(folder))} && codeclm run specs/demo.yaml" if str(folder) != "." else
               "next: codeclm run specs/demo.yaml")


def _init_summary(written: list[Path]) -> str:
    """What init wrote, in short: the specs by name (what to run), the other folders and files by name."""
    specs = [p.name for p in written if p.parts[0] == "specs"]
    others = dict.fromkeys(f"{p.parts[0]}/" if len(p.parts) > 1 else str(p) for p in written if p.parts[0] != "specs")
    return ", ".join(([f"specs ({', '.join(specs)})"] if specs else []) + list(others))


@main.command()
@click.argument("spec", type=click.Path())
@click.option("--seeds", type=click.Path(dir_okay=False, path_type=Path), help="Seed file (JSONL, CSV or text); "
              "replaces the path of the spec's source node (when it reads one file).")
@click.option("--out", type=FOLDER,
              help="Run directory [default: runs/NAME; with --replay, runs/NAME-replay].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any spec field, e.g. --set params.threshold=2 --set models.strong.model=openai/gpt-4o.")
@click.option("--limit", type=click.IntRange(min=1),
              help="Use only the first N records of each file the spec reads (records written in the spec: all).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight per model (overrides the spec).")
@click.option("--cache-dir", type=FOLDER, help=CACHE_DIR_HELP)
@click.option("--replay", is_flag=True, help="Cache read-only, no model contacted; a miss exits 3.")
@click.option("--refresh", is_flag=True, help="Call the models again and overwrite the cache (not with --replay).")
@click.option("--dry-run", is_flag=True, help="Estimate before spending: per node and model, the calls (at most), "
              "how many are cached, input and output tokens, and dollars.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the estimate as JSON.")
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True), metavar="USD", callback=_finite,
              help="Stop when new calls have cost USD dollars (sets budget.usd; cached calls are free).")
@click.option("--budget-tokens", type=click.IntRange(min=1), metavar="N",
              help="Stop when new calls have used N tokens, input and output (sets budget.tokens).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--no-report", is_flag=True, help="Do not write report.html into the run directory at the end.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="ray: records run on Ray workers (RAY_ADDRESS, or a local instance); pip install 'codeclm[ray]' "
                   "[default: the spec's executor:, else local].")
@reports_errors
def run(spec: str, seeds: Path | None, out: Path | None, overrides: tuple[str, ...], limit: int | None,
        concurrency: int | None, cache_dir: Path | None, replay: bool, refresh: bool, dry_run: bool, quiet: bool,
        no_report: bool, executor: str | None, as_json: bool = False, budget_usd: float | None = None,
        budget_tokens: int | None = None) -> None:
    """Run SPEC and write a run directory: dataset.jsonl and its artifacts, and
    report.html to look at it (see `codeclm report --help`).

    Every model call is cached. Running the same command again after a crash or
    Ctrl-C resumes: finished calls come from the cache. Change a parameter and only
    the calls it affects are made again.

    A budget (`budget:` in the spec, --budget-usd, --budget-tokens) stops the run when
    new calls have spent it: the data so far is written, and it exits 4; rerun with a
    higher budget to resume from the cache.
    """
    from codeclm.programs.engine.checks import check_templates
    from codeclm.programs.engine.progress import Progress
    from codeclm.programs.engine.run import RunOptions, run_spec
    from codeclm.programs.errors import SpecError

    if as_json and not dry_run:
        raise SpecError("--json", "--json prints the dry run's estimate", hint="add --dry-run, or drop --json")
    mode = _cache_mode(replay, refresh)
    overrides = (*overrides, *([f"budget.usd={_yaml_float(budget_usd)}"] if budget_usd is not None else []),
                 *([f"budget.tokens={budget_tokens}"] if budget_tokens is not None else []))
    loaded = _load(spec, overrides, roles=())
    check_templates(loaded)  # every check `validate` makes, before the first call
    if mode == "replay" and out is None:  # never overwrite the run being replayed
        out = Path("runs") / f"{loaded.name}-replay"
    options = RunOptions(out=out, cache_dir=cache_dir, cache_mode=mode or "live", seeds=seeds, limit=limit,
                         concurrency=concurrency, dry_run=dry_run, overrides=list(overrides),
                         progress=Progress(stream=None if quiet or dry_run else sys.stderr),
                         recorded_run=Path("runs") / loaded.name if mode == "replay" else None)
    if dry_run:
        _dry_run(loaded, options, as_json)
        return
    if (executor or loaded.executor) == "ray":  # the Ray executor is a seam: programs/engine/ray_executor.py
        if loaded.budget is not None and mode != "replay":  # never spend past a budget nobody counts
            raise SpecError("--executor", "a budget is enforced by the local executor only, not yet on Ray",
                            hint="drop --executor ray, or the budget (budget:, --budget-usd, --budget-tokens)")
        from codeclm.programs.engine.ray_executor import run_on_ray

        result = run_on_ray(loaded, options)
    else:
        result = run_spec(loaded, options)
    options.progress.close()
    _summary(result, None if no_report else _write_report(result.out))


def _write_report(run_dir: Path) -> Path | None:
    """The run's report.html; a report that cannot be written is a warning, never a failed run."""
    from codeclm.programs.artifacts.html_report import write_report

    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the data is written; the report only shows it
        click.secho(f"warning: report.html not written ({type(exc).__name__}: {exc}); "
                    f"try `codeclm report {run_dir}`", fg="yellow", err=True)
        return None
    except KeyboardInterrupt as exc:  # the run is complete: nothing to resume, only the report to write
        _exit_interrupted(exc, f"the run finished ({run_dir} has its dataset and manifest); report.html was not "
                               f"written: `codeclm report {run_dir}` writes it.")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=FOLDER,
              help="Where to write the replayed run [default: RUN_DIR-replay].")
@click.option("--cache-dir", type=FOLDER,
              help="Cache folder (default: the one the run used, as its manifest recorded it).")
@click.option("--spec", "moved_spec", type=_NamedPath(exists=True, dir_okay=False, path_type=Path),
              help="Where the run's spec file is now, if it moved (default: the path its manifest recorded); "
                   "it must be the same file, unedited.")
@reports_errors
@reads_run
def replay(run_dir: Path, out: Path | None, cache_dir: Path | None, moved_spec: Path | None) -> None:
    """Re-run a finished run from the cache alone: no model, no key, same bytes.

    Takes the spec and options RUN_DIR's manifest recorded, reads the cache read-only,
    and compares the replayed dataset with the recorded one. The spec file must be the
    run's, unedited (else exit 2); to run an edited spec from the cache instead, use
    `codeclm run SPEC --replay`.

    \b
    Exit codes: 0 the dataset is the recorded one; 1 it DIFFERS (what changed since the
    run is said: templates, programs, codeclm's code) or is empty; 2 a spec file edited
    or gone, a seed file gone, a bad option; 3 the cache lacks a call the replay needs;
    130 and 143 interrupted (Ctrl-C, SIGTERM).
    """
    from codeclm.programs.artifacts.manifest import sources
    from codeclm.programs.artifacts.rundata import finished_run_manifest
    from codeclm.programs.engine.progress import Progress
    from codeclm.programs.engine.run import RunOptions, run_spec
    from codeclm.programs.lang.seeds import check_file, recorded_seed_file

    manifest_path = run_dir / "manifest.json"
    manifest = finished_run_manifest(run_dir, ("options.cache_dir", "options.overrides", "options.seeds",
                                               "options.limit", "spec.path"))  # what replay reads
    recorded = manifest["options"]
    loaded = _load_recorded(_recorded_spec(manifest, manifest_path, moved_spec), tuple(recorded["overrides"]),
                            manifest_path)
    changed = _changed_since(manifest, sources(loaded))
    if changed:  # said first: a miss (exit 3) or a different dataset is then no surprise
        click.secho("warning: changed since the run: " + "; ".join(changed) + ". The replay reads them as they are "
                    "now, so it may miss the cache (exit 3) or give another dataset", fg="yellow", err=True)
    if recorded["seeds"]:  # the run's --seeds FILE: replay has no --seeds, so its fix is to put the file back
        check_file(Path(recorded["seeds"]), recorded_seed_file(Path(recorded["seeds"])))
    for missing in loaded.missing_files:  # a file the spec reads: the same fix (not --set, not --seeds)
        missing.hint = "put the file the run read back at that path: a replay reads the run's own files"
    base = run_dir if run_dir.name else run_dir.resolve()  # `replay .` names the folder it is in
    out = out or base.with_name(base.name + "-replay")
    options = RunOptions(out=out, cache_dir=cache_dir or Path(recorded["cache_dir"]), cache_mode="replay",
                         seeds=Path(recorded["seeds"]) if recorded["seeds"] else None, limit=recorded["limit"],
                         overrides=list(recorded["overrides"]), progress=Progress(), recorded_run=run_dir)
    result = run_spec(loaded, options)
    options.progress.close()
    _summary(result)
    same = (run_dir / "dataset.jsonl").read_bytes() == (out / "dataset.jsonl").read_bytes()
    if not same and _same_records(run_dir / "dataset.jsonl", out / "dataset.jsonl"):
        click.secho("dataset.jsonl holds the same records as the recorded run, in another JSON encoding (an earlier "
                    "codeclm wrote a space after each `,` and `:`)", fg="green")
        return
    click.secho(f"dataset.jsonl {'identical to' if same else 'DIFFERS from'} the recorded run",
                fg="green" if same else "red")
    if not same:
        changed = _changed_since(manifest, result.manifest)
        click.secho("changed since the run: " + ("; ".join(changed) if changed else "nothing codeclm records (the "
                    "cache entries the run read were replaced, e.g. by a --refresh run)"), fg="red", err=True)
        sys.exit(1)


def _same_records(recorded: Path, replayed: Path) -> bool:
    """Whether two JSONL files hold the same records, line for line, however each was encoded."""
    with recorded.open("rb") as first, replayed.open("rb") as second:
        for a, b in itertools.zip_longest(first, second):
            try:
                if a is None or b is None or json.loads(a) != json.loads(b):
                    return False
            except (ValueError, RecursionError):
                return False
    return True


def _recorded_spec(manifest: dict[str, Any], manifest_path: Path, moved: Path | None) -> str:
    """The spec file a replay runs: the one the manifest names, or the same file where it is now (`--spec`).
    A replay checks the recorded run, so a file of other bytes is refused, not replayed (SpecError), at
    its recorded path as at another: an edited spec is `run SPEC --replay`'s."""
    from codeclm.programs.artifacts.manifest import spec_sha
    from codeclm.programs.errors import SpecError

    recorded = str(manifest["spec"]["path"])
    if moved is None and not Path(recorded).is_file():
        raise SpecError(str(manifest_path), f"the run's spec file {recorded} is no longer there",
                        hint=f"put it back at that path, or name where it is now: "
                             f"codeclm replay {manifest_path.parent} --spec PATH")
    path = moved or Path(recorded)
    if spec_sha(path) != manifest["spec"].get("sha256"):  # edited where it is, or another file
        raise SpecError(str(path), f"not the spec file the run used: edited since, or another file (its hash is not "
                        f"the one {manifest_path} recorded)",
                        hint=f"name the run's own spec file, unedited (it was {recorded}); to run an edited spec "
                             "from the cache, use `codeclm run SPEC --replay`; the spec as the run ran it (after an "
                             f"upgrade changed a shipped one, say): `codeclm export {manifest_path.parent} DIR`, "
                             "then `codeclm run DIR/pipeline/spec.yaml --replay`")
    return str(path)


def _load_recorded(spec_path: str, overrides: tuple[str, ...], manifest_path: Path) -> Any:
    """`_load` for a replay: an error in a `--set` the run was given is the run's, not this
    command's (the user typed none), so it names the manifest that recorded it."""
    from codeclm.programs.errors import SpecError, SpecErrors

    try:
        return _load(spec_path, overrides)
    except (SpecError, SpecErrors) as exc:
        errors = exc.errors if isinstance(exc, SpecErrors) else [exc]
        if not any(e.file.startswith("--set") for e in errors):
            raise
        for error in errors:
            if error.file.startswith("--set"):
                error.file = f"{manifest_path} (the run's {error.file})"
                error.hint = (f"{error.hint}; " if error.hint else "") + \
                    "the spec or codeclm changed since the run took it: run it again rather than replay it"
        raise SpecErrors(errors) from None


def _changed_since(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a run's manifest and its replay's: templates, tuned programs, codeclm's
    code (its parsers read the cached text anew). Not the spec file: `_recorded_spec` refuses an edited one."""
    changed = []
    for kind in ("templates", "programs"):
        before, after = recorded.get(kind) or {}, now.get(kind) or {}
        names = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        if names:
            changed.append(f"{kind} {', '.join(names)}")
    if recorded.get("code_sha256") != now["code_sha256"]:
        changed.append("codeclm's code (its parsers read the cached answers anew)")
    return changed


@main.command()
@click.argument("spec", type=click.Path())
@click.argument("benchmarks", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--candidate", default="target", show_default=True,
              help="Model role under test: a key of the spec's models (add one with --set).")
@click.option("--reference", default="strong", show_default=True, help="Model role to compare with.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N items of each benchmark.")
@click.option("--out", type=FOLDER,
              help="Where to write eval.jsonl and eval.json [default: runs/NAME-eval-CANDIDATE].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field first.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight per model (overrides the spec).")
@click.option("--cache-dir", type=FOLDER, help=CACHE_DIR_HELP)
@click.option("--replay", "mode", flag_value="replay", help="Cache read-only, no model contacted; a miss exits 3.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@reports_errors
def evaluate(spec: str, benchmarks: tuple[Path, ...], candidate: str, reference: str, limit: int | None,
             out: Path | None, overrides: tuple[str, ...], concurrency: int | None, cache_dir: Path | None,
             mode: str | None, quiet: bool) -> None:
    """Measure the Capacity Recovery Ratio (CRR) of a model on BENCHMARKS (JSONL files
    with an 'instruction' field), as the paper does.

    Both models answer every instruction; the spec's judge scores the pair at
    temperature 0 in both orders. The candidate wins only if it wins both times, loses
    only if it loses both times; otherwise it is a tie. CRR = (wins + ties) / judged.

    \b
    Compare a fine-tuned model served by vLLM with the strong model:
      codeclm evaluate specs/codeclm.yaml bench/vicuna.jsonl --candidate tuned \\
        --set models.tuned.model=hosted_vllm/my-model \\
        --set models.tuned.api_base=http://127.0.0.1:8000/v1
    """
    from codeclm.programs.engine.checks import check_templates
    from codeclm.programs.engine.progress import Progress
    from codeclm.programs.evaluate import EvalOptions
    from codeclm.programs.evaluate import evaluate as run_evaluation

    options = EvalOptions(benchmarks=list(benchmarks), candidate=candidate, reference=reference, limit=limit,
                          out=out, cache_dir=cache_dir, cache_mode=mode or "live", concurrency=concurrency,
                          progress=Progress(stream=None if quiet else sys.stderr))
    loaded = _load(spec, overrides, roles=(candidate, reference))
    check_templates(loaded)  # every check `validate` makes, before the first call
    result = run_evaluation(loaded, options)
    options.progress.close()
    click.echo(f"{candidate} vs {reference}")
    click.echo(f"{'benchmark':<20} {'items':>6} {'wins':>6} {'ties':>6} {'losses':>6} {'failed':>6} {'CRR':>8}")
    for name, row in result.summary.items():
        crr = f"{100 * row['crr']:7.2f}%" if row["crr"] is not None else "       -"
        click.echo(f"{name:<20} {row['items']:>6} {row['win']:>6} {row['tie']:>6} {row['loss']:>6} "
                   f"{row['failed']:>6} {crr}")
    click.echo(f"output: {result.out / 'eval.jsonl'}")


@main.command()
@click.argument("spec", type=click.Path())
@click.argument("node")
@click.option("--from", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A finished run whose cache holds the calls before the node (any node not fed by the seeds).")
@click.option("--seeds", type=click.Path(dir_okay=False, path_type=Path),
              help="Seed file for tuning encode [default: the spec's seeds].")
@click.option("--optimizer", type=click.Choice(["gepa", "mipro", "bootstrap"]), default="bootstrap",
              show_default=True, help="GEPA (instructions, from the metric's feedback), MIPROv2 (instructions and "
              "demos; needs optuna) or BootstrapFewShot (demos).")
@click.option("--metric", metavar="NAME", help="A metric of the spec's optimize.NODE.metrics, or parse "
              "[default: optimize.NODE.metric, else parse].")
@click.option("--examples", type=click.IntRange(min=3), default=20, show_default=True,
              help="Inputs to use, split by the spec's seed into train, validation and held-out (40/30/30).")
@click.option("--demos", type=click.IntRange(min=1), default=4, show_default=True, help="Demos to keep at most.")
@click.option("--teacher", metavar="ROLE", help="bootstrap: a model role that writes the demos [default: the node's].")
@click.option("--threshold", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="bootstrap: the metric score an output needs to become a demo.")
@click.option("--reflection", metavar="ROLE", help="gepa/mipro: the role that proposes instructions "
              "[default: the node's model].")
@click.option("--max-metric-calls", type=click.IntRange(min=1), help="gepa: the budget, in metric calls.")
@click.option("--auto", type=click.Choice(["light", "medium", "heavy"]),
              help="gepa/mipro: a budget level [default for gepa without --max-metric-calls: light].")
@click.option("--out", type=_NamedPath(path_type=Path),
              help="Where to save the tuned node: a .json file, or a folder that gets NODE.json "
                   "[default: runs/NAME-optimize/NODE.json].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field first.")
@click.option("--cache-dir", type=FOLDER, help=CACHE_DIR_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines, nor DSPy's own logs and progress bars.")
@reports_errors
def optimize(spec: str, node: str, run_dir: Path | None, seeds: Path | None, optimizer: str, metric: str | None,
             examples: int, demos: int, teacher: str | None, threshold: float, reflection: str | None,
             max_metric_calls: int | None, auto: str | None, out: Path | None, overrides: tuple[str, ...],
             cache_dir: Path | None, quiet: bool) -> None:
    """Tune NODE's prompt for a metric with a DSPy optimizer and save it for `program:`.

    Example inputs are split by the spec's seed into train, validation and held-out; the
    metric (declared under the spec's `optimize:`, or parse) is measured on held-out inputs
    before and after. Every call goes through the cache: the same command again calls no model.

    \b
    Tune the encoder's instructions for codec fidelity with GEPA, proposals by the strong role:
      codeclm optimize specs/codeclm.yaml encode --optimizer gepa --metric fidelity \\
        --set 'optimize.encode.metrics.fidelity={type: codec, encode: encode, decode: decode}' \\
        --reflection strong --max-metric-calls 60
      codeclm run specs/codeclm.yaml --set nodes.encode.program=$PWD/runs/codeclm-optimize/encode.json
    \b
    Few-shot demos that parse, written by the strong model:
      codeclm optimize specs/demo.yaml answer_target --from runs/demo --teacher strong
    """
    if quiet:  # DSPy's own progress bars, read by tqdm from the environment when DSPy first imports it
        os.environ["TQDM_DISABLE"] = "1"
    from codeclm.programs.engine.checks import check_templates
    from codeclm.programs.optimize import OptimizeOptions
    from codeclm.programs.optimize import optimize as run_optimizer

    if quiet:  # and its INFO lines
        logging.getLogger("dspy").setLevel(logging.WARNING)
    options = OptimizeOptions(stage=node, optimizer=optimizer, metric=metric, run_dir=run_dir, seeds=seeds,
                              examples=examples, demos=demos, teacher=teacher, threshold=threshold,
                              reflection=reflection,
                              max_metric_calls=max_metric_calls, auto=auto, out=out, cache_dir=cache_dir,
                              progress=None if quiet else sys.stderr)
    loaded = _load(spec, overrides, roles=(teacher, reflection))
    check_templates(loaded)  # every check `validate` makes, before the first call
    result = run_optimizer(loaded, options)
    click.echo(result.table)
    demos = f"{result.demos} demo{'' if result.demos == 1 else 's'}"
    click.echo(f"{node}: {result.optimizer} for {result.metric}; {demos}; instructions: {result.instructions[:200]!r}")
    saved = f"saved {result.path} (scores: {result.path.with_suffix('.scores.txt')})"
    if result.unchanged:  # the file holds the prompt as it was: running with it changes nothing
        click.echo(f"{saved}: the prompt as it was, no demos added")
        click.secho(f"warning: {result.unchanged}", fg="yellow", err=True)
        return
    click.echo(f"{saved}; use it with --set {loaded.graph.spec_path(node)}.program={result.path.resolve()}"
               + (" (the body of every round)" if loaded.graph.every[node].unrolled else ""))


@main.command()
@click.argument("spec_a", type=click.Path())
@click.argument("spec_b", type=click.Path(), required=False)
@click.option("--set", "set_both", multiple=True, metavar="KEY=VALUE",
              help="Override a field of A and of B (e.g. the models both run on), before --set-a/--set-b.")
@click.option("--set-a", "set_a", multiple=True, metavar="KEY=VALUE", help="Override a field of A.")
@click.option("--set-b", "set_b", multiple=True, metavar="KEY=VALUE", help="Override a field of B [B: A's spec "
              "when SPEC_B is not given].")
@click.option("--judge", metavar="ROLE", required=True, help="The model role (of A) that judges the pairs.")
@click.option("--template", default="judge.jinja", show_default=True, help="A pairwise judge template of A's prompts.")
@click.option("--seeds", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Seeds for both runs.")
@click.option("--limit", type=click.IntRange(min=1), help="Records read per file source.")
@click.option("--samples", type=click.IntRange(min=100), default=2000, show_default=True, help="Bootstrap resamples.")
@click.option("--out", type=FOLDER,
              help="Folder for both runs and the verdicts [default: runs/NAME-compare].")
@click.option("--cache-dir", type=FOLDER, help=CACHE_DIR_HELP)
@click.option("--replay", "mode", flag_value="replay", help="Cache read-only, no model contacted; a miss exits 3.")
@reports_errors
def compare(spec_a: str, spec_b: str | None, set_both: tuple[str, ...], set_a: tuple[str, ...],
            set_b: tuple[str, ...], judge: str, template: str, seeds: Path | None, limit: int | None, samples: int,
            out: Path | None, cache_dir: Path | None, mode: str | None) -> None:
    """Run A and B on the same seeds and judge their datasets pairwise, in both orders.

    Prints A's wins, ties and losses with a seeded bootstrap interval of (wins - losses) / judged,
    and cost and data-quality figures side by side; writes compare.json, compare.txt and every
    verdict (compare.jsonl). --out must be new, empty or codeclm's own, as for `run`: a file
    codeclm did not write is never replaced (exit 2 before any call).

    \b
    Edited templates against the spec's own (cp -r prompts prompts-edited, edit; prompts= is relative to the spec):
      codeclm compare specs/demo.yaml --set-b prompts=../prompts-edited --judge strong
    Two settings of one spec (records are matched by id: two specs must make the same ids):
      codeclm compare specs/demo.yaml --set-a params.threshold=2 --set-b params.threshold=4 --judge strong
    Both on another model:
      codeclm compare specs/demo.yaml --set models.strong.model=openai/gpt-4o-mini --set-b params.threshold=4 \\
        --judge strong
    """
    from codeclm.programs.compare import CompareOptions, format_table
    from codeclm.programs.compare import compare as run_compare

    set_a, set_b = (*set_both, *set_a), (*set_both, *set_b)
    a = _load(spec_a, set_a, roles=(judge,))  # a --set of a role nothing reads is a typo, as for run
    b = _load(spec_b or spec_a, set_b, roles=())
    options = CompareOptions(judge=judge, out=out or Path("runs") / f"{a.name}-compare", template=template,
                             seeds=seeds, limit=limit, cache_dir=cache_dir, cache_mode=mode or "live",
                             samples=samples)
    click.echo(f"A: {spec_a} {' '.join(set_a)}".rstrip())
    click.echo(f"B: {spec_b or spec_a} {' '.join(set_b)}".rstrip())
    result = run_compare(a, b, options)
    click.echo(format_table(result))
    click.echo(f"verdicts: {result.out / 'compare.jsonl'}")
    if result.judged == 0 and result.failed == 0:
        empty = [side.upper() for side in ("a", "b") if not result.sides.get(side, {}).get("kept")]
        why = (f"{' and '.join(empty)} kept no rows: there is nothing to pair" if empty else
               f"A and B kept no record of the same id ({result.unmatched} unmatched). compare judges the two "
               "answers to one record, so A and B must make the same records: one spec with --set-a/--set-b, or "
               "two specs with the same nodes up to the dataset")
        click.secho(f"nothing was judged: {why}; the table above still compares their cost and data quality",
                    fg="red", err=True)
        sys.exit(1)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@reports_errors
@reads_run
def inspect(run_dir: Path, as_json: bool) -> None:
    """Summarize a finished run: its records by status, and where the spec has them, what was kept
    from which iteration and model and the judge's gaps, what each loop's switches decided (exits,
    mean iterations, each case per iteration) and what each filter removed; the calls, the most
    common failures and the data-quality figures."""
    from codeclm.programs.artifacts.report import format_report, run_report

    report = run_report(run_dir)
    click.echo(json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_report(report))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--push-to-hub", "repo", metavar="REPO", help="Then upload DEST to the Hub dataset repo REPO "
              "(NAME or ORG/NAME; made if missing) with huggingface_hub. Needs HF_TOKEN or `hf auth login`.")
@click.option("--private", is_flag=True, help="With --push-to-hub: make a new repo private.")
@click.option("--license", "license_id", default="unknown", show_default=True,
              help="The card's license id, one the Hub knows (apache-2.0, mit, cc-by-4.0, odc-by, other, ...); "
                   "another is written with a warning naming the closest. Mind the models' terms.")
@click.option("--language", "languages", multiple=True, metavar="CODE",
              help="Language of the data, repeatable [default: en].")
@click.option("--pretty-name", help="The card's title [default: the spec's name].")
@click.option("--no-cache-bundle", is_flag=True, help="Leave out pipeline/calls.jsonl.gz, the run's cached calls.")
@click.option("--cache-dir", type=FOLDER,
              help="Where the run's calls are cached [default: the folder its manifest names].")
@reports_errors
@reads_run
def export(run_dir: Path, dest: Path, repo: str | None, private: bool, license_id: str, languages: tuple[str, ...],
           pretty_name: str | None, no_cache_bundle: bool, cache_dir: Path | None) -> None:
    """Ship a finished run: DEST becomes a Hugging Face dataset folder.

    \b
    DEST/README.md                            dataset card: Hub metadata, method, models,
                                              counts, quality metrics, how to train and replay
    DEST/data/train-00000-of-00001.parquet    messages + provenance (JSON text)
    DEST/data/train.jsonl                     the run's dataset.jsonl, byte for byte
    DEST/pipeline/                            spec.yaml, prompts/, seeds/, manifest.json and
                                              calls.jsonl.gz: rerun or replay it offline
    DEST/report.html                          the run's report (`codeclm report`)
    \b
    datasets.load_dataset("DEST") loads it as is. DEST must be new, empty, or an
    earlier export of the same run (its files are rewritten; nothing else is touched).
    The seed file ships in pipeline/ (a replay renders the seeds again).
    \b
    Examples:
      codeclm export runs/demo exports/demo --license apache-2.0
      codeclm export runs/demo exports/demo --push-to-hub alice/demo-codeclm --private
    """
    from codeclm.programs.artifacts.export import ExportOptions, check_repo_id, export_run, hub_token, push, require
    from codeclm.programs.errors import SpecError

    if private and not repo:
        raise SpecError("--private", "--private only applies to a push", hint="add --push-to-hub REPO, or drop it")
    token = None
    if repo:  # everything a push needs is checked before any work
        check_repo_id(repo)
        token = hub_token()
    require("pyarrow", "codeclm export")
    options = ExportOptions(license=license_id, languages=list(languages) or ["en"], pretty_name=pretty_name,
                            repo=repo, cache_bundle=not no_cache_bundle, cache_dir=cache_dir)
    result = export_run(run_dir, dest, options)
    for note in result.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    bundle = f", {result.bundle_calls} cached calls" if result.bundle_calls else ""
    click.echo(f"exported {result.rows} rows{bundle} to {result.dest} ({len(result.files)} files); "
               f"load it with datasets.load_dataset({str(result.dest)!r})")
    if repo and token:
        url = push(result.dest, repo, result.files, private, token)
        click.echo(f"pushed to {url}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=_NamedPath(dir_okay=True),  # a str: Path would drop the trailing slash that means a folder
              help="Where to write the page [default: RUN_DIR/report.html]; a folder (one that exists, or a path "
                   "ending in /) gets report.html inside.")
@click.option("--open", "open_it", is_flag=True, help="Open the page in your web browser when written.")
@reports_errors
@reads_run
def report(run_dir: Path, out: str | None, open_it: bool) -> None:
    """Write RUN_DIR's report: one HTML file that opens offline, to look at a run.

    \b
    It shows, each section where the run has data for it:
      funnel        records per node: made, kept, dropped, failed, filtered
      loops and     each loop's exits, mean iterations and switch cases (per
      filters       iteration); what each filter or dedup removed
      kept pairs    by iteration, where the dataset's provenance has an
                    `iteration` (CodecLM's; write LOOP.iteration in yours),
                    and whose answer was kept
      judge         gap histogram with the threshold, each answer's score shown
                    first and second (position bias), order agreement
      coverage      use cases and skills in the pool against the kept pairs
                    (CodecLM's metadata)
      lengths       instructions and answers (by iteration: CodecLM's
                    instruction histories)
      data quality  diversity, near duplicates, closeness to seeds (quality.py)
      calls         calls, cache hits, shared calls (asked again in the run,
                    answered once), tokens, dollars per node and model
      failures      by reason, each with an example and the raw text
      records       search, filter by status, click one for its whole history
    \b
    No network and no CDN: charts are inline SVG, the data is inside the file, so it
    can be mailed or attached to a ticket. `codeclm run` writes it at the end
    (unless --no-report). Also works on a run folder with artifacts missing.
    \b
    Examples:
      codeclm report runs/demo --open
      codeclm report runs/demo --out /tmp/demo-report.html
    """
    from codeclm.programs.artifacts.html_report import write_report

    path = write_report(run_dir, out)
    click.echo(f"report: {path}")
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            click.echo("no web browser found here: open the file above in one", err=True)


@main.command()
@click.argument("spec", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field first.")
@reports_errors
def validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC and render each of its templates once; exit 2 on any problem.

    On success it prints the graph in words, as `codeclm graph SPEC` does.
    """
    from codeclm.programs.engine.checks import check_source_files, check_templates
    from codeclm.programs.lang.describe import words

    loaded = _load(spec, overrides, roles=())
    check_source_files(loaded, None)
    check_templates(loaded)
    click.echo(f"{spec}: valid.")
    click.echo(words(loaded.graph))


@main.command()
@click.argument("spec", type=click.Path())
@click.argument("node")
@click.option("--input", "input_json", default="{}", show_default=True,
              help="The node's template variables as JSON; missing ones take sample values.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field first.")
@reports_errors
def render(spec: str, node: str, input_json: str, overrides: tuple[str, ...]) -> None:
    """Print the exact messages llm node NODE of SPEC would send, as JSON."""
    from codeclm.programs.engine.samples import sample_inputs
    from codeclm.programs.errors import SpecError, first_clause
    from codeclm.programs.lang.templates import TemplateStore
    from codeclm.programs.lang.yaml_lines import has_surrogate

    loaded = _load(spec, overrides, roles=())
    llm_node = loaded.model_node(node)
    try:
        given = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise SpecError("--input", f"not JSON: {exc.msg}", hint='e.g. --input \'{"instruction": "..."}\'') from None
    except RecursionError:
        raise SpecError("--input", "JSON nested too deeply", hint='e.g. --input \'{"instruction": "..."}\'') from None
    except ValueError as exc:  # an integer of more digits than Python reads
        raise SpecError("--input", f"unreadable JSON: {first_clause(exc)}",
                        hint="quote the number if it is text") from None
    if not isinstance(given, dict):
        raise SpecError("--input", f"must be a JSON object, got {type(given).__name__}",
                        hint='e.g. --input \'{"instruction": "..."}\'')
    if has_surrogate(input_json) or has_surrogate(json.dumps(given, ensure_ascii=False)):
        raise SpecError("--input", "not valid Unicode text (bytes that are not UTF-8, or a \\ud800-\\udfff escape)",
                        hint="pass UTF-8 text, and no lone surrogate escapes")
    samples, _ = sample_inputs(llm_node, loaded.graph)
    unknown = sorted(set(given) - set(samples) - {"demos"})
    if unknown:  # a typo would otherwise render the sample value in its place, silently
        raise SpecError("--input", f"node '{node}' has no input {', '.join(map(repr, unknown))}",
                        hint=f"its inputs: {', '.join(sorted(samples))} (and demos)")
    template = TemplateStore(loaded.prompts_dir).get(llm_node.template)
    variables = {name: given.get(name, sample) for name, sample in samples.items()}
    variables.update(instructions=llm_node.instructions or template.default_instructions,
                     demos=given.get("demos", []))
    if llm_node.program:  # the tuned prompt: the program's instructions and demos
        from codeclm.programs.optimize import program_prompt

        variables["instructions"], demos = program_prompt(llm_node.program)
        variables["demos"] = given.get("demos", demos)
    click.echo(json.dumps(template.render(variables), indent=2, ensure_ascii=False))


@main.command()
@click.argument("spec", type=click.Path())
@click.option("--mermaid", is_flag=True, help="Print the graph as a Mermaid flowchart instead of words.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field first.")
@reports_errors
def graph(spec: str, mermaid: bool, overrides: tuple[str, ...]) -> None:
    """Print SPEC's graph: nodes, models, what each reads, loops and outputs (or Mermaid)."""
    from codeclm.programs.lang.describe import mermaid as as_mermaid
    from codeclm.programs.lang.describe import words

    loaded = _load(spec, overrides, roles=())
    click.echo(as_mermaid(loaded.graph) if mermaid else words(loaded.graph))


@main.group()
def cache() -> None:
    """Inspect, clear, export and import the call cache."""


@cache.command("stats")
@click.option("--cache-dir", type=FOLDER, help=SHARED_CACHE_HELP)
@reports_errors
def cache_stats(cache_dir: Path | None) -> None:
    """Entries, size on disk and entries per model (reads the cache read-only)."""
    from codeclm.programs.models.cache import CallCache, default_cache_dir

    cache = CallCache(cache_dir or default_cache_dir(), "read")
    try:
        stats = cache.stats()
    finally:
        cache.close()
    failures = f" (and {stats['failures']} failed calls, kept for replay)" if stats["failures"] else ""
    click.echo(f"{stats['folder']}: {stats['entries']} entries{failures}, {stats['bytes'] / 1e6:.1f} MB")
    for model, (answers, failed) in sorted(stats["per_model"].items()):
        click.echo(f"  {model}: {answers}" + (f" (and {failed} failed calls)" if failed else ""))


@cache.command("clear")
@click.option("--model", help="Clear only this model's entries (as `cache stats` names it).")
@click.option("--cache-dir", type=FOLDER, help=SHARED_CACHE_HELP)
@click.option("--yes", is_flag=True, help="Do not ask before deleting.")
@reports_errors
def cache_clear(model: str | None, cache_dir: Path | None, yes: bool) -> None:
    """Delete cached completions: all, or one model's. A folder that holds no cache, or a
    model it holds no entry of, exits 2 and deletes nothing."""
    from codeclm.programs.models.cache import CallCache, default_cache_dir

    folder = (cache_dir or default_cache_dir()).expanduser()
    _check_clear(folder, model)
    if not yes:
        what = f"{model}'s cached completions" if model else "every cached completion"
        click.confirm(f"Delete {what} in {folder}?", abort=True)
    cache = CallCache(folder)
    try:
        removed = cache.clear(model)
    finally:
        cache.close()
    click.echo(f"removed {removed} entries (answers, and failed calls kept for replay)")


def _check_clear(folder: Path, model: str | None) -> None:
    """What `cache clear` is to clear is there (SpecError): a cache in the folder (a mistyped --cache-dir
    made an empty one and said "removed 0 entries"), and entries of the model named."""
    from codeclm.programs.errors import SpecError
    from codeclm.programs.models.cache import DB_NAME, CallCache

    if not (folder / DB_NAME).is_file():
        raise SpecError(str(folder), f"no cache here (no {DB_NAME}): nothing to clear",
                        hint="name the cache folder with --cache-dir (the one a run used is in its manifest), "
                             "or leave it out for the default")
    if model is None:
        return
    cache = CallCache(folder, "read")
    try:
        models = cache.stats()["per_model"]
    finally:
        cache.close()
    if model not in models:
        raise SpecError("--model", f"the cache in {folder} holds no entry of model '{model}'",
                        hint=f"name one it holds, as `cache stats` does: {', '.join(sorted(models)) or 'none'}")


@cache.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cache-dir", type=FOLDER,
              help="Cache folder (default: the one the run's manifest names).")
@reports_errors
def cache_export(run_dir: Path, bundle: Path, cache_dir: Path | None) -> None:
    """Write exactly the calls RUN_DIR used to BUNDLE (JSONL, .gz compresses), for offline replay."""
    from codeclm.programs.artifacts.bundle import export_bundle

    count = export_bundle(run_dir, bundle, cache_dir)
    if not count:
        click.secho(f"nothing exported: the cache holds none of {run_dir}'s calls (cleared, or another --cache-dir?); "
                    f"{bundle} not written", fg="yellow", err=True)
        sys.exit(1)
    click.echo(f"exported {count} calls to {bundle}")


@cache.command("import")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cache-dir", type=FOLDER, help=SHARED_CACHE_HELP)
@reports_errors
def cache_import(bundle: Path, cache_dir: Path | None) -> None:
    """Load a bundle written by `cache export` into the cache; says how many calls were new to it."""
    from codeclm.programs.artifacts.bundle import import_bundle

    imported = import_bundle(bundle, cache_dir)
    click.echo(f"imported {imported.calls} calls: {imported.new} new, {imported.calls - imported.new} the cache "
               "held already")


def _shared(totals: dict[str, Any]) -> str:
    """Calls the run asked again and answered once (ModelHub's `shared`), where there were any."""
    shared = totals.get("shared") or 0
    return f", {shared} asked again and answered by the same call" if shared else ""


def _summary(result: Any, report: Path | None = None) -> None:
    """What a run made and spent, its warnings, and exit 1 when its dataset is empty for a reason."""
    from codeclm.programs.artifacts.rundata import declares_dataset, outcomes, resolved_spec

    counts, totals = result.counts, result.manifest["totals"]
    kept = counts.get("kept", 0)
    counted = outcomes(result.manifest, counts)  # as the report, `inspect` and the dataset card count them
    upstream, removed = counted.get("failed upstream", 0), counted.get("filtered out", 0)
    declared = list(resolved_spec(result.manifest).get("outputs") or {})
    pairs = declares_dataset(result.manifest)  # else its outputs are not pairs, and nothing is "kept"
    click.secho(_counts_line(counts, upstream, removed, pairs), bold=True)
    for name, row in result.calls.items():
        click.echo(f"  {name:<28} calls {row['calls']:>5}  cached {row['cache_hits']:>5}  "
                   f"shared {row.get('shared', 0):>5}  failed {row['failures']:>3}  "
                   f"tokens {row['prompt_tokens']}+{row['completion_tokens']}"
                   + (f"  ${row['cost_usd']:.4f}" if row["cost_usd"] else ""))
    cost = f", ${totals['cost_usd']:.4f} spent, ${totals['saved_usd']:.4f} saved by the cache" \
        if totals["cost_usd"] or totals["saved_usd"] else ""
    click.echo(f"model calls {totals['calls']}, cache hits {totals['cache_hits']}{_shared(totals)}{cost}; "
               f"{result.manifest['wall_seconds']:.1f}s")
    if pairs:
        click.echo(f"output: {result.out / 'dataset.jsonl'} ({kept} pair{'' if kept == 1 else 's'})")
    else:  # a spec without a dataset: its outputs are not pairs
        click.echo("outputs: " + ", ".join(str(result.out / f"{name}.jsonl") for name in declared))
    if report is not None:
        click.echo(f"report: {report}")
    if result.manifest.get("stopped") == "budget":
        _budget_stop(result)
    _warnings(result)
    if pairs and kept == 0 and (sum(counts.values()) or upstream or removed):
        where = "instructions.jsonl for each decision and failure" if (result.out / "instructions.jsonl").is_file() \
            else "failures.jsonl for each failure, and the run's outputs for each decision"
        how = ", ".join(["dropped", *(["filtered out"] if removed else []),
                         *(["left out by the dataset's where:"] if counts.get("ok") else [])]) + " or failed"
        click.secho(f"no pairs kept: every record was {how}; see {where}", fg="red", err=True)
        sys.exit(1)


def _counts_line(counts: dict[str, int], upstream: int, removed: int, pairs: bool) -> str:
    """kept | dropped | failed, then the dataset node's other statuses (a loop's own exits; 'not in the
    dataset' for the records its where: left out), what filters removed, what went over a limit."""
    from codeclm.programs.artifacts.rundata import status_label

    others = "".join(f" | {status_label(status, pairs)} {count}"
                     for status, count in counts.items() if status not in ("kept", "dropped", "failed", "over_limit"))
    return (f"kept {counts.get('kept', 0)} | dropped {counts.get('dropped', 0)} | failed {counts.get('failed', 0)}"
            + (f" (and {upstream} upstream)" if upstream else "") + others
            + (f" | filtered out {removed}" if removed else "")
            + (f" | over limit {counts['over_limit']}" if counts.get("over_limit") else ""))


def _warnings(result: Any) -> None:
    """Lines without messages, answers cut off at max_tokens, the most common failures."""
    for output, count in result.manifest["counts"].get("without_messages", {}).items():
        click.secho(f"warning: {count} line(s) of {output}.jsonl have no `messages`: an expression in them read a "
                    "node that did not run for those records (e.g. a loop body node skipped in the last "
                    "iteration); read a value every record has (state.X, a node before the loop)",
                    fg="yellow", err=True)
    cut = {name: row["truncated"] for name, row in result.calls.items() if row.get("truncated")}
    if cut:  # kept as answered (and cached): the user decides whether a longer answer is worth it
        settings = " or ".join(f"models.{role}.max_tokens" for role in sorted({n.rpartition("/")[2] for n in cut}))
        click.secho(f"warning: {sum(cut.values())} answer(s) stopped at max_tokens ("
                    + ", ".join(f"{name} {count}" for name, count in cut.items()) + "), and were parsed as they "
                    f"are; to let them finish, raise {settings} (the calls it changes are made again, the others "
                    "stay cached)", fg="yellow", err=True)
    from codeclm.programs.artifacts.rundata import top_failures

    reasons, _ = top_failures(result.manifest, 3)
    if reasons:
        click.echo("most common failures:")
        for reason, count in reasons:
            click.echo(f"  {count:>4} x {reason}")


def _budget_stop(result: Any) -> None:
    """A run its budget stopped: what it spent, where the data so far is, how to go on; exit 4."""
    from codeclm.programs.errors import EXIT_BUDGET

    budget = result.manifest["budget"]
    spent = budget["spent"]
    limit = budget["reached_limit"]  # budget.usd, budget.tokens or budget.per_model.ROLE.usd|tokens
    role = limit.removeprefix("budget.per_model.").rpartition(".")[0] if "per_model" in limit else None
    by_role = spent["per_model"].get(role, {"tokens": 0, "usd": 0.0}) if role else None
    click.secho(f"stopped: budget reached ({budget['reached']}); with the calls then in flight, new calls used "
                f"{spent['tokens']:,} tokens, ${spent['usd']:.4f}"
                + (f" ({role}: {by_role['tokens']:,} tokens, ${by_role['usd']:.4f})" if by_role else "")
                + f"; {budget['calls_not_made']} calls not started" + _nodes_not_started(budget), fg="yellow", err=True)
    # --refresh calls everything again: its advice to resume must drop it, or the rerun pays for every call again
    rerun = "without --refresh and with a higher budget" if result.manifest["options"]["cache_mode"] == "refresh" \
        else "with a higher budget"
    cut = _budget_failures(result.out / "failures.jsonl")
    click.secho(f"the data so far is in {result.out} (manifest: stopped: budget"
                + (f"; the {cut} record(s) the budget cut short are in failures.jsonl as 'not called: budget reached'"
                   if cut else "")
                + f"). Rerun {rerun} ({_raise_limit(limit)}) to resume: cached calls are free", fg="yellow", err=True)
    sys.exit(EXIT_BUDGET)


def _nodes_not_started(budget: dict[str, Any]) -> str:
    """The mixes and dedups the stop kept from starting: the records no call was refused for."""
    nodes = budget["nodes_not_started"]
    return f"; nodes not started: {', '.join(nodes)} and those after them (a mix or dedup draws on whole " \
        "collections, which the stop may have cut short)" if nodes else ""


def _budget_failures(failures: Path) -> int:
    """How many lines of failures.jsonl a budget stop wrote (none when every started record finished)."""
    if not failures.is_file():
        return 0
    with failures.open(encoding="utf-8") as lines:
        return sum("not called: budget reached" in line for line in lines)


def _raise_limit(limit: str) -> str:
    """How to raise the limit that stopped a run (not another one, which would stop it again)."""
    option = {"budget.usd": "--budget-usd or ", "budget.tokens": "--budget-tokens or "}.get(limit, "")
    return f"{option}--set {limit}=..."


def _dry_run(spec: Any, options: Any, as_json: bool = False) -> None:
    from codeclm.programs.engine.estimate import estimate

    found = estimate(spec, options).as_dict()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows, total = found["rows"], found["total"]

    def usd(value: float | None, row: dict[str, Any] | None = None) -> str:
        if value is None:
            return "no price"
        return f"${value:.4f}" if value or row is None or row["price_from"] != "self-hosted: $0" else "$0 (self)"

    click.echo(f"{'node/model':<26} {'calls<=':>7} {'cached':>6} {'in tok/call':>11} {'out tok/call':>14} "
               f"{'tokens':>10} {'est. $':>10} {'$ at most':>10}  model (price)")
    for row in rows:
        out = f"{row['output_tokens_per_call']}/{row['output_tokens_per_call_max']}"
        click.echo(f"{row['node'] + '/' + row['role']:<26} {row['calls_upper_bound']:>7} {row['cached']:>6} "
                   f"{row['input_tokens_per_call']:>11} {out:>14} {row['input_tokens'] + row['output_tokens']:>10,} "
                   f"{usd(row['usd'], row):>10} {usd(row['usd_max'], row):>10}  {row['model']} ({row['price_from']})")
    click.echo(f"{'total':<26} {total['calls_upper_bound']:>7} {total['cached']:>6} {'':>11} {'':>14} "
               f"{total['input_tokens'] + total['output_tokens']:>10,} {usd(total['usd']):>10} "
               f"{usd(total['usd_max']):>10}")
    click.echo(f"tokens: input by {found['tokenizer']} on each node's rendered prompts (sample inputs where the cache "
               f"walk did not reach it); output expected from cached completions, else "
               f"{found['expected_output_share']:.0%} of max_tokens (after '/': max_tokens, the upper bound). Only "
               "calls not cached are counted; calls are an upper bound (a loop may stop early).")
    if total["unpriced"]:
        click.echo(f"no price for {', '.join(total['unpriced'])}: not in LiteLLM's cost map; give the role a "
                   "price: {input_per_mtok: ..., output_per_mtok: ...} to count it")
    if found.get("budget"):
        click.echo(_against_budget(found["budget"], total))


def _against_budget(budget: dict[str, Any], total: dict[str, Any]) -> str:
    """The spec's budget next to the estimate: whether a run would likely stop at it."""
    parts, verdict = [], "fits" if "usd" in budget or "tokens" in budget else "checked per model during the run"
    tokens = total["input_tokens"] + total["output_tokens"]
    tokens_max = total["input_tokens"] + total["output_tokens_max"]
    for key, expected, most, show in (("usd", total["usd"], total["usd_max"], lambda v: f"${v:,.4f}"),
                                      ("tokens", tokens, tokens_max, lambda v: f"{v:,} tokens")):
        if key in budget:
            parts.append(f"{show(budget[key])} (estimate {show(expected)}, at most {show(most)})")
            if expected >= budget[key]:
                verdict = "a run would likely stop at it (exit 4)"
            elif most >= budget[key] and verdict == "fits":
                verdict = "fits the expected figure, not the upper bound"
    if budget.get("per_model"):
        parts.append(f"per model {json.dumps(budget['per_model'])}")
    return f"budget: {'; '.join(parts)}: {verdict}"


if __name__ == "__main__":
    main()

"""The checks a command makes before anything runs (`validate`, and `run`, `evaluate`, `compare`, `dry-run`
before their first call): every file the spec reads is there, every template renders. Kept apart from
the engine's DSPy modules so that `validate`, run after each edit of a spec, does not import DSPy."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError, SpecErrors
from ..lang.nodes import SourceNode
from ..lang.spec import Spec
from ..lang.templates import TemplateStore
from .samples import AnyValue, output_samples, sample_inputs


def check_source_files(spec: Spec, seeds: Path | None) -> None:
    """Every file the spec reads is there before anything runs, each error at its `path:` line (or
    its --set); `--seeds FILE` replaces the spec's one file, which then need not exist."""
    if seeds is not None:
        check_seeds_option(spec)
    elif len(spec.missing_files) == 1:
        raise spec.missing_files[0]
    elif spec.missing_files:
        raise SpecErrors(spec.missing_files)


def check_seeds_option(spec: Spec) -> None:
    """`--seeds FILE` replaces the one file the spec reads: with none or several, it is exit 2 (it was
    ignored when every source is written in the spec)."""
    files = [n.name for n in spec.graph.nodes.values() if isinstance(n, SourceNode) and n.path is not None]
    if not files:
        raise SpecError("--seeds", "the spec reads no file: its sources' records are written in it (records:)",
                        hint="drop --seeds, or give a source a path: to read a file")
    if len(files) > 1:
        raise SpecError("--seeds", f"the spec reads {len(files)} files ({', '.join(files)}): which one --seeds "
                        "replaces is not clear", hint=f"--set nodes.{files[0]}.path=FILE, for each file to replace")


def check_templates(spec: Spec) -> None:
    """Render every llm node's template with sample inputs, without and with a demo (a demo holds
    the inputs and the outputs): undefined variables, bad roles, templates that render nothing."""
    store = TemplateStore(spec.prompts_dir)
    for node in spec.graph.model_nodes():
        template = store.get(node.template)
        inputs, unknown = sample_inputs(node, spec.graph)
        outputs, unknown_outputs = output_samples(node, node.call_outputs())
        instructions = node.instructions or template.default_instructions
        first_error: SpecError | None = None
        # a value whose kind the spec does not say: first as AnyValue, then as a "<name>" text (|tojson)
        for stand_in in (AnyValue, None):
            given = {**inputs, **{n: stand_in(n) for n in unknown}} if stand_in else inputs
            demo = {**given, **outputs, **({n: stand_in(n) for n in unknown_outputs} if stand_in else {})}
            try:
                for demos in ([], [demo]):
                    template.render({**given, "instructions": instructions, "demos": demos})
                break
            except SpecError as exc:
                first_error = first_error or exc
                if not (unknown & template.variables or unknown_outputs):
                    raise
        else:
            raise first_error  # type: ignore[misc]

"""What codeclm ships to start from: its specs, prompts and seeds, named without a path
(`codeclm run demo`) or copied into a folder of the user's (`codeclm init`).

They live beside `cli.py` and `programs/`: in a clone at the repository root, and in an
installed package inside the `codeclm` package (pyproject.toml maps one to the other).
"""

from __future__ import annotations

from pathlib import Path

from .artifacts.store import unwritable_reason
from .errors import SpecError, SpecErrors

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
STARTER_FOLDERS = ("specs", "prompts", "seeds", "docs")
SHIPPED_SPEC_FIX = "a shipped spec: pass --set KEY=VALUE, or `codeclm init DIR` for an editable copy"
FIRST_STEPS = """\
# A codeclm project

Made by `codeclm init`. Everything here is yours to edit; nothing is read from codeclm's own copy.

- `specs/`: pipelines in YAML. Start with `demo.yaml` (small, on the embedded model), then
  `codeclm.yaml` (the CodecLM paper); the others are Self-Instruct, Evol-Instruct, AlpaGasus and
  critique-rewrite, each in YAML and templates alone.
- `prompts/`: one Jinja template per model call; the specs name them.
- `seeds/`: example seed instructions. Replace `example.jsonl` with your own (JSONL with an
  `instruction` field, CSV, or one instruction per line).
- `docs/spec.md`: the spec language, every node type, key, parser and expression helper, with
  examples: what to read to change a pipeline or write your own.

What to edit first:

1. Your seeds: `seeds/example.jsonl`, or point a spec at your file with `--seeds FILE`.
2. The models: `models:` in the spec (`local` is the embedded SmolLM2; for useful data use a capable
   model, e.g. `openai/gpt-4o-mini` with OPENAI_API_KEY set, or `hosted_vllm/NAME` with `api_base`).
3. Run and look:

       codeclm validate specs/demo.yaml
       codeclm run specs/demo.yaml --dry-run
       codeclm run specs/demo.yaml
       codeclm inspect runs/demo
"""


def builtin_specs() -> dict[str, Path]:
    """Shipped specs by name (the file name without .yaml)."""
    return {path.stem: path for path in sorted((PACKAGE_ROOT / "specs").glob("*.yaml"))}


def resolve_spec(name_or_path: str) -> Path:
    """A path as given when it is a file; else a shipped spec's name (a folder named `demo`, as
    `codeclm init demo` makes, does not hide the shipped demo); else the path (whose loader then
    says what is wrong, listing the shipped names)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in {".yaml", ".yml"} or len(path.parts) > 1:
        return path
    return builtin_specs().get(name_or_path, path)


def told_not_to_edit(spec: Path, errors: list[SpecError]) -> list[SpecError]:
    """`errors` of loading `spec`; where it is a shipped spec (inside the package: site-packages, once
    installed), each located in it says how to change it without editing it, a fix once for all checks."""
    if spec.resolve() not in {path.resolve() for path in builtin_specs().values()}:
        return errors
    for error in errors:
        if error.file == str(spec):
            error.hint = f"{error.hint} ({SHIPPED_SPEC_FIX})" if error.hint else SHIPPED_SPEC_FIX
    return errors


def starter_files() -> list[Path]:
    """Every shipped file `init` copies, relative to the package root."""
    files = []
    for folder in STARTER_FOLDERS:
        for path in sorted((PACKAGE_ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files.append(path.relative_to(PACKAGE_ROOT))
    return files


def init_project(destination: Path) -> tuple[list[Path], list[Path]]:
    """Copy the shipped specs, prompts, seeds and spec reference, and a README of first steps, into
    `destination`: every one that is missing there. A file that exists is the user's and is kept as it is
    (never overwritten, never deleted), so `init` run again restores what was deleted. Returns the files
    written and kept, relative to `destination`."""
    destination = _project_folder(Path(destination).expanduser())
    planned: dict[Path, Path | None] = {relative: PACKAGE_ROOT / relative for relative in starter_files()}
    planned[Path("README.md")] = None  # written from FIRST_STEPS
    # A folder where a file belongs, or a file where a folder belongs, refuses the whole init, before anything
    # is written: writing the rest would leave a project whose specs name a template or folder that is not
    # there, failing at its first run far from the cause; and since init fills in only what is missing,
    # refusing costs nothing: move that one path aside and run init again.
    _refuse_clashes(destination, list(planned))
    kept = sorted(relative for relative in planned if _taken(destination / relative))
    missing = sorted(set(planned) - set(kept))
    for relative in missing:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        source = planned[relative]
        if source is None:
            target.write_text(FIRST_STEPS, encoding="utf-8")
        else:
            target.write_bytes(source.read_bytes())
    return missing, kept


def _project_folder(destination: Path) -> Path:
    """`destination` if a project may be started there; a SpecError if not."""
    if destination.exists() and not destination.is_dir():
        raise SpecError(str(destination), "is a file, not a folder", hint="name a new or existing folder")
    resolved = destination.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():  # as `run` refuses them
        raise SpecError(str(destination), "refusing to start a project in the filesystem root or your home folder",
                        hint="name a folder for it, e.g. `codeclm init my-project`")
    problem = unwritable_reason(resolved)
    if problem:
        raise SpecError(str(destination), f"cannot be written: {problem}", hint="name another folder")
    return destination


def _taken(path: Path) -> bool:
    """Something is at `path`: a file, or a link (even a broken one: writing through it would write
    wherever it points)."""
    return path.exists() or path.is_symlink()


def _refuse_clashes(destination: Path, planned: list[Path]) -> None:
    """SpecErrors naming every path where a folder stands in for one of init's files, or a file (or a
    broken link) for one of its folders."""
    errors = []
    folders = sorted({parent for relative in planned for parent in relative.parents if parent != Path(".")})
    for folder in folders:
        path = destination / folder
        if _taken(path) and not path.is_dir():
            what = "is a broken link" if not path.exists() else "is a file"
            errors.append(SpecError(str(path), f"{what}, where codeclm init puts a folder",
                                    hint="move or rename it, then run `codeclm init` again"))
    for relative in planned:
        path = destination / relative
        if path.is_dir():
            errors.append(SpecError(str(path), "is a folder, where codeclm init puts a file",
                                    hint="move or rename it, then run `codeclm init` again"))
    if errors:
        raise SpecErrors(errors)

"""What codeclm ships to start from: `codeclm init` and shipped specs named without a path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from codeclm.cli import main
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.evaluate import pairwise_judge
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.local_model import LocalModel, WorkerDied
from codeclm.programs.starter import PACKAGE_ROOT, builtin_specs, starter_files
from codeclm.programs.tuning.config import pick_metric


def test_init_writes_an_editable_project_that_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init", "project"])
    assert result.exit_code == 0, result.output
    project = tmp_path / "project"
    for relative in starter_files():
        assert (project / relative).read_bytes() == (PACKAGE_ROOT / relative).read_bytes()
    assert "What to edit first" in (project / "README.md").read_text()
    monkeypatch.chdir(project)
    for spec in sorted((project / "specs").glob("*.yaml")):
        checked = CliRunner().invoke(main, ["validate", str(spec.relative_to(project))])
        assert checked.exit_code == 0, (spec.name, checked.output)
        # the copy reads its own prompts and seeds, not codeclm's
        prompts = (spec.parent / yaml.safe_load(spec.read_text())["prompts"]).resolve()
        assert prompts == (project / "prompts").resolve()


def test_init_s_next_step_quotes_a_folder_with_spaces_for_the_shell(tmp_path):
    """`next: cd /tmp/new proj é && ...` failed when pasted into a shell."""
    import shlex
    import subprocess

    folder = tmp_path / "new proj é"
    result = CliRunner().invoke(main, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    command = result.output.splitlines()[-1].removeprefix("next: ")
    assert command == f"cd {shlex.quote(str(folder))} && codeclm run specs/demo.yaml"
    cd = command.partition(" && ")[0]
    assert subprocess.run(["sh", "-c", f"{cd} && pwd"], capture_output=True, text=True).stdout.strip() == str(folder)


def test_init_writes_what_is_missing_and_keeps_what_you_have(tmp_path):
    """init into a folder holding some of its files refused as a whole: a deleted spec could not be had back."""
    project = tmp_path / "project"
    (project / "specs").mkdir(parents=True)
    mine = project / "specs" / "demo.yaml"
    mine.write_text("my own spec\n")
    (project / "notes.txt").write_text("mine\n")
    result = CliRunner().invoke(main, ["init", str(project)])
    assert result.exit_code == 0, result.output
    assert "kept 1 file you have: specs/demo.yaml" in result.output
    assert mine.read_text() == "my own spec\n" and (project / "notes.txt").read_text() == "mine\n"
    for relative in starter_files():
        if relative != Path("specs/demo.yaml"):
            assert (project / relative).read_bytes() == (PACKAGE_ROOT / relative).read_bytes()
    (project / "specs" / "codeclm.yaml").unlink()  # deleted by the user: init again restores it alone
    (project / "README.md").write_text("my readme\n")
    again = CliRunner().invoke(main, ["init", str(project)])
    assert again.exit_code == 0, again.output
    assert again.output.startswith(f"wrote 1 file to {project}: specs (codeclm.yaml)\n")
    assert f"kept {len(starter_files())} files you have: README.md, " in again.output
    assert (project / "specs" / "codeclm.yaml").read_bytes() == (PACKAGE_ROOT / "specs" / "codeclm.yaml").read_bytes()
    assert (project / "README.md").read_text() == "my readme\n" and mine.read_text() == "my own spec\n"


def test_init_refuses_a_folder_where_a_file_belongs_and_a_file_where_a_folder_belongs(tmp_path):
    """Each such path is named, exit 2, and nothing at all is written: fix it and init again."""
    project = tmp_path / "project"
    (project / "specs" / "demo.yaml").mkdir(parents=True)  # a folder where the demo spec goes
    (project / "prompts").write_text("not a folder\n")  # a file where the prompts go
    result = CliRunner().invoke(main, ["init", str(project)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{project / 'prompts'}: is a file, where codeclm init puts a folder" in result.output
    assert f"{project / 'specs' / 'demo.yaml'}: is a folder, where codeclm init puts a file" in result.output
    assert "fix: move or rename it, then run `codeclm init` again" in result.output
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == ["prompts", "specs", "specs/demo.yaml"]
    assert (project / "prompts").read_text() == "not a folder\n"
    alone = tmp_path / "alone"  # the file alone: init wrote the specs, then stopped at mkdir (exit 1)
    alone.mkdir()
    (alone / "prompts").write_text("not a folder\n")
    result = CliRunner().invoke(main, ["init", str(alone)])
    assert result.exit_code == 2 and "is a file, where codeclm init puts a folder" in result.output
    assert [p.name for p in alone.iterdir()] == ["prompts"]
    (alone / "prompts").unlink()
    (alone / "prompts").symlink_to(tmp_path / "nowhere")  # a broken link: not "a file"
    result = CliRunner().invoke(main, ["init", str(alone)])
    assert result.exit_code == 2 and "prompts: is a broken link, where codeclm init puts a folder" in result.output


def test_init_into_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(main, ["init", str(target)])
    assert result.exit_code == 2 and "is a file" in result.output


def test_a_shipped_spec_is_named_without_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no specs/ folder here
    assert {"demo", "codeclm"} <= set(builtin_specs())
    result = CliRunner().invoke(main, ["validate", "demo"])
    assert result.exit_code == 0, result.output


def test_a_local_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("name: [broken\n")  # a file called demo, not the shipped spec
    result = CliRunner().invoke(main, ["validate", "demo"])
    assert result.exit_code == 2 and "invalid YAML" in result.output


def test_an_unknown_name_lists_the_shipped_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", "nosuch"])
    assert result.exit_code == 2 and "demo" in result.output and "codeclm init" in result.output


def test_a_folder_named_like_a_shipped_spec_does_not_hide_it(tmp_path, monkeypatch):
    """`codeclm init demo` then `codeclm run demo` said "File 'demo' is a directory"."""
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["init", "demo"]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", "demo"])
    assert result.exit_code == 0 and "demo: valid." in result.output, result.output
    (tmp_path / "mine").mkdir()
    result = CliRunner().invoke(main, ["validate", "mine"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_missing_path_to_a_shipped_spec_names_it_by_name(tmp_path, monkeypatch):
    """`codeclm validate specs/codeclm.yaml`, as `--help` shows, from a folder with no specs/ (an installed
    codeclm) said only "cannot read file ... fix: check the path"."""
    monkeypatch.chdir(tmp_path)
    for given in ("specs/codeclm.yaml", "codeclm.yaml"):
        result = CliRunner().invoke(main, ["validate", given])
        assert result.exit_code == 2 and f"error: {given}: no such spec file" in result.output, result.output
        assert "fix: the shipped spec of that name is `codeclm validate codeclm` (by name, from any folder); " \
               "`codeclm init DIR` copies the specs to edit" in result.output
    result = CliRunner().invoke(main, ["validate", "specs/mine.yaml"])  # no shipped spec of that name
    assert result.exit_code == 2 and "fix: check the path" in result.output


def _names_only_a_checkout(hint: str) -> bool:
    """A hint sends an installed user to a file they do not have: a spec by path, docs/spec.md or the README
    without saying where it is (a checkout; `codeclm init DIR` copies the specs and the reference)."""
    return "specs/" in hint or ("docs/spec.md" in hint and "codeclm init" not in hint) \
        or ("README" in hint and "checkout" not in hint)


@pytest.mark.parametrize("text", [
    "- a list, not a mapping\n",
    "models: {strong: local}\nstages: []\n",
    "models: {strong: local}\n",
    "models: {strong: local}\nnodes: {seeds: {type: sourc}}\n",
    "models: {strong: gpt4}\nnodes: {seeds: {type: source, records: [{instruction: x}]}}\n",
])
def test_hints_name_what_an_installed_codeclm_has(tmp_path, text):
    """"see docs/spec.md and specs/codeclm.yaml", "(README: Models)": files a pip install does not put in
    the user's folder."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "mine.yaml"
    spec.write_text(text)
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(spec)
    errors = caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]
    hints = [error.hint for error in errors if error.hint]
    assert hints and not [hint for hint in hints if _names_only_a_checkout(hint)], hints


def test_evaluate_optimize_and_a_crash_name_what_an_installed_codeclm_has():
    with pytest.raises(SpecError) as caught:
        pairwise_judge(load_spec(builtin_specs()["self_instruct"]))  # no pairwise judge
    assert not _names_only_a_checkout(caught.value.hint), caught.value.hint
    with pytest.raises(SpecError) as caught:
        pick_metric(load_spec(builtin_specs()["demo"]), "encode", "nope")
    assert "no metric named 'nope'" in caught.value.message and not _names_only_a_checkout(caught.value.hint)
    crashed = LocalModel._crashed(None, WorkerDied(-9, ""))  # type: ignore[arg-type]  # reads nothing of self
    assert not _names_only_a_checkout(str(crashed).partition("fix:")[2]), str(crashed)


def test_an_error_in_a_shipped_spec_says_how_to_change_it_without_editing_it(tmp_path, monkeypatch):
    """`codeclm run demo --set models.strong.model=hosted_vllm/x` said `.../site-packages/codeclm/specs/demo.yaml:14:
    ... fix: e.g. api_base: ...`: a file inside the installed package, not the user's to edit."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "demo", "--set", "models.strong.model=hosted_vllm/x", "--dry-run"])
    assert result.exit_code == 2 and f"{builtin_specs()['demo']}:" in result.output, result.output
    assert "fix: e.g. api_base: http://127.0.0.1:8000/v1 (a shipped spec: pass --set KEY=VALUE, or `codeclm init " \
           "DIR` for an editable copy)" in result.output
    assert CliRunner().invoke(main, ["init", "mine"]).exit_code == 0  # the copy is the user's: no such clause
    result = CliRunner().invoke(main, ["run", "mine/specs/demo.yaml", "--set", "models.strong.model=hosted_vllm/x",
                                       "--dry-run"])
    assert result.exit_code == 2 and "fix: e.g. api_base: http://127.0.0.1:8000/v1\n" in result.output


def test_the_reference_init_copies_names_only_what_the_project_has_or_says_where_it_is(tmp_path):
    """docs/spec.md, copied into a project, sent the user to "(README: Models)" (the project's README is
    init's first steps) and to tests/test_spec_reference.py (a checkout's)."""
    assert CliRunner().invoke(main, ["init", str(tmp_path)]).exit_code == 0
    text = (tmp_path / "docs" / "spec.md").read_text()
    assert "tests/" not in text
    for mention in re.finditer(r"\bREADME: ", text):  # a section of a README: codeclm's, said where it is
        assert text[mention.start() - len("codeclm's "):mention.start()] == "codeclm's ", text[mention.start() - 80:]
    assert "on its project page\nor as README.md in a checkout" in text

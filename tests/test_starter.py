"""What codeclm ships to start from: `codeclm init` and shipped specs named without a path."""

from __future__ import annotations

import yaml
from click.testing import CliRunner
from codeclm.cli import main
from codeclm.programs.starter import PACKAGE_ROOT, builtin_specs, starter_files


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


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path):
    project = tmp_path / "project"
    (project / "specs").mkdir(parents=True)
    mine = project / "specs" / "demo.yaml"
    mine.write_text("my own spec\n")
    result = CliRunner().invoke(main, ["init", str(project)])
    assert result.exit_code == 2 and "would overwrite 1 existing file" in result.output
    assert "Traceback" not in result.output
    assert mine.read_text() == "my own spec\n"
    assert sorted(p.name for p in project.rglob("*")) == ["demo.yaml", "specs"]


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

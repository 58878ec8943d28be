"""The command line: fast help, render, validate, cache commands; sandboxed templates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.errors import SpecError
from codeclm.programs.lang.templates import TemplateStore
from codeclm.programs.models.cache import CallCache
from conftest import REPO, base_spec, write_spec


def test_help_does_not_import_dspy():
    code = "import sys, cli; from click.testing import CliRunner; CliRunner().invoke(cli.main, ['--help']); " \
           "print('dspy' in sys.modules, 'llama_cpp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False False", done.stderr


def test_render_prints_the_exact_messages_with_a_seed_taken_literally():
    result = CliRunner().invoke(cli.main, ["render", str(REPO / "specs" / "codeclm.yaml"), "encode",
                                           "--input", json.dumps({"instruction": "Say {{ 7*7 }} {% raw %}"})])
    assert result.exit_code == 0, result.output
    messages = json.loads(result.output)
    assert messages[0]["role"] == "system" and "instruction analyzer" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Instruction: Say {{ 7*7 }} {% raw %}"}


def test_render_unknown_stage_exits_2():
    result = CliRunner().invoke(cli.main, ["render", str(REPO / "specs" / "codeclm.yaml"), "nope"])
    assert result.exit_code == 2 and "llm nodes:" in result.output


def test_validate_every_shipped_spec():
    for spec in (REPO / "specs").glob("*.yaml"):
        result = CliRunner().invoke(cli.main, ["validate", str(spec)])
        assert result.exit_code == 0, (spec, result.output)


def test_cache_stats_clear(tmp_path, seeds_file, scripted):
    scripted(write_spec(tmp_path, base_spec(seeds_file)))
    cache_dir = str(scripted.cache_dir)
    stats = CliRunner().invoke(cli.main, ["cache", "stats", "--cache-dir", cache_dir])
    assert "scripted/strong" in stats.output and "scripted/target" in stats.output
    cleared = CliRunner().invoke(cli.main, ["cache", "clear", "--model", "scripted/target", "--yes",
                                            "--cache-dir", cache_dir])
    assert cleared.exit_code == 0
    stats = CliRunner().invoke(cli.main, ["cache", "stats", "--cache-dir", cache_dir])
    assert "scripted/target" not in stats.output and "scripted/strong" in stats.output
    cache = CallCache(scripted.cache_dir)
    cache.put_failure("f" * 64, "scripted/failing", "HTTP 500", strict=True)  # a model with failures only
    cache.close()
    stats = CliRunner().invoke(cli.main, ["cache", "stats", "--cache-dir", cache_dir])
    assert "scripted/failing: 0 (and 1 failed calls)" in stats.output, stats.output  # clear --model can name it
    cleared = CliRunner().invoke(cli.main, ["cache", "clear", "--model", "scripted/failing", "--yes",
                                            "--cache-dir", cache_dir])
    assert "removed 1 entries (answers, and failed calls kept for replay)" in cleared.output


def test_cache_clear_of_no_cache_or_an_unknown_model_says_so_and_makes_nothing(tmp_path, seeds_file, scripted):
    """A mistyped --cache-dir made an empty cache and said "removed 0 entries", as did an unknown --model."""
    typo = tmp_path / "typo"
    cleared = CliRunner().invoke(cli.main, ["cache", "clear", "--cache-dir", str(typo)], input="y\n")
    assert cleared.exit_code == 2 and f"{typo}: no cache here (no cache.db): nothing to clear" in cleared.output
    assert "fix: " in cleared.output and not typo.exists()
    scripted(write_spec(tmp_path, base_spec(seeds_file)))
    cleared = CliRunner().invoke(cli.main, ["cache", "clear", "--model", "hosted_vllm/nope", "--yes",
                                            "--cache-dir", str(scripted.cache_dir)])
    assert cleared.exit_code == 2, cleared.output
    assert "holds no entry of model 'hosted_vllm/nope'" in cleared.output
    assert "scripted/strong, scripted/target" in cleared.output


def test_templates_render_in_a_sandbox(tmp_path):
    (tmp_path / "evil.jinja").write_text('{% call message("user") %}{{ "".__class__.__mro__ }}{% endcall %}')
    with pytest.raises(SpecError) as caught:
        TemplateStore(tmp_path).get("evil.jinja").render({})
    assert "evil.jinja" in str(caught.value)


def test_template_with_an_unknown_role_is_an_error(tmp_path):
    (tmp_path / "role.jinja").write_text('{% call message("robot") %}hi{% endcall %}')
    with pytest.raises(SpecError, match="robot"):
        TemplateStore(tmp_path).get("role.jinja").render({})


def test_run_dry_run_replay_and_bundle_from_the_command_line(tmp_path, seeds_file):
    """The user's round trip over HTTP: run, count, replay, export, import elsewhere, replay."""
    from fake_openai_server import FakeOpenAIServer

    invoke = CliRunner().invoke
    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = str(write_spec(tmp_path, data))
        cache, out = str(tmp_path / "cache"), str(tmp_path / "run")
        ran = invoke(cli.main, ["run", spec, "-q", "--out", out, "--cache-dir", cache])
        assert ran.exit_code == 0, ran.output
        calls_made = server.completions
        dry = invoke(cli.main, ["run", spec, "--dry-run", "--cache-dir", cache])
    assert "kept" in ran.output and f"output: {out}/dataset.jsonl" in ran.output
    assert dry.exit_code == 0, dry.output
    total = next(line for line in dry.output.splitlines() if line.startswith("total")).split()
    assert total[0] == "total" and int(total[2]) >= calls_made  # every call is cached now

    replayed = invoke(cli.main, ["replay", out, "--out", str(tmp_path / "replay"), "--cache-dir", cache])
    assert replayed.exit_code == 0, replayed.output
    assert "dataset.jsonl identical to the recorded run" in replayed.output

    bundle = str(tmp_path / "bundle.jsonl.gz")
    exported = invoke(cli.main, ["cache", "export", out, bundle, "--cache-dir", cache])
    assert exported.exit_code == 0 and exported.output.startswith("exported ")
    elsewhere = str(tmp_path / "other-cache")
    imported = invoke(cli.main, ["cache", "import", bundle, "--cache-dir", elsewhere])
    assert imported.exit_code == 0 and imported.output.split()[1] == exported.output.split()[1]
    offline = invoke(cli.main, ["replay", out, "--out", str(tmp_path / "offline"), "--cache-dir", elsewhere])
    assert offline.exit_code == 0, offline.output
    assert "identical" in offline.output


def test_inspect_summarizes_a_run(tmp_path, seeds_file, scripted):
    result = scripted(write_spec(tmp_path, base_spec(seeds_file)))
    histories = [json.loads(line) for line in (result.out / "instructions.jsonl").read_text().splitlines()]
    kept = [h for h in histories if h["status"] == "kept"]
    shown = CliRunner().invoke(cli.main, ["inspect", str(result.out), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["instructions"] == len(histories) and report["status"]["kept"] == len(kept)
    assert sum(report["kept_by_iteration"].values()) == len(kept)
    assert report["kept_by_iteration"] == {str(i): sum(len(h["iterations"]) == i for h in kept)
                                           for i in sorted({len(h["iterations"]) for h in kept})}
    text = CliRunner().invoke(cli.main, ["inspect", str(result.out)])
    assert text.exit_code == 0 and "kept by iteration" in text.output
    missing = CliRunner().invoke(cli.main, ["inspect", str(tmp_path)])
    assert missing.exit_code == 2 and "manifest.json: not found: not a finished run" in missing.output


def test_replay_names_the_manifest_for_an_error_in_a_recorded_set(tmp_path):
    """The user typed no --set: an override the run recorded that no longer applies is the run's."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from codeclm.programs.artifacts.manifest import spec_sha

    demo = REPO / "specs" / "demo.yaml"
    manifest = {"spec": {"path": str(demo), "sha256": spec_sha(demo)},
                "options": {"cache_dir": str(tmp_path / "cache"), "overrides": ["params.no_such_param=3"],
                            "seeds": None, "limit": None}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    replayed = CliRunner().invoke(cli.main, ["replay", str(run_dir)])
    assert replayed.exit_code == 2, replayed.output
    assert f"{run_dir / 'manifest.json'} (the run's --set params.no_such_param)" in replayed.output
    assert "run it again rather than replay it" in replayed.output and "Traceback" not in replayed.output


def test_replay_of_a_run_whose_seeds_file_is_gone_says_to_put_it_back(tmp_path):
    """It said "pass --seeds FILE", an option replay does not have."""
    from codeclm.programs.artifacts.manifest import spec_sha

    run_dir, seeds, demo = tmp_path / "run", tmp_path / "gone.jsonl", REPO / "specs" / "demo.yaml"
    run_dir.mkdir()
    manifest = {"spec": {"path": str(demo), "sha256": spec_sha(demo)},
                "options": {"cache_dir": str(tmp_path / "cache"), "overrides": [], "seeds": str(seeds), "limit": None}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    replayed = CliRunner().invoke(cli.main, ["replay", str(run_dir)])
    assert replayed.exit_code == 2, replayed.output
    assert f"{seeds}: seed file not found\n  fix: put the file the run read back at {seeds}" in replayed.output
    assert "--seeds" not in replayed.output


def test_replay_of_a_run_whose_spec_source_file_is_gone_says_to_put_it_back(tmp_path, seeds_file):
    """The fix said "--set nodes.seeds.path=FILE (run: --seeds FILE)": a replay takes neither."""
    from codeclm.programs.artifacts.manifest import spec_sha

    spec = write_spec(tmp_path, base_spec(seeds_file))
    seeds_file.unlink()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    manifest = {"spec": {"path": str(spec), "sha256": spec_sha(spec)},
                "options": {"cache_dir": str(tmp_path / "cache"), "overrides": [], "seeds": None, "limit": None}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    replayed = CliRunner().invoke(cli.main, ["replay", str(run_dir)])
    assert replayed.exit_code == 2, replayed.output
    assert f"reads {seeds_file}, which does not exist\n  fix: put the file the run read back at that path" \
        in replayed.output
    assert "--seeds" not in replayed.output and "--set" not in replayed.output


def test_replay_says_first_what_changed_since_the_run(tmp_path, seeds_file):
    """An edited template made the replay miss (exit 3) blaming "an input upstream"; the manifest's hashes
    say which file changed, and the replay now says so before it starts."""
    import shutil

    from fake_openai_server import FakeOpenAIServer

    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    cache, run = str(tmp_path / "cache"), str(tmp_path / "run")
    with FakeOpenAIServer() as server:
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = str(write_spec(tmp_path, data))
        assert CliRunner().invoke(cli.main, ["run", spec, "-q", "--out", run, "--cache-dir", cache]).exit_code == 0
    same = CliRunner().invoke(cli.main, ["replay", run, "--cache-dir", cache])
    assert same.exit_code == 0 and "changed since the run" not in same.output, same.output
    with (prompts / "improve.jinja").open("a") as handle:
        handle.write("\nBe brief.\n")
    edited = CliRunner().invoke(cli.main, ["replay", run, "--out", str(tmp_path / "again"), "--cache-dir", cache])
    assert "warning: changed since the run: templates improve.jinja" in edited.output, edited.output


def run_on_the_fake_server(tmp_path: Path, seeds_file: Path, run: Path, cache: str) -> Path:
    """A small run of the base spec into `run`, every role on the fake OpenAI-compatible server; its spec."""
    from fake_openai_server import FakeOpenAIServer

    data = base_spec(seeds_file)
    with FakeOpenAIServer() as server:
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = write_spec(tmp_path, data)
        done = CliRunner().invoke(cli.main, ["run", str(spec), "-q", "--out", str(run), "--cache-dir", cache])
        assert done.exit_code == 0, done.output
    return spec


def test_replay_of_a_moved_spec_names_the_recorded_path_and_takes_the_same_file(tmp_path, seeds_file):
    """The spec moved since the run: replay said "cannot read file", never that the path was the manifest's
    nor what to do. Now it names the path and the fix; `--spec` takes the same file where it is now, and
    refuses another (a replay checks the recorded run)."""
    invoke = CliRunner().invoke
    cache, run = str(tmp_path / "cache"), tmp_path / "run"
    spec = run_on_the_fake_server(tmp_path, seeds_file, run, cache)
    moved = spec.rename(tmp_path / "moved.yaml")
    gone = invoke(cli.main, ["replay", str(run), "--cache-dir", cache])
    assert gone.exit_code == 2 and "Traceback" not in gone.output, gone.output
    assert f"{run / 'manifest.json'}: the run's spec file {spec.resolve()} is no longer there" in gone.output
    assert f"codeclm replay {run} --spec PATH" in gone.output
    again = invoke(cli.main, ["replay", str(run), "--spec", str(moved), "--cache-dir", cache])
    assert again.exit_code == 0 and "dataset.jsonl identical to the recorded run" in again.output, again.output
    moved.write_text(moved.read_text() + "# edited\n")
    edited = invoke(cli.main, ["replay", str(run), "--spec", str(moved), "--out", str(tmp_path / "edited"),
                               "--cache-dir", cache])
    assert edited.exit_code == 2 and f"{moved}: not the spec file the run used" in edited.output, edited.output
    assert "codeclm run SPEC --replay" in edited.output and not (tmp_path / "edited").exists()


def test_replay_refuses_a_spec_edited_where_the_run_left_it(tmp_path, seeds_file):
    """It warned, replayed the edited spec and exited 1 (DIFFERS), where `--spec` with the same file
    refused it: an edited spec is refused either way (exit 2, before any call), as documented."""
    invoke = CliRunner().invoke
    cache, run = str(tmp_path / "cache"), tmp_path / "run"
    spec = run_on_the_fake_server(tmp_path, seeds_file, run, cache)
    spec.write_text(spec.read_text() + "# edited\n")
    edited = invoke(cli.main, ["replay", str(run), "--out", str(tmp_path / "edited"), "--cache-dir", cache])
    assert edited.exit_code == 2, edited.output
    assert f"{spec.resolve()}: not the spec file the run used: edited since" in edited.output
    assert "codeclm run SPEC --replay" in edited.output and not (tmp_path / "edited").exists()
    # the way it offers to the spec as the run ran it: export, then a replay of the exported spec, no model
    assert f"`codeclm export {run} DIR`, then `codeclm run DIR/pipeline/spec.yaml --replay`" in edited.output
    exported = invoke(cli.main, ["export", str(run), str(tmp_path / "export"), "--cache-dir", cache])
    assert exported.exit_code == 0, exported.output
    replayed = invoke(cli.main, ["run", str(tmp_path / "export" / "pipeline" / "spec.yaml"), "--replay", "-q",
                                 "--no-report", "--out", str(tmp_path / "again"), "--cache-dir", cache])
    assert replayed.exit_code == 0, replayed.output
    assert (tmp_path / "again" / "dataset.jsonl").read_bytes() == (run / "dataset.jsonl").read_bytes()


def test_replay_of_a_run_written_in_the_older_encoding_finds_the_same_records(tmp_path, seeds_file):
    """Lines were json's `{"a": 1, "b": 2}` until orjson wrote them compact: a run recorded before said
    "DIFFERS" on replay (exit 1) and blamed codeclm's parsers. Records equal line for line are the same
    data, said so (exit 0); a record that differs still DIFFERS."""
    invoke = CliRunner().invoke
    cache, run = str(tmp_path / "cache"), tmp_path / "run"
    run_on_the_fake_server(tmp_path, seeds_file, run, cache)
    dataset = run / "dataset.jsonl"
    records = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert records and '":' in dataset.read_text() and '": ' not in dataset.read_text()  # compact today
    dataset.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))
    older = invoke(cli.main, ["replay", str(run), "--out", str(tmp_path / "r1"), "--cache-dir", cache])
    assert older.exit_code == 0 and "holds the same records as the recorded run" in older.output, older.output
    records[0]["id"] = "edited"
    dataset.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    edited = invoke(cli.main, ["replay", str(run), "--out", str(tmp_path / "r2"), "--cache-dir", cache])
    assert edited.exit_code == 1 and "DIFFERS from the recorded run" in edited.output, edited.output


def test_replay_from_another_folder_finds_a_cache_named_relative(tmp_path, seeds_file, monkeypatch):
    """`run --cache-dir cache` recorded `cache` as it was typed: a replay from another folder read an empty
    cache there and missed every call (exit 3). The manifest records the folder absolute, as it does --seeds."""
    from fake_openai_server import FakeOpenAIServer

    invoke = CliRunner().invoke
    data = base_spec(seeds_file)
    monkeypatch.chdir(tmp_path)
    with FakeOpenAIServer() as server:
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = str(write_spec(tmp_path, data))
        assert invoke(cli.main, ["run", spec, "-q", "--out", "run", "--cache-dir", "cache"]).exit_code == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    replayed = invoke(cli.main, ["replay", str(tmp_path / "run")])
    assert replayed.exit_code == 0 and "identical to the recorded run" in replayed.output, replayed.output


def test_an_empty_folder_option_is_refused_not_read_as_here(tmp_path, monkeypatch):
    """`--cache-dir ''` (an unset shell variable) made cache.db in the current folder."""
    monkeypatch.chdir(tmp_path)
    for command in (["cache", "stats", "--cache-dir", ""], ["cache", "clear", "--cache-dir", " ", "--yes"],
                    ["optimize", "spec.yaml", "encode", "--out", ""], ["report", ".", "--out", ""]):
        done = CliRunner().invoke(cli.main, command)
        assert done.exit_code == 2 and "an empty path" in done.output, done.output
    assert list(tmp_path.iterdir()) == []


def test_a_shipped_spec_name_with_a_typo_suggests_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["validate", "demoo"])
    assert result.exit_code == 2 and "no shipped spec of that name" in result.output
    assert "did you mean 'demo'?" in result.output, result.output


def test_a_filter_typo_in_a_template_suggests_the_filter(tmp_path):
    (tmp_path / "typo.jinja").write_text('{% call message("user") %}{{ x | upperr }}{% endcall %}')
    with pytest.raises(SpecError) as caught:
        TemplateStore(tmp_path).get("typo.jinja")
    assert "No filter named 'upperr'" in caught.value.message and caught.value.hint == "did you mean 'upper'?"


def test_an_include_of_a_missing_template_names_the_templates_there(tmp_path):
    (tmp_path / "main.jinja").write_text('{% include "header.jinja" %}{% call message("user") %}hi{% endcall %}')
    with pytest.raises(SpecError) as caught:
        TemplateStore(tmp_path).get("main.jinja").render({})
    assert "it includes 'header.jinja', which is not in" in caught.value.message
    assert caught.value.hint == "templates there: main.jinja" and caught.value.line == 1


def test_readme_lists_every_option_of_optimize():
    """README's synopsis of optimize left out --threshold (the score a bootstrapped demo needs, 1 by default),
    --seeds, --out, --set, --cache-dir and -q, and said nowhere that bootstrap is the default optimizer."""
    from codeclm.cli import main

    readme = (REPO / "README.md").read_text()
    synopsis = readme.split("codeclm optimize SPEC NODE", 1)[1].split("\ncodeclm compare", 1)[0]
    options = [min(p.opts, key=len) for p in main.commands["optimize"].params if p.opts[0].startswith("-")]
    assert [o for o in options if o not in synopsis and o != "-h"] == []
    assert "| `bootstrap` (default) |" in readme

"""Broken specs, templates, seed files and options: each is reported with its file and line,
through programs.lang.spec.load_spec and through the CLI (exit 2, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.spec import load_spec
from conftest import REPO, SEEDS, base_spec, write_spec

# -- helpers -------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codeclm.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def line_of(path: Path, text: str, after: int = 0) -> int:
    """The 1-based number of the first line after line `after` that contains `text`."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number > after and text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def errors_of(path: Path, overrides: list[str] | None = None) -> list[SpecError]:
    """The errors load_spec reports for a spec, one list whether it raised one or several."""
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(path, overrides)
    return caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]


def only_error(path: Path) -> SpecError:
    errors = errors_of(path)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def assert_cli_reports(done: subprocess.CompletedProcess, where: str, *texts: str) -> None:
    """Exit 2, a message naming `where` (FILE:LINE), each text in it, and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert where in done.stderr, done.stderr
    for text in texts:
        assert text in done.stderr, done.stderr


@pytest.fixture
def spec_data(seeds_file: Path) -> dict[str, Any]:
    return base_spec(seeds_file)


def test_the_base_spec_is_valid(tmp_path, spec_data):
    """The specs the other tests break start out valid (through the CLI too)."""
    path = write_spec(tmp_path, spec_data)
    assert load_spec(path).name == "tiny"
    done = cli("validate", str(path))
    assert done.returncode == 0, done.stderr


def test_inline_records_all_have_the_same_fields(tmp_path, spec_data):
    """Inline records are YAML data of any shape, but a field one record lacks is refused at that
    record's line (it would reach its prompts as None)."""
    data = json.loads(json.dumps(spec_data))
    source = next(n for n in data["nodes"].values() if n.get("type") == "source")
    source.pop("path", None)
    source.pop("fields", None)
    source["records"] = [{"instruction": "Say hi.", "level": 3}, {"instruction": "Say bye.", "level": [1, 2]},
                         {"level": 5}]
    path = write_spec(tmp_path, data)
    found = errors_of(path)
    assert [e.message for e in found] == ["record 3 has no 'instruction', which other records have"]
    assert found[0].line == line_of(path, "- level: 5")
    done = cli("validate", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "same fields" in done.stderr


# -- YAML ----------------------------------------------------------------------------------

BAD_INDENT = """\
name: broken
seed: 0
models:
  strong:
    model: local
    temperature: 0.7
   target: local
nodes: {}
"""


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(BAD_INDENT)
    error = only_error(path)
    assert error.file == str(path)
    assert error.line == 7  # the mis-indented 'target:'
    assert "invalid YAML" in error.message
    assert_cli_reports(cli("validate", str(path)), f"{path}:7", "invalid YAML", "indentation")


def test_unclosed_flow_mapping_names_a_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nmodels:\n  strong: {model: local\nstages: {}\n")
    error = only_error(path)
    assert "invalid YAML" in error.message and error.line in (3, 4)


def test_an_unquoted_question_in_a_flow_mapping_is_told_to_quote_it(tmp_path):
    """`{question: Why is the sky blue?}` got the generic indentation hint; questions are what users write."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nnodes:\n  q:\n    type: source\n    records: [{question: Why is the sky blue?}]\n")
    error = only_error(path)
    assert "invalid YAML" in error.message and error.line == 5
    assert "quote it" in error.hint and '"Why is the sky blue?"' in error.hint


def test_a_colon_glued_to_its_value_in_a_flow_mapping_is_named(tmp_path):
    """`{type:judge, judge:rate}` (no space after the colons) is two keys with no values in YAML: the checks
    then said "unknown type None" or "needs for_each"; the text with the missing space is what to fix."""
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nnodes:\n  q: {type:source, records: [{instruction: 'hi: there'}]}\n")
    error = only_error(path)
    assert error.line == 3 and error.message == "'type:source' is read as one key with no value: a colon needs a " \
        "space after it" and error.hint == "write type: source", str(error)
    path.write_text("name: x\nnodes:\n  q: {type: source, records: [{'a:b': 1, url: 'http://x:80'}]}\n")
    assert all("colon" not in e.message for e in errors_of(path))  # quoted, or with a value: as written


def test_a_spec_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("- just\n- a list\n")
    error = only_error(path)
    assert error.line == 1 and "mapping" in error.message


def test_missing_spec_file(tmp_path):
    done = cli("validate", str(tmp_path / "nope.yaml"))
    assert_cli_reports(done, "nope.yaml", "cannot read")


# -- keys, kinds, wiring -------------------------------------------------------------------


def test_unknown_param_suggests_the_close_key(tmp_path, spec_data):
    """Params are free names, so a typo is a param no expression reads: refused, with the close one."""
    spec_data["params"]["treshold"] = 2
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert error.line == line_of(path, "treshold:")
    assert "treshold" in error.message and error.hint == "did you mean 'threshold'?"
    assert_cli_reports(cli("validate", str(path)), f"spec.yaml:{error.line}", "did you mean 'threshold'")


def test_unknown_top_level_key(tmp_path, spec_data):
    spec_data["modles"] = {}
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert error.line == line_of(path, "modles:") and "did you mean 'models'" in error.hint


def test_unknown_node_type_lists_the_types(tmp_path, spec_data):
    spec_data["nodes"]["refine"]["body"]["answer_target"]["type"] = "answer"
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    type_error = next(e for e in errors if "unknown type" in e.message)
    assert type_error.line == line_of(path, "type: answer")
    for kind in ("source", "llm", "judge", "mix", "pick", "filter", "dedup", "switch", "loop"):
        assert kind in type_error.hint
    assert_cli_reports(cli("validate", str(path)), f"spec.yaml:{type_error.line}", "unknown type 'answer'",
                       "types: source, llm")


def test_node_with_an_undeclared_model(tmp_path, spec_data):
    spec_data["nodes"]["decode"]["model"] = "huge"
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert error.line == line_of(path, "model: huge")
    assert "'huge'" in error.message and "not declared" in error.message
    assert "strong, target" in error.hint
    assert_cli_reports(cli("validate", str(path)), f"spec.yaml:{error.line}", "'huge'", "declared models")


def test_a_judge_without_a_pair_is_pointwise_and_its_readers_are_told(tmp_path, spec_data):
    del spec_data["nodes"]["refine"]["body"]["judge"]["pair"]
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any("judge.gap" in e.message and "makes score" in e.message for e in errors), [str(e) for e in errors]
    assert_cli_reports(cli("validate", str(path)), "spec.yaml:", "makes score")


@pytest.mark.parametrize("word", ["tie", "fail"])
def test_unparsable_takes_the_bare_words_the_reference_shows(tmp_path, spec_data, word):
    """`unparsable: tie`, as docs/spec.md writes it, was read as a node named tie and refused."""
    spec_data["nodes"]["refine"]["body"]["judge"]["unparsable"] = word
    del spec_data["params"]["unparsable_score"]
    path = write_spec(tmp_path, spec_data)
    judge = load_spec(path).graph.every["judge"]
    assert load_spec(path).graph.static(judge.unparsable) == word


def test_unparsable_tie_on_a_pointwise_judge_is_refused(tmp_path, spec_data):
    """A tie is a gap of 0, which only a pairwise judge has: on a pointwise one it changed nothing."""
    del spec_data["nodes"]["refine"]["body"]["judge"]["pair"]
    spec_data["nodes"]["refine"]["body"]["judge"]["unparsable"] = "tie"
    del spec_data["params"]["unparsable_score"]
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any("only a pairwise judge" in e.message and e.line == line_of(path, "unparsable: tie")
               for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize("pair", [["answer_strong.answer"], 5, ["answer_strong.answer", "nope.answer"]],
                         ids=["one", "not-a-list", "unknown"])
def test_judge_with_a_bad_pair(tmp_path, spec_data, pair):
    spec_data["nodes"]["refine"]["body"]["judge"]["pair"] = pair
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any(("pair" in e.message or "'nope'" in e.message) and e.line == line_of(path, "pair:")
               for e in errors), [str(e) for e in errors]


def test_a_loop_reading_a_node_it_lacks(tmp_path, spec_data):
    del spec_data["nodes"]["refine"]["body"]["improve"]
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert error.line == line_of(path, "instruction: improve.improved")  # the key that reads it
    assert "reads 'improve', which is not a node" in error.message
    assert_cli_reports(cli("validate", str(path)), f"spec.yaml:{error.line}", "'improve'")


def test_api_key_in_a_model_is_refused(tmp_path, spec_data):
    spec_data["models"]["strong"]["api_key"] = "sk-SECRET-123"
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    key_line = line_of(path, "api_key:")
    refusal = next(e for e in errors if "API keys never go in a spec" in e.message)
    assert refusal.line == key_line and "api_key_env" in refusal.hint
    assert all("SECRET" not in str(e) for e in errors)
    done = cli("validate", str(path))
    assert_cli_reports(done, f"spec.yaml:{key_line}", "API keys never go in a spec")
    assert "SECRET" not in done.stderr + done.stdout


def test_several_problems_are_reported_together(tmp_path, spec_data):
    spec_data["params"]["treshold"] = 2
    spec_data["nodes"]["decode"]["model"] = "huge"
    spec_data["models"]["target"]["temperature"] = -1
    path = write_spec(tmp_path, spec_data)
    lines = sorted(e.line for e in errors_of(path))
    assert lines == sorted([line_of(path, "treshold:"), line_of(path, "model: huge"),
                            line_of(path, "temperature: -1")])


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("params", "pool_size", 0, "params.pool_size must be a positive integer"),
    ("params", "skills_per_entry", [3, 1], "params.skills_per_entry must be a positive integer or a range"),
    ("params", "score_scale", [10, 1], "params.score_scale must be [low, high]"),
    ("params", "max_iterations", "four", "params.max_iterations must be a positive integer"),
    ("params", "both_orders", "yes", "params.both_orders must be true or false"),
    ("params", "unparsable_score", "ignore", "params.unparsable_score must be 'fail' or 'tie'"),
    ("params", "pool_size", 10**9, "params.pool_size must be at most 1,000,000"),
    ("params", "max_iterations", 10**6, "params.max_iterations must be at most 1,000"),
], ids=["pool-size", "skills-range", "scale", "iterations", "both-orders", "unparsable", "huge-pool",
        "huge-loop"])
def test_bad_param_values(tmp_path, spec_data, section, key, value, message):
    """A count, a range or a scale computed from params is checked before anything runs, at the param."""
    spec_data[section][key] = value
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any(message in e.message and e.line == line_of(path, f"{key}:") for e in errors), [str(e) for e in errors]


def test_a_run_that_would_allocate_without_bound_is_refused_fast(tmp_path, spec_data):
    """pool_size 10**9 (a mix of a billion records): `run` exits 2 at the param's line, with a fix, in
    seconds and before any call; an explode of 10**12 records per decode likewise, at its node."""
    spec_data["params"]["pool_size"] = 10**9
    path = write_spec(tmp_path, spec_data)
    started = time.monotonic()
    done = cli("run", str(path), "--out", str(tmp_path / "out"), "-q", timeout=30)
    assert time.monotonic() - started < 20
    assert_cli_reports(done, f"spec.yaml:{line_of(path, 'pool_size:')}", "at most 1,000,000", "fix:")
    spec_data["params"].update(pool_size=1, dataset_size=10**12)
    path = write_spec(tmp_path, spec_data)
    assert any("explode.limit must be at most 1,000" in e.message for e in errors_of(path))


# -- templates -----------------------------------------------------------------------------


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir()
    for template in (REPO / "prompts").glob("*.jinja"):
        shutil.copy(template, folder)
    return folder


def break_template(folder: Path, name: str, line: int, text: str) -> Path:
    """Insert `text` as line `line` of a template."""
    path = folder / name
    lines = path.read_text().splitlines()
    lines.insert(line - 1, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_template_syntax_error_names_template_and_line(tmp_path, spec_data, prompts):
    broken = break_template(prompts, "decode.jinja", 7, "{% if %}")
    spec_data["prompts"] = str(prompts)
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert Path(error.file) == broken and error.line == 7
    assert "template syntax error" in error.message
    assert_cli_reports(cli("validate", str(path)), f"{broken}:7", "template syntax error")


def test_unclosed_if_in_a_template(tmp_path, spec_data, prompts):
    broken = break_template(prompts, "respond.jinja", 3, "{% if instruction %}")
    spec_data["prompts"] = str(prompts)
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert errors and all(Path(e.file) == broken for e in errors)  # both respond stages use it
    assert all(e.line and e.line >= 3 for e in errors)
    assert_cli_reports(cli("validate", str(path)), f"{broken}:", "template syntax error")


def test_prompts_folder_given_relative_to_the_spec(tmp_path, spec_data, prompts):
    spec_data["prompts"] = "prompts"  # tmp_path/prompts, next to the spec
    assert load_spec(write_spec(tmp_path, spec_data)).prompts_dir == prompts


def test_missing_prompts_folder(tmp_path, spec_data):
    spec_data["prompts"] = "no_such_folder"
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert error.line == line_of(path, "prompts:") and "does not exist" in error.message
    assert "default" not in error.message  # the spec's own prompts: key


def test_missing_default_prompts_folder_says_it_is_the_default(tmp_path, spec_data):
    """docs/spec.md's first spec, saved alone in a folder, said "prompts folder .../prompts does not exist"
    though the spec names no prompts folder: the default ../prompts was applied, unsaid."""
    del spec_data["prompts"]
    error = only_error(write_spec(tmp_path, spec_data))
    assert error.message == f"prompts folder {tmp_path.parent / 'prompts'} does not exist (the default, " \
                            "../prompts, relative to the spec)", error.message


def test_missing_template_lists_the_available_ones(tmp_path, spec_data):
    spec_data["nodes"]["decode"]["template"] = "decoder.jinja"
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert "template 'decoder.jinja' not found" in error.message
    for name in ("decode.jinja", "encode.jinja", "improve.jinja", "judge.jinja", "respond.jinja", "rubrics.jinja"):
        assert name in error.hint
    done = cli("validate", str(path))
    assert_cli_reports(done, "decoder.jinja", "not found", "decode.jinja, encode.jinja")


def test_missing_template_points_at_the_spec_line(tmp_path, spec_data):
    spec_data["nodes"]["decode"]["template"] = "decoder.jinja"
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert (error.file, error.line) == (str(path), line_of(path, "template: decoder.jinja"))


# -- seed files, through `codeclm run` ----------------------------------------------------


def run_fast(tmp_path: Path, spec: Path, *extra: str) -> subprocess.CompletedProcess:
    """`codeclm run` on a spec with local models; it must fail before any model loads."""
    started = time.monotonic()
    done = cli("run", str(spec), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "-q",
               *extra, timeout=60)
    assert time.monotonic() - started < 10, "the error came after a model loaded"
    return done


def test_a_missing_seed_file_is_found_by_validate_at_its_path_line(tmp_path, spec_data):
    """`validate` said "valid." for a spec whose seed file did not exist; the run then failed with no
    line of the spec. Now validate, a dry run and a run stop at the `path:` line (or the --set),
    and --seeds FILE, which replaces that file, still runs."""
    spec_data["nodes"]["seeds"]["path"] = "no_such_seeds.jsonl"
    path = write_spec(tmp_path, spec_data)
    where = f"spec.yaml:{line_of(path, 'path: no_such_seeds.jsonl')}"
    assert_cli_reports(cli("validate", str(path)), where, "source 'seeds' reads", "does not exist", "--seeds FILE")
    assert_cli_reports(run_fast(tmp_path, path, "--dry-run"), where, "does not exist")
    assert_cli_reports(run_fast(tmp_path, path), where, "does not exist")
    done = cli("validate", str(path), "--set", f"nodes.seeds.path={tmp_path}")
    assert_cli_reports(done, "--set nodes.seeds.path", "is not a file")
    seeds = tmp_path / "seeds.jsonl"
    done = run_fast(tmp_path, path, "--dry-run", "--seeds", str(seeds))
    assert done.returncode == 0, done.stderr


def test_run_with_invalid_json_on_line_3(tmp_path, spec_data):
    seeds = tmp_path / "bad_seeds.jsonl"
    seeds.write_text(json.dumps({"id": "a", "instruction": SEEDS[0]}) + "\n"
                     + json.dumps({"id": "b", "instruction": SEEDS[1]}) + "\n"
                     + '{"id": "c", "instruction": "unterminated}\n'
                     + json.dumps({"id": "d", "instruction": SEEDS[2]}) + "\n")
    spec_data["nodes"]["seeds"]["path"] = str(seeds)
    assert all(m["model"] == "local" for m in spec_data["models"].values())
    done = run_fast(tmp_path, write_spec(tmp_path, spec_data))
    assert_cli_reports(done, f"{seeds}:3", "invalid JSON")


def test_run_with_seeds_option_pointing_at_bad_json(tmp_path, spec_data):
    seeds = tmp_path / "other.jsonl"
    seeds.write_text('{"instruction": "a"}\n\n{"instruction": \n')
    done = run_fast(tmp_path, write_spec(tmp_path, spec_data), "--seeds", str(seeds))
    assert_cli_reports(done, f"{seeds}:3", "invalid JSON")


def test_run_with_csv_seeds_lacking_the_column(tmp_path, spec_data):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("id,text\n1,Write a haiku.\n2,Explain DNS.\n")
    spec_data["nodes"]["seeds"] = {"type": "source", "path": str(seeds), "fields": ["instruction"]}
    done = run_fast(tmp_path, write_spec(tmp_path, spec_data))
    assert_cli_reports(done, f"{seeds}:1", "no column 'instruction'", "id, text")


@pytest.mark.parametrize(("content", "line", "message"), [
    ('{"instruction": "a"}\n["not", "an", "object"]\n', 2, "must be an object"),
    ('{"instruction": "a"}\n{"prompt": "b"}\n', 2, "no text in field 'instruction'"),
    ('{"id": "x", "instruction": "a"}\n{"id": "x", "instruction": "b"}\n', 2, "duplicate seed id"),
], ids=["not-object", "no-field", "duplicate-id"])
def test_read_seeds_errors_have_lines(tmp_path, content, line, message):
    from codeclm.programs.lang.seeds import read_seeds

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(content)
    with pytest.raises(SpecError) as caught:
        read_seeds(seeds)
    assert caught.value.line == line and message in caught.value.message


def test_read_seeds_missing_and_empty(tmp_path):
    from codeclm.programs.lang.seeds import read_seeds

    with pytest.raises(SpecError, match="not found"):
        read_seeds(tmp_path / "nope.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SpecError, match="no seed instructions"):
        read_seeds(tmp_path / "empty.txt")


def test_ndjson_is_jsonl_and_jsonl_under_another_name_is_refused(tmp_path):
    """A JSONL file named .ndjson, or with no suffix, was read as text: each prompt the raw JSON line."""
    from codeclm.programs.lang.seeds import read_seeds

    (tmp_path / "seeds.ndjson").write_text('{"id": "a", "instruction": "Hi"}\n')
    assert [s["instruction"] for s in read_seeds(tmp_path / "seeds.ndjson")] == ["Hi"]
    for name in ("seeds", "seeds.txt"):
        (tmp_path / name).write_text('\n{"id": "a", "instruction": "Hi"}\n')
        with pytest.raises(SpecError, match="first line is a JSON object") as caught:
            read_seeds(tmp_path / name)
        assert caught.value.line == 2 and "rename it to seeds.jsonl" in str(caught.value)
    (tmp_path / "braces.txt").write_text("{not json} is a fine instruction\n")
    assert read_seeds(tmp_path / "braces.txt")[0]["instruction"] == "{not json} is a fine instruction"


def test_a_bad_benchmark_file_is_named_as_one_with_evaluate_s_fix(tmp_path):
    """A benchmark file's errors spoke of seeds ("pass --seeds FILE"), and a non-object record had no fix."""
    import os

    from codeclm.programs.lang.seeds import BENCHMARK_FILE, read_seeds

    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "array.json").write_text('[{"instruction": "Hi"}]\n')
    found = {}
    for name in ("fifo.jsonl", "empty.jsonl", "array.json", "gone.jsonl"):
        with pytest.raises(SpecError) as caught:
            read_seeds(tmp_path / name, kind=BENCHMARK_FILE)
        found[name] = str(caught.value)
        assert "\n  fix: " in found[name] and "seed" not in found[name], found[name]
    assert "not a benchmark file" in found["fifo.jsonl"] and "BENCHMARKS argument" in found["fifo.jsonl"]
    assert "no benchmark items found" in found["empty.jsonl"]
    assert 'a record must be an object, not a list\n  fix: one JSON object per line' in found["array.json"]
    assert "benchmark file not found" in found["gone.jsonl"]


# -- --set overrides -----------------------------------------------------------------------


@pytest.mark.parametrize("override", ["params.threshold", "=3"], ids=["no-equals", "no-key"])
def test_set_that_is_not_key_value(tmp_path, spec_data, override):
    path = write_spec(tmp_path, spec_data)
    with pytest.raises(SpecError, match="is not key=value"):
        load_spec(path, [override])
    assert_cli_reports(cli("validate", str(path), "--set", override), "spec.yaml", "is not key=value")


def test_set_not_key_value_on_run(tmp_path, spec_data):
    done = run_fast(tmp_path, write_spec(tmp_path, spec_data), "--set", "params.threshold")
    assert_cli_reports(done, "spec.yaml", "is not key=value")


def test_set_values_are_validated(tmp_path, spec_data):
    path = write_spec(tmp_path, spec_data)
    assert load_spec(path, ["params.threshold=2"]).params["threshold"] == 2
    errors = errors_of(path, ["params.max_iterations=-2"])
    assert [(e.file, e.line) for e in errors] == [("--set params.max_iterations", None)]  # not the file's value


# -- wrongly typed values: still a message, never a traceback ------------------------------


def _set(*keys: str, value: Any):
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return change


WRONG_TYPES = [
    pytest.param(_set("nodes", "decode", "type", value=["llm"]), TypeError, id="node-type-list"),
    pytest.param(_set("nodes", "decode", "model", value=["strong"]), TypeError, id="node-model-list"),
    pytest.param(_set("nodes", "decode", "for_each", value=["augment"]), TypeError, id="for-each-list"),
    pytest.param(_set("nodes", "decode", "template", value=5), AttributeError, id="template-int"),
    pytest.param(_set("nodes", "decode", "parse", value=["list"]), TypeError, id="parse-list"),
    pytest.param(_set("nodes", "decode", "inputs", value=["use_case"]), TypeError, id="inputs-list"),
    pytest.param(_set("nodes", "refine", "body", "judge", "pair", value=5), TypeError, id="pair-int"),
    pytest.param(_set("nodes", "refine", "state", value=["instruction"]), TypeError, id="state-list"),
    pytest.param(_set("nodes", "refine", "body", "decide", "cases", value=5), TypeError, id="cases-int"),
    pytest.param(_set("params", "score_scale", value=[1, "ten"]), TypeError, id="score-scale-str"),
]


@pytest.mark.parametrize(("change", "crash"), WRONG_TYPES)
def test_wrongly_typed_value_is_a_spec_error(tmp_path, spec_data, change, crash):
    """Each of these used to crash with `crash`; now each is a located spec error."""
    change(spec_data)
    path = write_spec(tmp_path, spec_data)
    assert all(e.line for e in errors_of(path))


def test_wrongly_typed_type_through_the_cli(tmp_path, spec_data):
    spec_data["nodes"]["decode"]["type"] = ["llm"]
    path = write_spec(tmp_path, spec_data)
    assert_cli_reports(cli("validate", str(path)), "spec.yaml:", "type")


@pytest.mark.parametrize(("key", "value"), [("temperature", "hot"), ("max_tokens", -5)])
def test_node_decoding_overrides_are_validated(tmp_path, spec_data, key, value):
    spec_data["nodes"]["decode"][key] = value
    path = write_spec(tmp_path, spec_data)
    assert any(e.line == line_of(path, f"{key}: {value}") for e in errors_of(path))


def test_nodes_named_like_round_copies_keep_their_own_errors(tmp_path):
    """Only a rounds body's copies (NAME_1, NAME_2) fold into one error: two nodes of the spec that
    merely end in a number, with the same problem on one line, are both reported."""
    path = tmp_path / "spec.yaml"
    bad = "{type: filter, for_each: s, where: nope.x}"
    path.write_text(f"name: t\nprompts: {REPO / 'prompts'}\nmodels: {{strong: {{model: local}}}}\n"
                    f"nodes: {{s: {{type: source, records: [{{instruction: a}}]}}, x_1: {bad}, x_2: {bad}}}\n"
                    "outputs: {dataset: {from: [x_1, x_2], fields: {id: record.id}}}\n")
    messages = [e.message for e in errors_of(path)]
    assert any("'x_1'" in m for m in messages) and any("'x_2'" in m for m in messages), messages


def test_a_loop_next_key_that_is_not_in_its_state(tmp_path, spec_data):
    """A typo in next: started a new state key, and the state the loop reads never changed."""
    refine = spec_data["nodes"]["refine"]
    refine["next"] = {"instructon" if k == "instruction" else k: v for k, v in refine["next"].items()}
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert "next.instructon is not a key of the loop's state" in error.message and "'instruction'" in error.hint
    assert error.line == line_of(path, "instructon")


def test_a_template_variable_typo_suggests_the_input_it_meant(tmp_path, spec_data):
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    source = (prompts / "respond.jinja").read_text()
    (prompts / "respond.jinja").write_text(source.replace("{{ instruction }}", "{{ instructoin }}"))
    spec_data["prompts"] = str(prompts)
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any("uses instructoin" in e.message and "a typo in the template for 'instruction'" in e.hint
               for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("output", "reads", "says"), [("dataset", "dataset", "by this output"),
                                                        ("dataset", "instructions", "after it")])
def test_an_output_reading_an_output_not_yet_written_is_refused(tmp_path, spec_data, output, reads, says):
    """outputs.NAME is the line the record wrote to an output declared above; one declared below
    (or the output itself) has none yet, and used to write null without a word."""
    spec_data["outputs"][output]["fields"]["provenance"]["kept"] = f"outputs.{reads}"
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert f"reads outputs.{reads}, which is written {says}" in str(error) and "declared above" in str(error)
    assert error.line == line_of(path, "provenance:", after=line_of(path, f"  {output}:"))  # the field's line


def test_an_output_may_read_one_declared_above(tmp_path, spec_data):
    spec_data["outputs"]["instructions"]["fields"]["in_dataset"] = "outputs.dataset"
    load_spec(write_spec(tmp_path, spec_data))


def test_an_output_reading_an_output_of_other_records_is_refused(tmp_path, spec_data):
    """`outputs.dataset` from an output of metadata records validated, and was missing from every line:
    it is the line the same record wrote there, and dataset writes only the loop's records."""
    spec_data["outputs"]["metadata"]["fields"]["in_dataset"] = "outputs.dataset"
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any("reads outputs.dataset, which writes records of refine, not of encode" in e.message
               and e.line == line_of(path, "in_dataset") for e in errors), [str(e) for e in errors]


def test_exit_on_a_switch_outside_a_loop_is_refused(tmp_path, seeds_file):
    """`exit:` only ends a loop's iteration: on a top-level switch it validated, `graph` drew it, and
    the records it named went on into the dataset."""
    data = base_spec(seeds_file)
    data["nodes"] = {"seeds": data["nodes"]["seeds"],
                     "route": {"type": "switch", "for_each": "seeds",
                               "cases": [{"name": "short", "when": "seeds.instruction | length < 20",
                                          "exit": "dropped"}, {"name": "other"}]}}
    data["nodes"]["write"] = {"type": "llm", "for_each": "route", "model": "strong", "template": "respond.jinja",
                              "inputs": {"instruction": "seeds.instruction"}, "outputs": ["answer"]}
    data["outputs"] = {"dataset": {"from": "write", "fields": {"answer": "write.answer"}}}
    data["params"] = {}
    path = write_spec(tmp_path, data)
    error = only_error(path)
    assert "has exit:, which ends a loop's iteration, but the switch is in no loop body" in str(error)
    assert "filter" in error.hint and error.line == line_of(path, "exit: dropped")


@pytest.mark.parametrize("status", ["ok", "skipped", "blocked", "failed"])
def test_an_exit_named_as_an_engine_status_is_refused(tmp_path, status):
    """`exit: ok` validated, and the loop went on past the case (ok is how a case says "go on"): every
    record ran to max and was dropped. The engine's own statuses are refused as exit names."""
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "critique.yaml"
    text = (REPO / "specs" / "critique_rewrite.yaml").read_text().replace("prompts: ../prompts",
                                                                          f"prompts: {REPO / 'prompts'}")
    path.write_text(text.replace("exit: kept}", f"exit: {status}}}"))
    error = only_error(path)
    assert "not one of the engine's own statuses" in error.message and "exit: kept" in error.hint, str(error)
    assert error.line == line_of(path, f"exit: {status}}}")


def test_a_set_typo_is_reported_at_the_set_not_at_a_line_of_the_file(tmp_path, spec_data):
    """`--set params.max_iteratons=3` was reported at a line of the spec, where no such key is."""
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path, ["nodes.encode.templat=x.jinja"])
    assert [(e.file, e.line) for e in errors] == [("--set nodes.encode.templat", None)]
    assert "did you mean 'template'?" in errors[0].hint
    done = cli("validate", str(path), "--set", "nodes.encode.templat=x.jinja")
    assert done.returncode == 2 and "error: --set nodes.encode.templat: unknown key 'templat'" in done.stderr


@pytest.mark.parametrize(("override", "where", "says"), [
    ("models.stong.model=hosted_vllm/x", "--set models.stong.model", "needs api_base"),
    ("nodes.encod.model=strong", "--set nodes.encod.model", "did you mean node 'encode'?"),
    ("params.threshold=[", "--set params.threshold", "quote it to make it text"),
])
def test_what_only_a_set_made_is_reported_at_the_set(tmp_path, spec_data, override, where, says):
    """A role or node a --set typo made, or a --set value YAML cannot read, was reported at a line of
    the file (`models:`, `nodes:`, line 1), where no such thing is."""
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path, [override])
    assert all(e.file == where and e.line is None for e in errors), [str(e) for e in errors]
    assert any(says in f"{e.message} {e.hint}" for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("parse", "outputs", "close"),
                         [("field", ["a", "b"], "fields"), ("txt", ["answer"], "text"), ("jsn", [], "json")])
def test_an_unknown_parser_is_one_error(tmp_path, spec_data, parse, outputs, close):
    """A typo in parse: also said "parser 'text' makes one value", of a parser the spec never named (with no
    outputs declared too); it names the closest parser, and lists each with what it reads."""
    spec_data["nodes"]["encode"].update(parse=parse, outputs=outputs)
    errors = errors_of(write_spec(tmp_path, spec_data))
    assert [e.message for e in errors if "parser" in e.message] == \
        [f"unknown parser '{parse}': did you mean '{close}'?"], errors
    assert "json (a JSON object holding every declared output)" in next(e.hint for e in errors if "parser" in e.message)


def test_a_judge_with_outputs_is_told_what_a_judge_gives(tmp_path, spec_data):
    spec_data["nodes"]["refine"]["body"]["judge"]["outputs"] = ["rating"]
    error = [e for e in errors_of(write_spec(tmp_path, spec_data)) if "outputs" in e.message][0]
    assert "a judge declares no outputs" in error.message and "judge.score" in error.hint


def test_a_body_node_reading_a_later_one_is_told_to_move_it(tmp_path, spec_data):
    """The message said 'not an ancestor' and listed the loop itself as visible."""
    body = spec_data["nodes"]["refine"]["body"]
    body["answer_strong"] = {**body["answer_strong"], "inputs": {"instruction": "improve.improved"}}  # not its alias
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert "reads 'improve', which comes after 'answer_strong' in the body of 'refine'" in error.message
    assert "move 'improve' above 'answer_strong'" in error.hint and error.line == line_of(path, "improve.improved")


def test_a_bare_field_name_is_pointed_at_its_node(tmp_path, spec_data):
    """`instruction` where `seeds.instruction` was meant: the fix listed the visible nodes only."""
    spec_data["nodes"]["encode"]["inputs"]["instruction"] = "instruction"
    error = only_error(write_spec(tmp_path, spec_data))
    assert "reads 'instruction', which is not a node" in error.message
    assert error.hint == "a field is read through its node: seeds.instruction?"


@pytest.mark.parametrize(("value", "fine"), [("false", True), ("1", True), ("[1]", False), ("{a: 1}", False)])
def test_an_outputs_where_of_another_type_is_read_or_refused_never_a_traceback(value, fine):
    """`where: false` on an output was an AttributeError traceback (bool has no references)."""
    done = cli("validate", str(REPO / "specs" / "demo.yaml"), "--set", f"outputs.dataset.where={value}")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == (0 if fine else 2), done.stderr
    if not fine:
        assert "where must be an expression" in done.stderr


@pytest.mark.parametrize("threshold", ["1.5", "-3", "0", "'high'"])
def test_a_dedup_threshold_outside_rouge_ls_range_is_refused(threshold):
    """A ROUGE-L threshold of 1.5 kept every near duplicate and -3 dropped every record, silently."""
    errors = errors_of(REPO / "specs" / "self_instruct.yaml", [f"params.similarity={threshold}"])
    assert any("at most 1" in e.message for e in errors), [str(e) for e in errors]


def test_a_reserved_output_name_is_told_to_choose_another(tmp_path, spec_data):
    spec_data["outputs"]["failures"] = spec_data["outputs"].pop("metadata")
    error = next(e for e in errors_of(write_spec(tmp_path, spec_data)) if "'failures'" in e.message)
    assert "every run writes itself" in error.message and "my_failures" in error.hint and "path" not in error.hint


@pytest.mark.parametrize(("key", "typo", "meant"), [("for_each", "seedz", "seeds"), ("model", "strnog", "strong")])
def test_a_typo_in_for_each_or_model_suggests_the_name_it_meant(tmp_path, spec_data, key, typo, meant):
    spec_data["nodes"]["encode"][key] = typo
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any(f"did you mean '{meant}'?" in (e.hint or "") and e.line == line_of(path, f"{key}: {typo}")
               for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("value", "says"), [
    (None, "input 'instruction' is empty"),
    (" ", "an empty expression"),
    ("(" * 500 + "seeds.instruction" + ")" * 500, "nested too deeply"),
])
def test_an_empty_or_unreadable_input_is_a_spec_error_not_a_traceback(tmp_path, spec_data, value, says):
    """`instruction:` left empty sent the text None in every prompt; `" "` and 500 nested parentheses
    were tracebacks (TemplateSyntaxError, RecursionError) from validate."""
    spec_data["nodes"]["encode"]["inputs"]["instruction"] = value
    path = write_spec(tmp_path, spec_data)
    assert any(says in e.message for e in errors_of(path)), [str(e) for e in errors_of(path)]
    assert_cli_reports(cli("validate", str(path)), "spec.yaml:", says)


@pytest.mark.parametrize(("override", "says"), [
    ("params.rubrics=0", "must be a positive integer"),
    ("nodes.answer_target.parse={name: score, scale: 10}", "must be [low, high]"),
    ("nodes.answer_target.parse={name: score, scale: [10, 1]}", "must be [low, high]"),
])
def test_a_parsers_own_arguments_are_checked_before_the_run(tmp_path, spec_data, override, says):
    """`parse: {name: score, scale: 10}` validated, and the run failed with a TypeError on every record."""
    if "answer_target" in override:  # the loop body's node: set where it is
        override = override.replace("nodes.answer_target", "nodes.refine.body.answer_target")
        spec_data["nodes"]["refine"]["body"]["answer_target"]["outputs"] = ["score"]
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path, [override])
    assert any(says in e.message for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("override", "says"), [
    ("description=[1]", "description must be text"),
    ("cache=[1]", "cache must be text"),
    ("models.strong.retries=1000000000", "retries"),
    ("outputs.metadata.from=[encode, encode]", "lists 'encode' twice in from:"),
])
def test_values_a_run_would_misuse_are_refused(tmp_path, spec_data, override, says):
    """`cache: [1]` made a folder named [1]; a billion retries retried a broken server for ever;
    `from: [polish, polish]` wrote every record twice. Each validated."""
    errors = errors_of(write_spec(tmp_path, spec_data), [override])
    assert any(says in e.message for e in errors), [str(e) for e in errors]


def test_review_of_the_new_checks_keeps_what_was_valid(tmp_path, spec_data):
    """What the checks added this session must still accept: an empty description: or cache: (the
    default), number keys in a model's extra (logit_bias), and outputs.NAME read by an output whose
    from: shares a node with NAME's."""
    spec_data["description"] = None
    spec_data["cache"] = None
    spec_data["models"]["strong"]["extra"] = {"logit_bias": {50256: -100}}
    spec_data["outputs"]["both"] = {"from": ["refine", "decode"], "fields": {"id": "record.id",
                                                                           "row": "outputs.dataset"}}
    load_spec(write_spec(tmp_path, spec_data))
    spec_data["models"]["strong"]["extra"] = {1: 2}  # extra's own keys are request fields: text
    errors = errors_of(write_spec(tmp_path, spec_data))
    assert any("the key '1' is not text" in e.message for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize("source", ["1, 2", "a ) ( b", "seeds.instruction) ~ (seeds.instruction",
                                    " + ".join(["seeds.instruction"] * 210)])
def test_an_expression_that_parses_only_in_parentheses_or_does_not_compile_is_refused(source):
    from codeclm.programs.lang.expressions import Expression, ExpressionError

    with pytest.raises(ExpressionError):
        Expression(source)


def test_two_cases_of_one_name_are_refused(tmp_path, spec_data):
    """NODE.case and the run's decisions count cases by name: two of one name were counted as one."""
    cases = spec_data["nodes"]["refine"]["body"]["decide"]["cases"]
    cases[1]["name"] = cases[0]["name"]
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    assert any(f"two cases are named '{cases[0]['name']}'" in e.message for e in errors), [str(e) for e in errors]


def test_a_mix_field_with_both_choice_and_sample_is_refused(tmp_path, spec_data):
    """The sample: was silently ignored."""
    spec_data["nodes"]["augment"]["fields"]["use_case"]["sample"] = "encode.skills"
    errors = errors_of(write_spec(tmp_path, spec_data))
    assert any("not both" in e.message for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(("reader", "key", "later"), [("improve", "inputs.style", "uniq"),
                                                      ("decide", "cases.2.when", "final_rate")])
def test_visible_here_lists_no_node_that_runs_after_the_reader(tmp_path, spec_data, reader, key, later):
    """A dedup (and a filter) on the loop's records, below the loop, were listed as visible in its body;
    reading one as told then failed as "the graph has a cycle"."""
    spec_data["nodes"]["uniq"] = {"type": "dedup", "for_each": "refine", "field": "state.instruction"}
    spec_data["nodes"]["final_rate"] = {"type": "filter", "for_each": "refine", "where": "refine.iterations > 1"}
    body = spec_data["nodes"]["refine"]["body"]
    body["improve"]["inputs"]["style"] = "briefly"
    body["decide"]["cases"][2]["when"] = "nowhere"
    errors = errors_of(write_spec(tmp_path, spec_data))
    hint = next(e.hint for e in errors if f"node '{reader}' {key} reads" in e.message)
    assert "visible here: nodes " in hint and "judge" in hint and later not in hint, hint

    body["improve"]["inputs"]["style"] = "uniq.similarity"
    body["decide"]["cases"][2]["when"] = "final_rate.id"
    path = write_spec(tmp_path, spec_data)
    errors = errors_of(path)
    error = next(e for e in errors if f"node '{reader}' {key} reads" in e.message)
    assert f"reads '{later}', which is not an ancestor of '{reader}'" in error.message, error
    assert error.line == line_of(path, "uniq.similarity" if later == "uniq" else "final_rate.id")


def test_a_bare_word_that_names_nothing_is_told_to_quote_it(tmp_path, spec_data):
    """`style: briefly`, meant as the text 'briefly', got no word about quoting."""
    spec_data["nodes"]["encode"]["inputs"]["style"] = "briefly"
    path = write_spec(tmp_path, spec_data)
    error = next(e for e in errors_of(path) if "briefly" in e.message)  # besides: encode.jinja never reads style
    assert "reads 'briefly', which is not a node" in error.message and error.line == line_of(path, "style: briefly")
    assert error.hint.startswith("to pass the text itself, quote it inside the YAML string: \"'briefly'\"; "
                                 "visible here: nodes seeds; params"), error.hint
    assert_cli_reports(cli("validate", str(path)), f"spec.yaml:{error.line}", "quote it inside the YAML string")


def test_a_typo_in_a_node_type_suggests_the_type(tmp_path, spec_data):
    spec_data["nodes"]["refine"]["body"]["judge"]["type"] = "jugde"
    path = write_spec(tmp_path, spec_data)
    error = next(e for e in errors_of(path) if "unknown type" in e.message)
    assert error.line == line_of(path, "type: jugde")
    assert error.hint.startswith("did you mean 'judge'? types: source, llm"), error.hint


def test_an_expression_in_a_list_item_is_reported_at_its_line(tmp_path, spec_data):
    """A switch case's when (cases.2.when) was reported at `cases:`, many lines above it."""
    spec_data["nodes"]["refine"]["body"]["decide"]["cases"][2]["when"] = "nope.x"
    path = write_spec(tmp_path, spec_data)
    error = only_error(path)
    assert "reads 'nope'" in error.message and error.line == line_of(path, "when: nope.x"), error


def test_a_typo_in_template_is_not_also_a_template_not_found(tmp_path, spec_data):
    """`templte:` said "template '' not found" and listed every template, beside the typo itself."""
    spec_data["nodes"]["encode"]["templte"] = spec_data["nodes"]["encode"].pop("template")
    errors = errors_of(write_spec(tmp_path, spec_data))
    assert any("did you mean 'template'?" in (e.hint or "") for e in errors), [str(e) for e in errors]
    assert not any("not found" in e.message for e in errors), [str(e) for e in errors]


def test_a_set_with_no_value_is_reported_at_the_set(tmp_path, spec_data):
    """`--set params.max_iterations=` (an unset shell variable) read as null, and failed at a line of the
    spec, where a node computed with it."""
    errors = errors_of(write_spec(tmp_path, spec_data), ["params.max_iterations="])
    assert [(e.file, e.line) for e in errors] == [("--set params.max_iterations", None)], [str(e) for e in errors]
    assert "no value after '='" in errors[0].message and "=null" in errors[0].hint


def test_a_role_typo_in_a_set_is_said_once_with_the_role_meant(tmp_path, spec_data):
    """`--set models.stong.temperature=0` said first that 'stong' "needs a 'model' string", which follows
    from the typo, then that the role is not in the spec."""
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(write_spec(tmp_path, spec_data), ["models.stong.temperature=0"], ())  # (): as the CLI, roles named
    errors = getattr(caught.value, "errors", [caught.value])
    assert len(errors) == 1 and "did you mean 'strong'?" in errors[0].hint, [str(e) for e in errors]


@pytest.mark.parametrize("key", ["2", "²"])
def test_an_expression_under_a_number_like_key_is_reported_at_its_line(tmp_path, spec_data, key):
    """A list item's number in an expression's key is an index, but a mapping key "2" is text: it was
    reported at `inputs:`, and a key `²` (a digit to isdigit, not to int) was a traceback."""
    spec_data["nodes"]["encode"]["inputs"][key] = "nope.x"
    path = write_spec(tmp_path, spec_data)
    error = next(e for e in errors_of(path) if "reads 'nope'" in e.message)
    assert error.line == line_of(path, "nope.x"), str(error)


def test_a_bare_word_close_to_a_node_suggests_the_node_before_quoting(tmp_path, spec_data):
    """`instruction: seed` (for `seeds`) led with "quote it", which validates and sends the word 'seed' as
    every instruction."""
    spec_data["nodes"]["encode"]["inputs"]["instruction"] = "seed"
    error = next(e for e in errors_of(write_spec(tmp_path, spec_data)) if "reads 'seed'" in e.message)
    assert error.hint.startswith("did you mean 'seeds'?") and "quote" not in error.hint, str(error)


def test_a_spec_calling_no_model_needs_no_models_and_no_prompts_folder(tmp_path):
    """A spec that only reads, filters and dedups records was refused: "no models declared" and "prompts
    folder .../prompts does not exist", though it has no model to call and no template to read."""
    path = tmp_path / "clean.yaml"  # alone in its folder: no ../prompts beside it
    path.write_text("name: clean\nnodes:\n  mine:\n    type: source\n"
                    "    records: [{text: Write a poem.}, {text: Write a poem!}, {text: Name a prime.}]\n"
                    "  novel: {type: dedup, for_each: mine, field: mine.text}\n"
                    "outputs:\n  cleaned: {from: novel, fields: {instruction: mine.text}}\n")
    done = cli("run", str(path), "--out", str(tmp_path / "run"), "--no-report", "-q")
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line)["instruction"] for line in (tmp_path / "run" / "cleaned.jsonl").read_text().splitlines()]
    assert kept == ["Write a poem.", "Name a prime."]
    done = cli("compare", str(path), "--judge", "strong", "--out", str(tmp_path / "compare"))
    assert done.returncode == 2 and "the spec declares no models: add the judge's" in done.stderr, done.stderr
    path.write_text(path.read_text().replace("outputs:", "  answer: {type: llm, for_each: novel, model: strong, "
                                             "template: respond.jinja, inputs: {instruction: mine.text}, "
                                             "outputs: [answer]}\noutputs:").replace("from: novel", "from: answer"))
    messages = [e.message for e in errors_of(path)]  # a node that calls a model: both are needed again
    assert "no models declared" in messages and any("prompts folder" in m for m in messages), messages

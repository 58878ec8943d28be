"""The language's checks a user review found missing or unhelpful: each a spec error at its line, with a fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.spec import load_spec
from conftest import REPO, base_spec, write_spec


def errors_of(path: Path, overrides: list[str] | None = None) -> list[SpecError]:
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(path, overrides)
    return caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_loop_without_max_is_refused_at_its_line(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    del data["nodes"]["refine"]["max"], data["params"]["max_iterations"]  # ran once: improve and next unused
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert "loop 'refine' needs max:" in error.message and error.line == line_of(path, "refine:")
    assert "max: 3" in error.hint


def test_a_node_without_for_each_is_told_the_node_it_reads(tmp_path, seeds_file):
    """`needs for_each:` came with no fix line."""
    data = base_spec(seeds_file)
    del data["nodes"]["decode"]["for_each"]
    path = write_spec(tmp_path, data)
    error = next(e for e in errors_of(path) if "'decode' needs for_each:" in e.message)
    assert error.hint == "e.g. for_each: augment (the last node it reads)", str(error)


SECOND_OPINION = {"type": "judge", "model": "strong", "template": "judge.jinja",
                  "inputs": {"instruction": "state.instruction"}, "pair": ["answer_target.answer",
                                                                           "answer_strong.answer"]}


def test_a_loop_body_node_nothing_reads_feeds_no_output(tmp_path, seeds_file):
    """Reaching the loop counted every body node as used: its calls were made and paid for, for nothing."""
    data = base_spec(seeds_file)
    body = data["nodes"]["refine"]["body"]
    data["nodes"]["refine"]["body"] = {**{k: v for k, v in body.items() if k != "decide"},
                                       "second_opinion": SECOND_OPINION, "decide": body["decide"]}
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert error.message == "node 'second_opinion' feeds no output: it would run for nothing"
    assert error.line == line_of(path, "second_opinion:") and "next: or trace: of 'refine'" in error.hint


@pytest.mark.parametrize("reader", ["when", "trace", "case"])
def test_a_loop_body_node_read_by_a_used_node_or_the_loop_is_used(tmp_path, seeds_file, reader):
    data = base_spec(seeds_file)
    loop = data["nodes"]["refine"]
    body = loop["body"]
    loop["body"] = {**{k: v for k, v in body.items() if k != "decide"}, "second_opinion": SECOND_OPINION,
                    "decide": body["decide"]}
    if reader == "when":  # read only by a when: of a node that is used
        loop["body"]["improve"] = {**loop["body"].pop("improve"), "when": "second_opinion.gap < 0"}  # after it
    elif reader == "trace":
        loop["trace"]["second_gap"] = "second_opinion.gap"
    else:
        body["decide"]["cases"][0]["when"] = "judge.gap > params.threshold and second_opinion.gap < 0"
    load_spec(write_spec(tmp_path, data))


def test_a_switch_case_setting_a_key_nothing_reads_is_refused(tmp_path, seeds_file):
    """A switch's fields are every case's keys: a typo passed, and each record taking the case failed."""
    data = base_spec(seeds_file)
    case = data["nodes"]["refine"]["body"]["decide"]["cases"][1]
    case["set"] = {"respnse": case["set"]["response"], "response_from": case["set"]["response_from"]}
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert error.message == "switch 'decide' case 'keep_target' sets 'respnse', which nothing reads: it would " \
                            "change nothing"
    assert error.line == line_of(path, "respnse:") and error.hint == "did you mean 'response'?"


def spec_with_template(tmp_path: Path, seeds_file: Path, name: str, text: str) -> Path:
    """The base spec, its prompts folder the shipped one with template `name` replaced by `text`."""
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    (prompts / name).write_text(text)
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    return write_spec(tmp_path, data)


@pytest.mark.parametrize("call, fix", [("len(instruction)", "{{ instruction | length }}"),
                                       ("words(instruction)", "{{ instruction | wordcount }}"),
                                       ("rouge_l(instruction, 'x')", "compute it in the node's inputs")])
def test_an_expression_helper_in_a_template_points_to_the_jinja_filter(tmp_path, seeds_file, call, fix):
    """`{{ len(question) }}` was told `fix: add to inputs: len: <expression>`."""
    path = spec_with_template(tmp_path, seeds_file, "respond.jinja",
                              '{% call message("user") %}\n{{ instruction }} ({{ ' + call + ' }})\n{% endcall %}')
    [error] = errors_of(path)
    helper = call.split("(")[0]
    assert error.file.endswith("respond.jinja") and error.line == 2
    assert error.message == f"{helper}() is a helper of the spec's expressions, which templates do not have"
    assert fix in error.hint


def test_a_typo_in_an_input_name_is_said_at_the_input(tmp_path, seeds_file):
    """`topci` for the `topic` the template reads was blamed on the template ("a typo in the template?")."""
    data = base_spec(seeds_file)
    inputs = data["nodes"]["decode"]["inputs"]
    inputs["use_cse"] = inputs.pop("use_case")
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert error.message == "inputs.use_cse: template decode.jinja reads use_case, not use_cse"
    assert error.hint == "did you mean 'use_case'? write use_case: augment.use_case"
    assert error.line == line_of(path, "use_cse:")


def test_an_input_the_template_never_reads_is_refused_at_the_input(tmp_path, seeds_file):
    """`tone: "'friendly'"` for a template with no {{ tone }} validated: the user believed the prompt had a tone."""
    data = base_spec(seeds_file)
    data["nodes"]["decode"]["inputs"]["tone"] = "'friendly'"
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert error.message == "inputs.tone: template decode.jinja never reads tone: it would change nothing"
    assert error.hint == "write {{ tone }} in the template, or remove the input"
    assert error.line == line_of(path, "tone:")


@pytest.mark.parametrize("value", ["0.0", "-0.0", "0.5", "2.0", "0"])
def test_concurrency_is_a_whole_number_from_1(tmp_path, seeds_file, value):
    """`concurrency: 0.0` passed every check and the run waited forever at 0 calls (a semaphore of 0)."""
    path = write_spec(tmp_path, base_spec(seeds_file))
    [error] = errors_of(path, [f"models.strong.concurrency={value}"])
    assert error.file == "--set models.strong.concurrency"
    assert error.message == f"concurrency must be a whole number at least 1, got {float(value) if '.' in value else 0}"


@pytest.mark.parametrize("node, key, value, kind", [("decode", "instructions", ["a", "b"], "a list of text"),
                                                    ("decode", "instructions", 3, "a number"),
                                                    ("augment", "id_prefix", {"a": 1}, "a mapping")])
def test_instructions_and_id_prefix_are_text(tmp_path, seeds_file, node, key, value, kind):
    """`instructions: [a, b]` sent the system prompt "['a', 'b']"; `id_prefix: {a: 1}` made ids of its str()."""
    data = base_spec(seeds_file)
    data["nodes"][node][key] = value
    path = write_spec(tmp_path, data)
    [error] = errors_of(path)
    assert error.message == f"{key} must be text, got {kind}" and error.line == line_of(path, f"{key}:")


@pytest.mark.parametrize("node, key, default", [("decode", "instructions", ""), ("augment", "id_prefix", "m")])
def test_instructions_or_id_prefix_left_empty_is_as_absent(tmp_path, seeds_file, node, key, default):
    """Left empty (YAML's null), it was str()-ed: the system prompt "None", ids starting with None."""
    data = base_spec(seeds_file)
    data["nodes"][node][key] = None
    assert getattr(load_spec(write_spec(tmp_path, data)).graph.every[node], key) == default


def test_a_message_role_typo_names_the_template_line_and_the_role_meant(tmp_path, seeds_file):
    path = spec_with_template(tmp_path, seeds_file, "respond.jinja",
                              '{#- a respond -#}\n{% call message("sytem") %}Be brief.{% endcall %}\n'
                              '{% call message("user") %}{{ instruction }}{% endcall %}')
    from codeclm.programs.engine.checks import check_templates

    with pytest.raises(SpecError) as caught:  # as validate renders each template once
        check_templates(load_spec(path))
    error = caught.value
    assert error.file.endswith("respond.jinja") and error.line == 2, str(error)
    assert "message role 'sytem'" in error.message and error.hint.startswith("did you mean 'system'?")


@pytest.mark.parametrize("node, key, value, message, fix", [
    ("judge", "scale", "1-10", "node 'judge' scale must be [low, high], got 1-10 (= -9)", "scale: [1, 10]"),
    ("novel", "threshold", 70, "must be a number above 0 and at most 1 (a ROUGE-L F-score), got 70", "threshold: 0.7"),
    ("mix", "fields", {"use_case": {"choice": "seeds.instruction", "sample": "seeds.instruction"}},
     "a mix field is a choice: (one value) or a sample: (k values), not both",
     "keep one: {choice: seeds.instruction}, or {sample: seeds.instruction, k: 2}")])
def test_a_scale_threshold_or_mix_field_error_says_what_was_written_and_the_fix(tmp_path, seeds_file, node, key,
                                                                                value, message, fix):
    data = base_spec(seeds_file)
    data["nodes"]["novel"] = {"type": "dedup", "for_each": "seeds", "field": "seeds.instruction", "threshold": 0.7}
    data["nodes"]["mix"] = {"type": "mix", "from": "seeds", "fields": {"use_case": {"choice": "seeds.instruction"}}}
    data["outputs"]["more"] = {"from": ["novel"], "fields": {"id": "record.id"}}
    data["outputs"]["mixed"] = {"from": ["mix"], "fields": {"id": "record.id"}}
    (data["nodes"]["refine"]["body"] if node == "judge" else data["nodes"])[node][key] = value
    path = write_spec(tmp_path, data)
    [error] = [e for e in errors_of(path) if message in e.message]
    assert fix in (error.hint or ""), str(error)


@pytest.mark.parametrize("where, fix", [("judge.gap is not None and judge.gap > 0", "x is not none"),
                                        ("judge.gap > 0 && judge.a > 1", "and, not &&"),
                                        ("judge.gap > 0 || judge.a > 1", "or, not ||"),
                                        ("!judge.gap", "not x, not !x")])
def test_a_python_spelling_in_an_expression_gets_jinjas(tmp_path, seeds_file, where, fix):
    data = base_spec(seeds_file)
    data["nodes"]["refine"]["body"]["decide"]["cases"][0]["when"] = where
    path = write_spec(tmp_path, data)
    [error] = [e for e in errors_of(path) if "does not parse" in e.message]
    assert fix in error.hint and error.line == line_of(path, "name: keep_strong") + 1, str(error)  # its when:

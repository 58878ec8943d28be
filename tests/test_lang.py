"""The language's checks, before anything runs: the sandbox, references, cycles, unused nodes,
template variables; and `codeclm graph`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.expressions import Expression, ExpressionError
from codeclm.programs.lang.spec import load_spec
from conftest import REPO, base_spec, write_spec


def problems(path: Path) -> list[str]:
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(path)
    errors = caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]
    return [str(e) for e in errors]


@pytest.mark.parametrize("source", ["x.__class__", "x.__globals__", "x['__class__']", "x.mro()", "_secret",
                                    "x.append(1)", "state.actions.extend([1])", "d.update({})"])
def test_expressions_that_leave_the_sandbox_are_refused(source):
    with pytest.raises(ExpressionError):
        Expression(source)


def test_expressions_read_names_and_compute_native_values():
    expression = Expression("judge.gap > params.threshold and loop.last")
    assert {(r.root, r.field) for r in expression.references()} == {("judge", "gap"), ("params", "threshold"),
                                                                     ("loop", "last")}
    assert Expression("state.actions + [action.value]").evaluate(
        {"state": {"actions": ["a"]}, "action": {"value": "b"}}) == ["a", "b"]
    assert Expression("ceil(7 / 2)").evaluate({}) == 4


@pytest.mark.parametrize("source", ["judge.gap > params.threshold", "judge.gap < -params.threshold",
                                    "state.actions + [action.value]", "[]", "n - -2.5", "'x' in s", "3 not in d",
                                    "[d.k, d.items]", "d.keys == 1", "d.items.real >= 0", "judge.nothing > 1",
                                    "nosuch - 1", "s - 1", "-s", "-judge", "self > 1", "range + 1", "s.upper == s"])
def test_a_comparison_or_sum_computed_directly_is_what_jinja_computes(source):
    """Such an expression is computed without Jinja's context; where a name or field has no value, or the
    sandbox would read an attribute (a dict's `items`), Jinja computes it. The value, or the error, is the same."""
    from codeclm.programs.engine.records import View

    scope = {"d": {"items": 2, "k": 1}, "judge": View({"gap": 4.5}), "params": View({"threshold": 3}),
             "state": View({"actions": ["a"]}), "action": View({"value": "b"}), "s": "text", "n": 1}

    def outcome(compute):
        try:
            return "value", compute(scope)
        except Exception as exc:  # noqa: BLE001 - the error itself is compared
            return type(exc), str(exc)

    expression = Expression(source)
    assert outcome(expression.present) == outcome(expression._compiled)
    if source == "judge.gap > params.threshold":
        assert expression._direct is not None


def test_a_sandbox_escape_in_a_spec_exits_2_with_its_line(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["nodes"]["refine"]["next"]["actions"] = "state.actions.__class__"
    path = write_spec(tmp_path, data)
    assert any("__class__" in p and "spec.yaml:" in p for p in problems(path))
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "__class__" in done.stderr and "Traceback" not in done.stderr


def spec_with_respond(tmp_path: Path, seeds_file: Path, respond: str) -> Path:
    """A spec whose prompts folder is the shipped one with respond.jinja replaced by `respond`."""
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    (prompts / "respond.jinja").write_text(respond)
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    return write_spec(tmp_path, data)


def test_a_template_reaching_for_python_internals_is_refused(tmp_path, seeds_file):
    found = problems(spec_with_respond(tmp_path, seeds_file, '{% call message("user") %}'
                                       '{{ instruction.__class__.__mro__ }}{% endcall %}'))
    assert [p for p in found if "respond.jinja" in p and "reaches for '__" in p and "sandbox" in p] == found[:1]


@pytest.mark.parametrize("source", ['"x" * 10**10', "[1, 2] * 10**9", "10**9 * 'ab'", "2 ** 100000000",
                                    "[1] | batch(10**9, 'x') | list", "[1] | slice(10**9) | list"])
def test_expressions_that_would_fill_the_memory_are_refused(source):
    """Jinja caps range() alone: `"x" * 10**10` took all the memory of the machine, `2 ** 10**8`
    computes for minutes. Both now stop at once; smaller ones compute."""
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError, match="more than 1,000,000"):
        Expression(source).evaluate({})
    assert Expression("'ab' * 3").evaluate({}) == "ababab" and Expression("2 ** 10").evaluate({}) == 1024
    assert Expression("[1, 2, 3] | batch(2, 0) | list").evaluate({}) == [[1, 2], [3, 0]]
    assert Expression("[1, 2, 3] | slice(2) | list").evaluate({}) == [[1, 2], [3]]


@pytest.mark.parametrize("source", ["[1] | batch(999000, 'x' * 50) | list",
                                    "range(100) | list | slice(99000, 'x' * 50) | list"])
def test_a_filler_is_counted_as_often_as_it_is_placed(source):
    """`batch` and `slice` repeat their filler: counted once, `batch(999000, 'x' * 5000)` passed the
    filter's estimate and made a value of 5 GB as JSON before the final size check refused it."""
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError, match="would make [0-9,]+ characters, more than 1,000,000"):
        Expression(source).evaluate({})


def test_a_template_that_would_fill_the_memory_is_refused_at_validate(tmp_path, seeds_file):
    spec = spec_with_respond(tmp_path, seeds_file, '{% call message("user") %}{{ instruction }}{{ "x" * 10**10 }}'
                                                   '{% endcall %}')
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "validate", str(spec)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "respond.jinja:1" in done.stderr and "more than 1,000,000" in done.stderr


def test_a_template_including_a_file_outside_the_prompts_folder_is_refused(tmp_path, seeds_file):
    spec = spec_with_respond(tmp_path, seeds_file, '{% include "../secrets.txt" %}')
    assert any("includes '../secrets.txt'" in p for p in problems(spec))


def test_a_template_variable_no_input_gives(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    del data["nodes"]["decode"]["inputs"]["count"]
    found = problems(write_spec(tmp_path, data))
    assert any("decode.jinja uses count, which node 'decode' does not provide" in p for p in found)


def test_a_reference_to_a_node_that_is_not_an_ancestor(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["nodes"]["decode"]["inputs"]["use_case"] = "judge.gap"  # inside a loop that runs after decode
    found = problems(write_spec(tmp_path, data))
    assert any("reads 'judge', which is not an ancestor of 'decode'" in p for p in found), found


def test_a_node_no_output_needs(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["nodes"]["extra"] = {"type": "llm", "for_each": "seeds", "model": "strong", "template": "respond.jinja",
                              "inputs": {"instruction": "seeds.instruction"}}
    assert any("node 'extra' feeds no output" in p for p in problems(write_spec(tmp_path, data)))


def test_a_cycle_through_a_collection(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["nodes"]["augment"]["from"] = "decode"  # the pool would wait for what it feeds
    data["nodes"]["augment"]["fields"]["use_case"] = {"choice": "decode.instruction"}
    found = problems(write_spec(tmp_path, data))
    assert any("descends from it" in p or "cycle" in p for p in found), found


def test_graph_prints_words_and_mermaid():
    words = CliRunner().invoke(cli.main, ["graph", str(REPO / "specs" / "codeclm.yaml")])
    assert words.exit_code == 0
    assert "augment: mix of encode (waits for all of them)" in words.output
    assert "decide: switch: keep_strong when judge.gap > params.threshold -> exit kept" in words.output
    mermaid = CliRunner().invoke(cli.main, ["graph", str(REPO / "specs" / "codeclm.yaml"), "--mermaid"])
    assert mermaid.exit_code == 0 and mermaid.output.startswith("flowchart TD")
    ids = mermaid_ids(mermaid.output)
    assert f'subgraph {ids["refine"]}["refine: loop"]' in mermaid.output
    assert f"{ids['encode']} ==> {ids['augment']}" in mermaid.output
    critique = CliRunner().invoke(cli.main, ["graph", str(REPO / "specs" / "critique_rewrite.yaml"), "--mermaid"])
    ids = mermaid_ids(critique.output)  # a body switch is a checkpoint for the nodes after it
    assert f"{ids['decide']} -.-> {ids['critique']}" in critique.output


def mermaid_ids(chart: str) -> dict[str, str]:
    """Each node's generated Mermaid id, by the name its label starts with."""
    return {name: ident for ident, name in re.findall(r'^\s*(?:subgraph )?(n\d+)[\[{]"([^<":]+)', chart, re.M)}


def test_mermaid_ids_are_generated_and_names_only_in_escaped_labels(tmp_path):
    """A node named `answer v2` or `end` went into Mermaid as an id: `end --> answer v2`, not a valid chart."""
    spec = write_spec(tmp_path, {
        "name": "odd-names", "prompts": str(REPO / "prompts"), "models": {"m": {"model": "local"}},
        "nodes": {"end": {"type": "source", "records": [{"instruction": "say hi"}]},
                  'answer "v2"': {"type": "llm", "for_each": "end", "model": "m", "template": "respond.jinja",
                                  "inputs": {"instruction": "end.instruction"}, "outputs": ["answer"]}},
        "outputs": {"dataset": {"from": 'answer "v2"', "fields": {"messages": [
            {"role": "'user'", "content": "end.instruction"},
            {"role": "'assistant'", "content": "end.instruction"}]}}}})
    chart = CliRunner().invoke(cli.main, ["graph", str(spec), "--mermaid"])
    assert chart.exit_code == 0, chart.output
    assert chart.output.splitlines()[1:] == ['  n0["end<br/>source"]', '  n1["answer #quot;v2#quot;<br/>llm (m)"]',
                                             "  n0 --> n1", '  n1 --> n2[("dataset.jsonl")]']


def test_dry_run_bounds_come_from_the_graph(tmp_path, seeds_file):
    """4 seeds, a pool of 3 with 2 instructions each, 4 iterations: the paper's call arithmetic."""
    from codeclm.programs.engine.dryrun import dry_run
    from codeclm.programs.engine.run import RunOptions

    rows = dry_run(load_spec(write_spec(tmp_path, base_spec(seeds_file))),
                   RunOptions(cache_dir=tmp_path / "cache"))
    bounds = {name: row["upper_bound"] for name, row in rows.items()}
    instructions = 3 * 2
    assert bounds == {"encode/strong": 4, "decode/strong": 3, "rubrics/strong": 3,
                      "answer_strong/strong": instructions * 4, "answer_target/target": instructions * 4,
                      "judge/strong": instructions * 4 * 2, "improve/strong": instructions * 3}


def test_the_language_imports_no_engine_no_model_and_no_dspy():
    """`validate` and `graph` stay light: programs/lang/ never imports the engine, the hub or DSPy."""
    import ast

    for path in (REPO / "programs" / "lang").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("dspy", "engine", "programs.engine")), (path.name, name)
                assert name not in ("hub", "backends", "adapter", "..hub", "..engine"), (path.name, name)
                if isinstance(node, ast.ImportFrom) and node.level == 2:
                    # errors and key checks; the checkers of the spec sections other packages own (budget,
                    # optimize), which import neither DSPy nor the engine
                    assert node.module in ("errors", "redact", "models.budget", "tuning.config"), (path.name, name)


def test_validate_graph_and_render_import_no_dspy():
    """`validate` and `render` imported DSPy (through the engine's modules, for the template check and the
    node's lookup): 2.8 and 4.3 s a spec or template edit on a 2-core machine, against 0.6 and 1.0 s."""
    import subprocess
    import sys

    for command in (["validate", "demo"], ["graph", "demo"], ["render", "demo", "encode"]):
        code = ("import sys; from click.testing import CliRunner; from codeclm.cli import main; "
                f"result = CliRunner().invoke(main, {command!r}); "
                "print(result.exit_code, 'dspy' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert done.stdout.split() == ["0", "False"], (command, done.stdout, done.stderr[-2000:])


def test_seeds_option_needs_a_spec_that_reads_one_file(tmp_path, seeds_file, scripted):
    data = {"name": "two-files", "prompts": str(REPO / "prompts"), "models": {"strong": {"model": "local"}},
            "nodes": {"first": {"type": "source", "path": str(seeds_file)},
                      "second": {"type": "source", "path": str(seeds_file)}},
            "outputs": {"a": {"from": "first", "fields": {"id": "record.id"}},
                        "b": {"from": "second", "fields": {"id": "record.id"}}}}
    from codeclm.programs.engine.run import RunOptions, run_spec

    with pytest.raises(SpecError, match="reads 2 files"):
        run_spec(load_spec(write_spec(tmp_path, data)), RunOptions(out=tmp_path / "run", seeds=seeds_file,
                                                                   cache_dir=tmp_path / "cache"))


def numbers_spec(tmp_path: Path, template: str) -> Path:
    """A source of inline records, an llm node on it and a pointwise judge, whose `write.jinja` is `template`;
    `write` gets the inputs of these the template reads (an input it never reads is an error of its own)."""
    from jinja2 import Environment, meta

    reads = meta.find_undeclared_variables(Environment().parse(template))
    prompts = tmp_path / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "write.jinja").write_text(template)
    (prompts / "rate.jinja").write_text('{% call message("user") %}Rate {{ text }} from {{ scale_low }} to '
                                        '{{ scale_high }}.{% endcall %}')
    (prompts / "shape.jinja").write_text('{% call message("user") %}Describe {{ text }} as JSON.{% endcall %}')
    params = {k: v for k, v in (("limit", 5), ("nums", [1, 2, 3])) if k in reads}
    data = {"name": "numbers", "prompts": str(prompts), "params": params,
            "models": {"w": {"model": "hosted_vllm/w", "api_base": "http://127.0.0.1:9/v1"}},
            "nodes": {"items": {"type": "source", "records": [{"id": "a", "text": "hi", "n": 2}]},
                      "rate": {"type": "judge", "for_each": "items", "model": "w", "template": "rate.jinja",
                               "inputs": {"text": "items.text"}, "scale": [1, 10]},
                      "shape": {"type": "llm", "for_each": "rate", "model": "w", "template": "shape.jinja",
                                "inputs": {"text": "items.text"}, "parse": "json", "outputs": ["size"]},
                      "write": {"type": "llm", "for_each": "shape", "model": "w", "template": "write.jinja",
                                "parse": "json", "outputs": ["out", "size"],
                                "inputs": {name: value for name, value in (
                                    ("n", "items.n"), ("limit", "params.limit"), ("score", "rate.score"),
                                    ("size", "shape.size"), ("tags", "['x', 'y']"), ("nums", "params.nums"))
                                    if name in reads}}},
            "outputs": {"dataset": {"from": "write", "fields": {"out": "write.out"}}}}
    return write_spec(tmp_path, data)


def test_a_template_computing_with_numbers_is_checked_with_numbers(tmp_path):
    """Sample values were all strings: `{{ n + 1 }}` with n a number, or `score < 5` with a judge's
    score, failed `validate` and `run` (TypeError) although the run would render them."""
    from codeclm.programs.engine.checks import check_templates

    template = ('{% call message("user") %}{{ n + 1 }} {% if limit > 3 and score > 5 %}high{% endif %} '
                '{{ tags | join(",") }} {{ nums | sum }}{% endcall %}')
    spec = load_spec(numbers_spec(tmp_path, template))
    check_templates(spec)
    shown = CliRunner().invoke(cli.main, ["render", str(tmp_path / "spec.yaml"), "write"])
    assert shown.exit_code == 0 and '"3 high x,y 6"' in shown.output, shown.output


@pytest.mark.parametrize("use", ["{{ size + 1 }}", "{{ size.name }}", "{{ size | tojson }}",
                                 "{% for k, v in size.items() %}{{ k }}{% endfor %}",
                                 "{% for d in demos %}{{ d.size + 1 }}{% endfor %}"])
def test_a_value_of_unknown_kind_may_be_anything(tmp_path, use):
    """A JSON parser's field may be a number, a mapping, a list: the check cannot tell, and refused
    templates that the run would render (in a demo too)."""
    from codeclm.programs.engine.checks import check_templates

    check_templates(load_spec(numbers_spec(tmp_path, f'{{% call message("user") %}}{use} {{{{ n }}}}{{% endcall %}}')))


def test_a_template_that_fails_whatever_the_values_is_still_an_error(tmp_path):
    from codeclm.programs.engine.checks import check_templates

    for template in ('{% call message("user") %}{{ n / 0 }}{% endcall %}',  # n is a number: the run fails too
                     '{% call message("user") %}{{ size }} {{ 1 / 0 }}{% endcall %}'):
        with pytest.raises(SpecError, match="template failed to render"):
            check_templates(load_spec(numbers_spec(tmp_path, template)))


def test_a_template_reading_params_is_told_to_take_an_input(tmp_path, seeds_file):
    """`{{ params.n }}` in a template: the hint said `add to inputs: params: <expression>`, and
    following it gave "'str object' has no attribute 'n'"."""
    found = problems(spec_with_respond(tmp_path, seeds_file, '{% call message("user") %}{{ instruction }} '
                                                             '{{ params.max_iterations }}{% endcall %}'))
    assert any("uses params" in p and "inputs: {NAME: params.FIELD}" in p and "{{ NAME }}" in p for p in found), found


def test_optimize_names_a_body_node_the_way_set_does():
    """optimize said `--set nodes.judge.program=...` for a node in a loop body, which --set refuses."""
    graph = load_spec(REPO / "specs" / "demo.yaml").graph
    assert graph.spec_path("encode") == "nodes.encode"
    assert graph.spec_path("judge") == "nodes.refine.body.judge"
    load_spec(REPO / "specs" / "demo.yaml", [f"{graph.spec_path('judge')}.temperature=0.5"])  # --set takes it
    rounds = load_spec(REPO / "specs" / "self_instruct.yaml").graph
    assert rounds.spec_path("generate_2") == "nodes.grow.body.generate"  # a round's copy: its body node


def test_dry_run_counts_a_lazy_node_a_top_level_node_reads(tmp_path, seeds_file):
    """A lazy judge read by a filter was left out of --dry-run (counted only where a loop read it)."""
    from codeclm.programs.engine.dryrun import dry_run
    from codeclm.programs.engine.run import RunOptions

    data = {"name": "lazy", "prompts": str(REPO / "prompts"), "models": {"strong": {"model": "local"}},
            "nodes": {"seeds": {"type": "source", "path": str(seeds_file)},
                      "answer": {"type": "llm", "for_each": "seeds", "model": "strong", "template": "respond.jinja",
                                 "inputs": {"instruction": "seeds.instruction"}, "outputs": ["answer"]},
                      "rate": {"type": "judge", "for_each": "answer", "model": "strong", "lazy": True,
                               "template": "alpagasus_rate.jinja", "scale": [0, 5],
                               "inputs": {"instruction": "seeds.instruction", "response": "answer.answer"}},
                      "good": {"type": "filter", "for_each": "answer", "where": "rate.score >= 3"}},
            "outputs": {"dataset": {"from": "good", "fields": {"answer": "answer.answer"}}}}
    rows = dry_run(load_spec(write_spec(tmp_path, data)), RunOptions(cache_dir=tmp_path / "cache"))
    assert {name: row["upper_bound"] for name, row in rows.items()} == {"answer/strong": 4, "rate/strong": 4}


def test_render_gives_a_computed_list_input_a_list():
    """`examples: prompts.human + prompts.machine` rendered "<examples>" one character per task."""
    shown = CliRunner().invoke(cli.main, ["render", str(REPO / "specs" / "self_instruct.yaml"), "generate_2"])
    assert shown.exit_code == 0 and "Task 1: <human>\\nTask 2: <machine>" in shown.output, shown.output
    # round 1 draws its machine tasks from an empty pool: [], as the run draws them (the sum was unknown,
    # and "<examples>" was shown one character per task)
    shown = CliRunner().invoke(cli.main, ["render", str(REPO / "specs" / "self_instruct.yaml"), "generate_1"])
    assert shown.exit_code == 0 and "Task 1: <human>\\nWrite 8 new tasks" in shown.output, shown.output


def test_a_template_nested_past_compiling_is_a_spec_error(tmp_path, seeds_file):
    """3,000 nested {% if %} was a RecursionError traceback from validate."""
    spec = spec_with_respond(tmp_path, seeds_file, '{% call message("user") %}' + "{% if true %}" * 3000 + "x"
                             + "{% endif %}" * 3000 + "{% endcall %}")
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "validate", str(spec)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "nested too deeply" in done.stderr, done.stderr


def test_nested_ranges_in_a_template_are_bounded_together(tmp_path, seeds_file):
    """`range(100000)` inside `range(100000)`: each range was capped, not their product, and validate ran
    for hours. A render's ranges now make at most 1,000,000 items in all; a loop of a few is fine."""
    spec = spec_with_respond(tmp_path, seeds_file, '{% call message("user") %}{% for i in range(100000) %}'
                             '{% for j in range(100000) %}{% endfor %}{% endfor %}{{ instruction }}{% endcall %}')
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "validate", str(spec)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "ranges make more than 1,000,000 items" in done.stderr, done.stderr
    (tmp_path / "small").mkdir()
    spec = spec_with_respond(tmp_path / "small", seeds_file, '{% call message("user") %}{% for i in range(3) %}'
                             '{% for j in range(3) %}{{ i * j }}{% endfor %}{% endfor %}{{ instruction }}{% endcall %}')
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "validate", str(spec)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

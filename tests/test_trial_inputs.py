"""Defects a user trial found: each bad input is exit 2 with the file, the line and the fix, or a
recorded failure, never a traceback or a silent surprise (a paid model called, a run named None)."""

from __future__ import annotations

import json

import pytest
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.seeds import read_records
from codeclm.programs.lang.spec import load_spec
from conftest import base_spec, write_spec
from test_bad_inputs import assert_reports, cli, raw_spec, spec_error

VLLM = ["models.strong.model=hosted_vllm/strong", "models.strong.api_base=http://127.0.0.1:9/v1"]


# -- a --set for a model role the spec does not declare ---------------------------------------


def test_a_set_for_a_role_nothing_reads_is_a_typo(tmp_path, seeds_file):
    path = write_spec(tmp_path, base_spec(seeds_file))
    with pytest.raises(Exception) as caught:
        load_spec(path, ["models.stong.model=hosted_vllm/mine", "models.stong.api_base=http://127.0.0.1:9/v1"], ())
    errors = getattr(caught.value, "errors", [caught.value])
    assert [e.file for e in errors] == ["--set models.stong.model"]
    assert "did you mean 'strong'?" in errors[0].hint and "strong, target" in errors[0].hint


def test_a_set_role_a_node_or_the_command_reads_is_kept(tmp_path, seeds_file):
    path = write_spec(tmp_path, base_spec(seeds_file))
    spec = load_spec(path, ["models.cheap.model=local", "nodes.encode.model=cheap"], ())
    assert spec.graph.every["encode"].model == "cheap"
    assert "tuned" in load_spec(path, ["models.tuned.model=local"], ("tuned",)).models  # evaluate --candidate
    assert "tuned" in load_spec(path, ["models.tuned.model=local"]).models  # no roles given: no check


def test_a_set_role_typo_through_the_cli(tmp_path, seeds_file):
    path = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("run", str(path), "--set", "models.stong.model=local", "--dry-run"),
                   "--set models.stong.model", "did you mean 'strong'?")


# -- name: ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "message"), [("name:", "name is empty"), ("name: 2024", "name must be text")])
def test_an_empty_or_non_text_name_is_refused_at_its_line(tmp_path, seeds_file, line, message):
    data = base_spec(seeds_file)
    del data["name"]
    path = write_spec(tmp_path, data)
    path.write_text(f"{line}\n{path.read_text()}")
    error = spec_error(path)
    assert error.line == 1 and message in error.message and "name: demo" in error.hint
    assert load_spec(raw_spec(tmp_path, path.read_text().split("\n", 1)[1])).name == "spec"  # no key: the file's


# -- a Gemini or Anthropic model with no key ---------------------------------------------------


@pytest.mark.parametrize(("model", "env"), [("gemini/gemini-1.5-pro", "GEMINI_API_KEY or GOOGLE_API_KEY"),
                                            ("anthropic/claude-3-5-sonnet-latest", "ANTHROPIC_API_KEY")])
def test_a_provider_key_missing_stops_the_run_before_it_starts(tmp_path, seeds_file, model, env):
    data = base_spec(seeds_file)
    data["models"] = {"strong": {"model": model}, "target": {"model": "hosted_vllm/t", "api_base": "http://127.0.0.1:9"}}
    path = write_spec(tmp_path, data)
    unset = {name: "" for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "ANTHROPIC_API_KEY")}
    done = cli("run", str(path), "--out", str(tmp_path / "run"), "-q", env=unset)
    assert_reports(done, f"{path}:", f"needs the {env} environment variable")
    assert not (tmp_path / "run").exists()


def test_a_provider_key_is_read_where_dspy_reads_it(monkeypatch):
    from codeclm.programs.lang.spec import ModelSpec
    from codeclm.programs.models.backends import missing_key

    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "MY_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    assert missing_key(ModelSpec("strong", "gemini/gemini-1.5-pro")) is None  # either of Gemini's variables
    assert "MY_KEY" in missing_key(ModelSpec("strong", "gemini/gemini-1.5-pro", api_key_env="MY_KEY"))
    monkeypatch.setenv("MY_KEY", "k")
    assert missing_key(ModelSpec("strong", "anthropic/claude", api_key_env="MY_KEY")) is None


# -- contradicting flags ----------------------------------------------------------------------


@pytest.mark.parametrize("flags", [("--replay", "--refresh"), ("--refresh", "--replay")])
def test_replay_and_refresh_together_are_refused(tmp_path, seeds_file, flags):
    data = base_spec(seeds_file)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": "http://127.0.0.1:9/v1", "retries": 0}
                      for role in ("strong", "target")}  # were it run, no model answers
    path = write_spec(tmp_path, data)
    done = cli("run", str(path), *flags, "--out", str(tmp_path / "run"))
    assert_reports(done, "--replay and --refresh contradict each other", "drop one of them")
    assert not (tmp_path / "run").exists()


# -- an output name longer than a file name ---------------------------------------------------


def test_an_output_name_past_a_file_name_is_refused_at_its_line(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["outputs"] = {("o" * 260 if name == "pool" else name): body for name, body in data["outputs"].items()}
    path = write_spec(tmp_path, data)
    error = spec_error(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "o" * 260 in text)
    assert error.line == line and "260 bytes long" in error.message and "200 bytes or less" in error.hint
    data["outputs"] = {("o" * 200 if name == "pool" else name): body for name, body in base_spec(seeds_file)
                       ["outputs"].items()}
    load_spec(write_spec(tmp_path, data))


# -- a hand-edited program file ---------------------------------------------------------------

PROGRAM = {"predict": {"traces": [], "train": [], "demos": [{"instruction": "Sort a list.", "use_case": "code",
                                                            "skills": ["sorting"]}],
                       "signature": {"instructions": "Analyze.", "fields": [{"prefix": "Instruction:",
                                                                             "description": "${instruction}"}]},
                       "lm": None}, "codeclm": {"node": "encode"},
           "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.4.1", "cloudpickle": "3.1"}}}


@pytest.mark.parametrize(("edit", "message"), [
    ({"demos": 7}, "predict.demos must be a list of examples (mappings), got a number"),
    ({"demos": ["x"]}, "predict.demos must be a list of examples (mappings), got a list of text"),
    ({"signature": "x"}, "predict.signature needs 'instructions'"),
], ids=["demos-number", "demos-text", "signature"])
def test_a_damaged_program_file_is_refused_when_the_spec_loads(tmp_path, seeds_file, edit, message):
    import json

    program = tmp_path / "encode.json"
    program.write_text(json.dumps({**PROGRAM, "predict": {**PROGRAM["predict"], **edit}}))
    path = write_spec(tmp_path, base_spec(seeds_file))
    error = spec_error(path, [f"nodes.encode.program={program}"])
    assert error.file == "--set nodes.encode.program" and str(program) in error.message and message in error.message
    assert "codeclm optimize" in error.hint and "remove that key" in error.hint
    for command in (("validate",), ("render", "--input", '{"instruction": "x"}')):
        where = [command[0], str(path), *(["encode", *command[1:]] if command[0] == "render" else [])]
        assert_reports(cli(*where, "--set", f"nodes.encode.program={program}"), str(program), message)


def test_a_sound_program_file_loads(tmp_path, seeds_file):
    import json

    program = tmp_path / "encode.json"
    program.write_text(json.dumps(PROGRAM))
    load_spec(write_spec(tmp_path, base_spec(seeds_file)), [f"nodes.encode.program={program}"])


@pytest.mark.parametrize(("node", "demo", "missing", "outputs"), [
    ("encode", {"instruction": "Sort a list.", "use_case": "code"}, "'skills'", "use_case, skills"),
    ("refine.body.judge", {"instruction": "Hi.", "answer_1": "a", "answer_2": "b", "score_1": 3}, "'score_2'",
     "score_1, score_2"),  # a pairwise judge's call gives the scores of one order
], ids=["llm", "pair-judge"])
def test_a_program_demo_without_an_output_is_refused_when_the_spec_loads(tmp_path, seeds_file, node, demo, missing,
                                                                         outputs):
    """A demo without one of the node's outputs passed validate, then every record failed on its
    prompt (encode.jinja reads each demo's skills)."""
    import json

    program = tmp_path / "program.json"
    demos = [{**PROGRAM["predict"]["demos"][0], "score_1": 1, "score_2": 2}, demo]
    program.write_text(json.dumps({**PROGRAM, "predict": {**PROGRAM["predict"], "demos": demos}}))
    path = write_spec(tmp_path, base_spec(seeds_file))
    key = f"nodes.{node}.program"
    error = spec_error(path, [f"{key}={program}"])
    assert error.file == f"--set {key}" and str(program) in error.message
    assert f"demo 2 of 2 (predict.demos[1]) has no {missing}, an output of node '{node.split('.')[-1]}'" \
        in error.message
    assert f"each demo holds the node's outputs ({outputs})" in error.hint and "codeclm optimize" in error.hint
    data = base_spec(seeds_file)
    data["nodes"]["encode"]["program"] = str(program) if node == "encode" else None
    data["nodes"]["refine"]["body"]["judge"]["program"] = str(program) if node != "encode" else None
    path = write_spec(tmp_path, data)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if str(program) in text)
    assert_reports(cli("validate", str(path)), f"{path}:{line}: {program}: demo 2 of 2", missing, "fix: each demo")


# -- a pick from an empty list, a param that is NaN -------------------------------------------

PICK = {"name": "pick", "models": {"strong": {"model": "local"}}, "params": {"styles": ["as a haiku"]},
        "nodes": {"questions": {"type": "source", "records": [{"instruction": "Describe the moon."}]},
                  "style": {"type": "pick", "for_each": "questions", "from": "params.styles"},
                  "answer": {"type": "llm", "for_each": "style", "model": "strong", "template": "respond.jinja",
                             "inputs": {"instruction": "questions.instruction ~ style.value"}, "outputs": ["answer"]}},
        "outputs": {"dataset": {"from": "answer", "fields": {"id": "record.id", "answer": "answer.answer"}}}}


@pytest.mark.parametrize(("params", "choices", "where", "message"), [
    ({"styles": []}, "params.styles", "styles:", "params.styles must be a non-empty list"),
    ({"styles": ["x"]}, "[]", "from: '[]'", "node 'style' from must be a non-empty list, range or mapping"),
    ({"styles": "as a haiku"}, "params.styles", "styles:", "params.styles must be a non-empty list"),
], ids=["empty-param", "empty-literal", "text-param"])
def test_a_pick_from_an_empty_list_known_at_load_is_refused(tmp_path, params, choices, where, message):
    """Each record failed with 'nothing to pick from' at run time."""
    from conftest import REPO

    data = {**PICK, "prompts": str(REPO / "prompts"), "params": params}
    data["nodes"] = {**PICK["nodes"], "style": {**PICK["nodes"]["style"], "from": choices}}
    path = write_spec(tmp_path, data)
    error = spec_error(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if where in text)
    assert (error.file, error.line) == (str(path), line) and message in error.message, str(error)
    assert "a pick draws one of its items" in error.message
    load_spec(write_spec(tmp_path, {**data, "params": {"styles": ["x"]}, "nodes": PICK["nodes"]}))


@pytest.mark.parametrize(("choices", "params"), [("range(0, params.n)", {"n": 3}),
                                                 ("params.by_style", {"by_style": {"haiku": 1}})],
                         ids=["range", "mapping"])
def test_a_pick_from_a_range_or_a_mapping_known_at_load_validates(tmp_path, choices, params):
    """A pick draws from any collection (a mapping's keys): the check of an empty list refused both."""
    from conftest import REPO

    data = {**PICK, "prompts": str(REPO / "prompts"), "params": params}
    data["nodes"] = {**PICK["nodes"], "style": {**PICK["nodes"]["style"], "from": choices}}
    load_spec(write_spec(tmp_path, data))


def test_a_pick_without_from_is_one_error(tmp_path):
    from conftest import REPO

    data = {**PICK, "prompts": str(REPO / "prompts"), "params": {}}
    data["nodes"] = {**PICK["nodes"], "style": {"type": "pick", "for_each": "questions"}}
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(write_spec(tmp_path, data))
    errors = getattr(caught.value, "errors", [caught.value])
    assert len(errors) == 1 and "a pick needs from:" in errors[0].message, [str(e) for e in errors]


@pytest.mark.parametrize(("value", "name", "where"), [(float("nan"), "params.threshold", "  threshold: .nan"),
                                                    (float("inf"), "params.threshold", "  threshold: .inf"),
                                                    ([1, float("-inf")], "params.threshold.1", "  - -.inf")],
                         ids=["nan", "inf", "in-a-list"])
def test_a_param_that_is_nan_or_infinite_is_refused_at_its_line(tmp_path, seeds_file, value, name, where):
    """`threshold: .nan` made every comparison with it false: every record was dropped, silently."""
    path = write_spec(tmp_path, base_spec(seeds_file, threshold=value))
    error = spec_error(path)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text == where)
    assert (error.file, error.line) == (str(path), line), str(error)
    assert f"{name} must be a finite number" in error.message
    assert "write a number" in error.hint
    error = spec_error(write_spec(tmp_path, base_spec(seeds_file)), ["params.threshold=.nan"])
    assert error.file == "--set params.threshold" and "got nan" in error.message


# -- a template reading a field a value lacks --------------------------------------------------


def test_a_template_reading_a_field_a_demo_lacks_says_which_variable_and_its_fields(tmp_path):
    """`demo.answer` where the node's output is `reply`: the hint listed the variables given (demos,
    instruction, ...), which all were; it now says what the demo lacks and holds."""
    (tmp_path / "r.jinja").write_text('{% for demo in demos %}{% call message("user") %}{{ demo.instruction }}'
                                      '{% endcall %}\n{% call message("assistant") %}{{ demo.answer }}{% endcall %}'
                                      '{% endfor %}{% call message("user") %}{{ instruction }}{% endcall %}')
    data = {**PICK, "prompts": str(tmp_path)}
    data["nodes"] = {**PICK["nodes"], "answer": {**PICK["nodes"]["answer"], "template": "r.jinja",
                                                 "outputs": ["reply"]}}
    data["outputs"] = {"dataset": {"from": "answer", "fields": {"id": "record.id", "reply": "answer.reply"}}}
    assert_reports(cli("validate", str(write_spec(tmp_path, data))), f"{tmp_path / 'r.jinja'}:2: ",
                   "has no attribute 'answer'", "fix: demo has no field 'answer'; a demo holds the node's inputs and "
                   "outputs by name: instruction, reply", "name an output 'answer'")


def test_an_undefined_field_hint_names_the_variable_and_its_fields(tmp_path):
    from codeclm.programs.errors import SpecError
    from codeclm.programs.lang.templates import TemplateStore

    (tmp_path / "t.jinja").write_text('{% call message("user") %}\n{{ item["topic"] }} {{ name.upper }}'
                                      '{{ missing }}{% endcall %}')
    template = TemplateStore(tmp_path).get("t.jinja")
    with pytest.raises(SpecError) as caught:
        template.render({"item": {"use_case": "x", "skills": []}, "name": "n"})
    assert caught.value.line == 2 and caught.value.hint == "item has no field 'topic'; its fields: skills, use_case"
    with pytest.raises(SpecError) as caught:
        template.render({"item": {"topic": "x"}, "name": "n"})
    assert caught.value.hint == "variables given: item, name"  # a variable none gives: the variables are the fix


# -- expressions that would grow without bound ------------------------------------------------


def test_range_is_capped_as_in_templates():
    from codeclm.programs.lang.expressions import Expression

    with pytest.raises(OverflowError):
        Expression("range(10**9) | list").evaluate({})
    assert Expression("range(3) | list").evaluate({}) == [0, 1, 2]


@pytest.mark.parametrize("source", ["state.s ~ state.s", "state.s + state.s", "[state.s] * 1000",
                                    "[state.s, state.s] | join", "[[state.s], [state.s]]",
                                    "{1: state.s, 2: state.s}"])  # int keys: no JSON bound, walked
def test_a_computed_value_past_max_made_is_refused(source):
    from codeclm.programs.lang.expressions import Expression
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError, match="more than 1,000,000"):
        Expression(source).evaluate({"state": {"s": "ab" * 300_000}})
    assert len(Expression(source).evaluate({"state": {"s": "ab"}})) >= 2


@pytest.mark.parametrize("source", ["x | center(10**9)", "x | indent(10**7)", "x | replace('', y)",
                                    "'%999999999s' | format(1)", "items | join(y)", "x.center(10**9)",
                                    "x.ljust(10**9)", "x.zfill(10**9)", "x.expandtabs(10**7)", "y.join(items)",
                                    "x.replace('a', y)"])
def test_a_filter_or_method_that_would_make_too_much_is_refused_before_it_runs(source):
    """A value's size was checked only after it was made: `x | center(10**9)` first took a gigabyte."""
    from codeclm.programs.lang.expressions import Expression
    from jinja2.exceptions import SecurityError

    scope = {"x": "a\tb\nc" * 10, "y": "z" * 200_000, "items": ["w"] * 100}
    with pytest.raises(SecurityError, match="would make .* characters, more than 1,000,000"):
        Expression(source).evaluate(scope)
    small = source.replace("10**9", "9").replace("10**7", "2").replace("999999999", "9")
    assert Expression(small).evaluate({**scope, "y": "z"}) is not None


def test_a_template_is_bounded_as_expressions_are(tmp_path):
    from codeclm.programs.errors import SpecError
    from codeclm.programs.lang.templates import TemplateStore

    (tmp_path / "t.jinja").write_text('{% call message("user") %}{{ x | center(10**9) }}{% endcall %}')
    with pytest.raises(SpecError, match="t.jinja:1: template failed to render: [|]center would make"):
        TemplateStore(tmp_path).get("t.jinja").render({"x": "hi"})


GROWING = {
    "name": "growing", "models": {"strong": {"model": "local"}},
    "nodes": {"seeds": {"type": "source", "records": [{"instruction": "Sort a list."}]},
              "grow": {"type": "loop", "for_each": "seeds", "max": 60, "state": {"s": "'ab'"},
                       "body": {"decide": {"type": "switch", "cases": [{"name": "again"}]}},
                       "next": {"s": "state.s ~ state.s"}, "trace": {"size": "state.s | length"}}},
    "outputs": {"dataset": {"from": "grow", "fields": {"size": "state.s | length"}},
                "counts": {"from": "seeds", "fields": {"iteration": "range(10**9) | list"}}},
}


def test_a_loop_state_or_an_output_that_grows_without_bound_is_a_recorded_failure(tmp_path, scripted):
    import json

    data = {**GROWING, "prompts": str(tmp_path)}
    scripted(write_spec(tmp_path, data))
    failures = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    errors = sorted(f"{f['stage']}: {f['error']}" for f in failures)
    assert len(errors) == 2, errors
    assert errors[0].startswith("grow: next.s: SecurityError: 'state.s ~ state.s' made a value of more than")
    assert errors[1].startswith("output counts: its fields or where: failed: OverflowError: Range too big")



def test_a_loop_whose_next_fails_keeps_its_iterations_and_calls(tmp_path, scripted):
    """`next` reading a body node that did not run (its when: false) failed the loop record as a bare
    failure: no iterations, no exit, no calls, though the body's calls were made and paid for."""
    from conftest import REPO, ScriptedBackend
    from fake_openai_server import answer_text

    def judge(messages):  # every answer is rated 3: below good_enough, so the loop goes on to `next`
        text = messages[-1]["content"]
        return "3\nMeh." if "Rate the answer" in text else answer_text(messages, "scripted/judge")

    scripted.backends = {"writer": ScriptedBackend("scripted/writer"),
                         "judge": ScriptedBackend("scripted/judge", judge)}
    result = scripted(REPO / "specs" / "critique_rewrite.yaml", overrides=["nodes.improve.body.rewrite.when=false"])
    histories = [json.loads(line) for line in (result.out / "histories.jsonl").read_text().splitlines()]
    assert histories and all(h["status"] == "failed" for h in histories)
    for history in histories:
        assert history["failure"]["stage"] == "improve"
        assert history["failure"]["error"].startswith("next.answer: 'rewrite' is undefined")
        (iteration,) = history["iterations"]  # the iteration that ran, with its failure and calls
        assert iteration["score"] == 3 and iteration["decision"] == "rewrite"
        assert iteration["failure"]["error"] == history["failure"]["error"]
        assert [call["stage"] for call in iteration["calls"]] == ["judge", "critique"]
    failures = [json.loads(line) for line in (result.out / "failures.jsonl").read_text().splitlines()]
    assert {len(f["calls"]) for f in failures if f["node"] == "improve"} == {2}

# -- seed files: a text file read for several fields, a CSV row of extra values, an empty field ----


def test_a_text_file_read_for_several_fields_is_refused(tmp_path, seeds_file):
    """Each declared field was filled with the whole line ("topic": "What is a hash map?"), exit 0."""
    seeds = tmp_path / "q.txt"
    seeds.write_text("What is a hash map?\nWhat is DNS?\n")
    data = base_spec(seeds_file)
    data["nodes"]["seeds"]["fields"] = {"instruction": "question", "topic": "topic"}
    done = cli("run", str(write_spec(tmp_path, data)), "--dry-run", "--seeds", str(seeds))
    assert_reports(done, f"{seeds}: a text file gives one field per line", "question, topic",
                   "JSONL", "CSV", "declare one field")
    with pytest.raises(SpecError, match="one field per line"):
        read_records(seeds, {"question": "question", "topic": "topic"})
    assert read_records(seeds, {"question": "question"}) == [  # one field: the line, whatever its name
        {"id": "s00000", "question": "What is a hash map?"}, {"id": "s00001", "question": "What is DNS?"}]
    both = read_records(seeds, {"question": "text", "original": "text"})  # one field under two names: the line
    assert both[0] == {"id": "s00000", "question": "What is a hash map?", "original": "What is a hash map?"}


@pytest.mark.parametrize(("rows", "message"), [('"What is up?",x,extra', "3 values for 2 columns"),
                                               ("What is up?", "1 value for 2 columns")], ids=["long", "short"])
def test_a_csv_row_of_more_or_fewer_values_than_columns_is_refused_at_its_line(tmp_path, rows, message):
    """An unquoted comma shifted values into the wrong fields, silently."""
    seeds = tmp_path / "q.csv"
    seeds.write_text(f'question,topic\n"What is a hash map?",data\n{rows}\n')
    for fields in ({"question": "question", "topic": "topic"}, {"question": "question"}):
        with pytest.raises(SpecError) as caught:
            read_records(seeds, fields)
        error = caught.value
        assert (error.file, error.line, error.message) == (str(seeds), 3, message) and "quote" in error.hint
    seeds.write_text('question,topic\n"What is up, then?",x\n')
    assert read_records(seeds, {"question": "question"})[0]["question"] == "What is up, then?"


@pytest.mark.parametrize(("name", "content"), [("q.jsonl", '{"id": "a", "question": " ", "topic": "t"}\n'),
                                               ("q2.jsonl", '{"id": "a", "question": null}\n'),
                                               ("q.csv", "id,question,topic\na,,t\n")])
def test_an_empty_field_is_called_empty(tmp_path, name, content):
    """An empty field read "record has no text in field 'question'" then "fields here: id, question"."""
    seeds = tmp_path / name
    seeds.write_text(content)
    with pytest.raises(SpecError) as caught:
        read_records(seeds, {"question": "question"})
    assert caught.value.line == (2 if name.endswith(".csv") else 1)
    assert caught.value.message == "field 'question' is empty" and "fields here" not in caught.value.hint


@pytest.mark.parametrize("name", ["q.jsonl", "q.csv"])
def test_a_seed_file_is_read_once_to_check_and_once_to_stream(tmp_path, monkeypatch, name):
    """It was read once per field to check it, once more for its first record, then once per field
    again to stream it: seven passes over a file of three fields."""
    from codeclm.programs.lang import seeds as seed_files
    from codeclm.programs.lang.seeds import stream_records

    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("id,q,a,t\nx,What is DNS?,A name system.,net\ny,What is TCP?,A protocol.,net\n")
    else:
        path.write_text("".join(json.dumps({"id": i, "q": f"Q{i}?", "a": f"A{i}.", "t": "t"}) + "\n" for i in "xy"))
    passes = []
    real_lines = seed_files._lines
    monkeypatch.setattr(seed_files, "_lines", lambda p: passes.append(p) or real_lines(p))
    count, rows = stream_records(path, {"question": "q", "answer": "a", "topic": "t"})
    assert (count, len(passes)) == (2, 1)
    assert next(rows) == {"id": "x", "question": "What is DNS?" if name.endswith(".csv") else "Qx?",
                          "answer": "A name system." if name.endswith(".csv") else "Ax.",
                          "topic": "net" if name.endswith(".csv") else "t"}
    assert len(list(rows)) == 1 and len(passes) == 2

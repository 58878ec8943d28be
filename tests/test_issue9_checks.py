"""Issue 9, checked again on the node language: names that would be paths, sandbox escapes through
filters, and template errors that only rendering finds. Each is an exit 2 with the file (and line
where there is one) before the first model call: the fake server counts zero requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from codeclm import cli
from conftest import REPO, base_spec, write_spec
from fake_openai_server import FakeOpenAIServer


def codeclm(*args: str) -> object:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def served(data: dict, server: FakeOpenAIServer) -> dict:
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url, "retries": 0, "timeout": 5}
                      for role in ("strong", "target")}
    return data


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil", ".hidden", "failures", "manifest", "dataset_info"])
def test_an_output_name_is_a_name_not_a_path(tmp_path, seeds_file, name):
    """An output writes NAME.jsonl in the run folder: `../../evil` wrote outside it, `failures` onto
    the run's own failures file."""
    data = base_spec(seeds_file)
    data["outputs"][name] = data["outputs"]["pool"]
    result = codeclm("validate", write_spec(tmp_path, data))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"output name {name!r}" in result.output and "spec.yaml:" in result.output


def test_a_node_or_model_role_name_is_a_name_not_a_path(tmp_path, seeds_file):
    """A node names `runs/NAME-optimize/NODE.json`, a role `runs/NAME-eval-ROLE`."""
    data = base_spec(seeds_file)
    data["models"]["../role"] = {"model": "local"}
    data["nodes"]["../node"] = {"type": "pick", "for_each": "seeds", "from": "[1]"}
    data["outputs"]["picked"] = {"from": "../node", "fields": {"id": "record.id"}}
    result = codeclm("validate", write_spec(tmp_path, data))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "model role '../role' is not a plain name" in result.output
    assert "node name '../node' is not a plain name" in result.output


@pytest.mark.parametrize("expression", ["augment|attr('__class__')", "augment|attr('mro')",
                                        "[augment]|map(attribute='__class__')|list",
                                        "[augment]|map('attr', '__globals__')|list", "augment|attr(params.x)"])
def test_filters_that_name_python_internals_are_refused_at_validate(tmp_path, seeds_file, expression):
    data = base_spec(seeds_file)
    data["outputs"]["pool"]["fields"]["escape"] = expression
    result = codeclm("validate", write_spec(tmp_path, data))
    assert result.exit_code == 2 and "Traceback" not in result.output and "sandbox refuses" in result.output
    assert "spec.yaml:" in result.output


def test_ordinary_filter_arguments_still_pass(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["outputs"]["pool"]["fields"]["skills"] = "augment.skills | sort | join('_') | replace('_', ', ')"
    assert codeclm("validate", write_spec(tmp_path, data)).exit_code == 0


@pytest.mark.parametrize("tail", ["{% include 'nosuch.jinja' %}", "{{ instruction.nosuch.deeper }}", "{{ 1 / 0 }}",
                                  "{{ instruction | int(strict) }}"])
def test_a_template_error_only_rendering_finds_stops_run_before_any_call(tmp_path, seeds_file, tail):
    """`validate` renders each template with sample values; `run` does the same before its first call
    (it used to spend the calls up to the improve step, then record every record as failed), and a
    Python error in a template (1/0) is a located error, not a traceback."""
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    (prompts / "improve.jinja").write_text((prompts / "improve.jinja").read_text() + tail)
    with FakeOpenAIServer() as server:
        data = served(base_spec(seeds_file), server)
        data["prompts"] = str(prompts)
        spec = write_spec(tmp_path, data)
        for args in (["validate", spec], ["run", spec, "-q", "--out", tmp_path / "run", "--cache-dir",
                                          tmp_path / "cache"],
                     ["run", spec, "--dry-run", "--cache-dir", tmp_path / "cache"]):
            result = codeclm(*args)
            assert result.exit_code == 2, (args, result.output)
            assert "Traceback" not in result.output and "improve.jinja" in result.output
        bench = tmp_path / "bench.jsonl"
        bench.write_text('{"instruction": "Say hi."}\n')
        result = codeclm("evaluate", spec, bench, "--candidate", "target", "--cache-dir", tmp_path / "cache",
                         "--out", tmp_path / "eval")
        assert result.exit_code == 2 and "improve.jinja" in result.output, result.output
        assert server.requests == 0
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("inside", ["{{ 1 / 0 }}", "{{ instruction }}"])
def test_an_instructions_block_that_does_not_render_is_a_located_error(tmp_path, seeds_file, inside):
    """The default instructions are the block rendered on its own: an error in it was a traceback."""
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    source = (prompts / "encode.jinja").read_text()
    (prompts / "encode.jinja").write_text(source.replace("{% block instructions %}", "{% block instructions %}"
                                                         + inside, 1))
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    line = source[:source.index("{% block instructions %}")].count("\n") + 1
    for command in ("validate", "run"):
        result = codeclm(command, write_spec(tmp_path, data), *(["--dry-run", "--cache-dir", tmp_path / "c"]
                                                                 if command == "run" else []))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"encode.jinja:{line}: the instructions block does not render" in result.output

@pytest.mark.parametrize(("key", "value", "message"), [
    ("api_base", "http://[bad/v1", "not a valid URL"), ("api_base", "not a url", "http:// or https://"),
    ("api_base", 123, "must be a URL"), ("api_base", "http://127.0.0.1:99999/v1", "Port out of range"),
    ("api_base", "http://127.0.0.1:8000/v1#token=abc", "holds a credential"),
    ("api_base", "http://\u00e4..b/v1", "not a valid URL (encoding with 'idna' codec failed"),
    ("top_p", "x", "top_p must be a number from 0 to 1"), ("rpm", "fast", "rpm must be a number above 0"),
    ("n_ctx", -1, "n_ctx must be a whole number"), ("timeout", 0, "timeout must be a number above 0"),
    ("retries", 1.5, "retries must be a whole number"), ("max_tokens", 0, "max_tokens must be a whole number"),
    ("temperature", float("nan"), "temperature must be"), ("extra", "text", "extra must be a mapping"),
    ("extra", [1], "extra must be a mapping"),
    ("max_tokens", 10**20, "max_tokens must be a whole number from 1 to 1000000"),
    ("model", "gpt4", "'gpt4' names no provider"), ("model", "locall", "did you mean 'local'"),
    ("model", "hosted_vlm/strong", "did you mean 'hosted_vllm/strong'"),
    ("extra", {"presence_penalty": float("nan")}, "extra.presence_penalty must be a finite number, got nan"),
    ("extra", {"logit_bias": {"50256": float("-inf")}}, "extra.logit_bias.50256 must be a finite number"),
])
def test_model_settings_that_cannot_work_are_refused_with_their_line(tmp_path, seeds_file, key, value, message):
    """These passed validation and then failed every call (exit 1), were sent as is, or crashed with a
    traceback (`extra: text`); now they are exit 2 at the setting's line, before any call."""
    data = base_spec(seeds_file)
    data["models"]["strong"].update({"model": "hosted_vllm/strong", "api_base": "http://127.0.0.1:9/v1", key: value})
    result = codeclm("run", write_spec(tmp_path, data), "-q", "--out", tmp_path / "run",
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and message in result.output and "spec.yaml:" in result.output
    assert "abc" not in result.output  # a message never repeats a credential
    assert not (tmp_path / "run").exists()


INTERLEAVED = ("1. Rubric: Depth of the analysis\nAction: Add a SWOT analysis\n2. Rubric: Awareness of rivals\n"
               "Action: Compare with two competitors\n3. Rubric: Use of evidence\nAction: Ask for figures\n"
               "4. Rubric: Attention to risks\nAction: Require a plan for the largest risk")


def test_the_engine_reads_interleaved_rubrics_as_pairs(tmp_path, seeds_file, scripted):
    """The issue's layout through the node language's `rubrics` parser: four pairs, and the improve
    step is given one of the four actions, never rubric text."""
    fake = scripted.backends["strong"].answer
    scripted.backends["strong"].answer = lambda messages: (
        INTERLEAVED if "corresponding actions" in messages[-1]["content"] else fake(messages))
    result = scripted(write_spec(tmp_path, base_spec(seeds_file, threshold=100)))
    lines = [json.loads(line) for line in (result.out / "rubrics.jsonl").read_text().splitlines()]
    assert lines and all(line["status"] == "ok" for line in lines)
    actions = ["Add a SWOT analysis", "Compare with two competitors", "Ask for figures",
               "Require a plan for the largest risk"]
    assert all(line["actions"] == actions and len(line["rubrics"]) == 4 for line in lines)
    assert all("Rubric" not in r and "Action" not in r for line in lines for r in line["rubrics"])
    improved = [m for m in scripted.backends["strong"].calls if "Action" not in m[-1]["content"]
                and any(a in m[-1]["content"] for a in actions)]
    assert improved  # the improve step ran with actions from the list


@pytest.fixture
def broken_server():
    """An OpenAI-compatible address whose answer is an endless body, or a completion with no message."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    kind = {"body": b"endless"}

    def handle(conn):
        with conn:
            try:
                conn.recv(65536)
                if kind["body"] == b"endless":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                    while True:
                        conn.sendall(b"x" * 65536)
                body = kind["body"]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
            except OSError:
                pass

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", kind
    listener.close()


@pytest.mark.parametrize(("body", "message"), [(b"endless", "response body over the 1 MiB"),
                                               (b'{"choices": [{"message": null}]}', "malformed response body")])
def test_a_server_answering_garbage_fails_the_call_with_a_message(tmp_path, seeds_file, broken_server, monkeypatch,
                                                                  body, message):
    """A body that never ends used to be read into memory until the timeout (1 GB in 3 s on
    localhost); a choice with no message was a bare TypeError. Both are recorded failures that say so."""
    from codeclm.programs.models import backends

    monkeypatch.setattr(backends, "MAX_RESPONSE_BYTES", 1 << 20)
    url, kind = broken_server
    kind["body"] = body
    data = base_spec(seeds_file)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": url, "retries": 0, "timeout": 30}
                      for role in ("strong", "target")}
    result = codeclm("run", write_spec(tmp_path, data), "-q", "--out", tmp_path / "run",
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.output and "hosted_vllm/strong" in result.output


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run of the CodecLM spec on the fake server."""
    folder = tmp_path_factory.mktemp("finished")
    seeds = folder / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": f"Write a note about topic {i}."}) + "\n"
                             for i in range(4)))
    with FakeOpenAIServer() as server:
        spec = write_spec(folder, served(base_spec(seeds), server))
        result = codeclm("run", spec, "-q", "--no-report", "--out", folder / "run", "--cache-dir", folder / "cache")
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.mark.parametrize(("damage", "where"), [
    (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe garbage"), "manifest.json:1: damaged: not UTF-8"),
    (lambda d: (d / "manifest.json").write_text("[1, 2]"), "manifest.json:1: damaged: a list"),
    (lambda d: (d / "instructions.jsonl").write_text('{"status": "kept", "iterations": "x"}\n'),
     "does not hold what codeclm wrote"),
    (lambda d: (d / "manifest.json").write_text(json.dumps({**json.loads((d / "manifest.json").read_text()),
                                                            "spec": 5})), "does not hold what codeclm wrote"),
], ids=["manifest-not-utf8", "manifest-a-list", "histories-wrong-shape", "manifest-spec-not-a-mapping"])
def test_a_damaged_run_folder_is_a_message_for_every_reader(tmp_path, finished_run, damage, where):
    """inspect, report, export and replay read a run folder: an edited or damaged file in it used to
    end in a traceback (inspect on a manifest that is not UTF-8, report on a manifest whose spec is
    not a mapping, ...); now each says which file (and line) and exits 2."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    damage(run)
    results = [codeclm("inspect", run), codeclm("report", run, "--out", tmp_path / "r.html"),
               codeclm("export", run, tmp_path / "export", "--no-cache-bundle"),
               codeclm("replay", run, "--out", tmp_path / "replayed")]
    for result in results:
        assert result.exit_code in (0, 2), result.output  # a reader that copes with the damage is fine too
        assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, TypeError))
    assert any(where in r.output for r in results), [r.output for r in results]


def test_a_cache_folder_holding_someone_elses_database_is_left_alone(tmp_path, seeds_file):
    """`--cache-dir` onto a folder whose cache.db is another program's SQLite database: diskcache
    used to add its tables to it. Refused, exit 2, the database unchanged and no run folder made."""
    import sqlite3

    folder = tmp_path / "mine"
    folder.mkdir()
    with sqlite3.connect(folder / "cache.db") as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    before = (folder / "cache.db").read_bytes()
    with FakeOpenAIServer() as server:
        result = codeclm("run", write_spec(tmp_path, served(base_spec(seeds_file), server)), "-q",
                         "--out", tmp_path / "run", "--cache-dir", folder)
        assert server.requests == 0
    assert result.exit_code == 2 and "not a codeclm cache" in result.output and "orders" in result.output
    assert (folder / "cache.db").read_bytes() == before and not (tmp_path / "run").exists()


def test_report_and_cache_export_never_write_over_a_file_they_did_not_make(tmp_path, finished_run):
    """`report --out FILE` and `cache export RUN FILE` replaced any file at FILE; now only one they wrote."""
    cache = finished_run.parent / "cache"
    mine = tmp_path / "notes.html"
    mine.write_text("my notes\n")
    result = codeclm("report", finished_run, "--out", mine)
    assert result.exit_code == 2 and "not a codeclm report" in result.output and mine.read_text() == "my notes\n"
    bundle = tmp_path / "calls.jsonl"
    bundle.write_text("my notes\n")
    result = codeclm("cache", "export", finished_run, bundle, "--cache-dir", cache)
    assert result.exit_code == 2 and "not a codeclm cache bundle" in result.output
    assert bundle.read_text() == "my notes\n"
    for name in ("report.html", "calls.jsonl", "calls.jsonl.gz"):  # their own files: written again
        path = tmp_path / "own" / name
        path.parent.mkdir(exist_ok=True)
        args = ("report", finished_run, "--out", path) if name.endswith("html") else \
            ("cache", "export", finished_run, path, "--cache-dir", cache)
        assert codeclm(*args).exit_code == 0 and codeclm(*args).exit_code == 0, name


@pytest.mark.parametrize(("content", "message"), [("root:x:0:0:root:/root:/bin/bash\n", "is not a program"),
                                                  ('{"predict": 5}', "not a program `codeclm optimize` saved"),
                                                  ('{"predict": {"signature": {"instructions": "x"}, "lm": null}}',
                                                   "no 'metadata.dependency_versions'")])
def test_a_program_file_that_is_not_a_saved_program_is_exit_2(tmp_path, seeds_file, content, message):
    """`program: /etc/passwd` was a traceback from DSPy's loader."""
    program = tmp_path / "program.json"
    program.write_text(content)
    data = base_spec(seeds_file)
    data["nodes"]["decode"]["program"] = str(program)
    with FakeOpenAIServer() as server:
        result = codeclm("run", write_spec(tmp_path, served(data, server)), "-q", "--out", tmp_path / "run",
                         "--cache-dir", tmp_path / "cache")
        assert server.requests == 0
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_export_says_when_the_seed_file_it_ships_holds_a_credential(tmp_path):
    """Every artifact is redacted; the seed file is shipped byte for byte (a replay renders it again), so
    export names the line that looks like a key instead of shipping it silently."""
    pytest.importorskip("pyarrow")
    key = "sk-proj-" + "A1b2C3d4E5" * 4
    seeds = tmp_path / "seeds.jsonl"
    texts = ["Write a haiku.", "Sort a list.", f"Call the API with {key}.", "Plan a trip."]
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": t}) + "\n" for i, t in enumerate(texts)))
    with FakeOpenAIServer() as server:
        spec = write_spec(tmp_path, served(base_spec(seeds), server))
        assert codeclm("run", spec, "-q", "--no-report", "--out", tmp_path / "run",
                       "--cache-dir", tmp_path / "cache").exit_code == 0
    assert not any(key in p.read_text() for p in (tmp_path / "run").iterdir() if p.is_file())
    result = codeclm("export", tmp_path / "run", tmp_path / "export", "--no-cache-bundle")
    assert result.exit_code == 0, result.output
    assert f"{seeds}:3 holds something shaped like a credential" in result.output


@pytest.mark.parametrize(("name", "content", "where", "message"), [
    ("seeds.jsonl", '{"instruction": "a"}\n{"instruction": "b", "instruction": "c"}\n', 2,
     "field 'instruction' is given twice"),
    ("seeds.csv", "instruction,instruction\na,b\n", 1, "names column 'instruction' twice"),
    ("seeds.csv", 'instruction\nfine\n"unclosed\nthe rest\nof the file\n', 3, "unexpected end of data"),
    ("seeds.csv", 'instruction\nfine\n"quoted"then text\n', 3, "expected after"),
    ("seeds.jsonl", '{"instruction": "a"}\n{"instruction": 3}\n', 2,
     "field 'instruction' holds a number, not text"),  # it said "no text in field", then listed the field
], ids=["jsonl-duplicate-key", "csv-duplicate-column", "csv-unclosed-quote", "csv-text-after-quote",
        "jsonl-number"])
def test_seed_files_read_silently_wrong_are_refused_with_their_line(tmp_path, seeds_file, name, content, where,
                                                                   message):
    """A duplicate key or column was last-wins, an unclosed quote swallowed the rest of the file into one seed."""
    bad = tmp_path / name
    bad.write_text(content)
    result = codeclm("run", write_spec(tmp_path, base_spec(seeds_file)), "--seeds", bad, "--dry-run",
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and f"{name}:{where}:" in result.output and message in result.output, result.output


def _shipped(name: str, seeds: Path, server: FakeOpenAIServer) -> dict:
    import yaml

    data = yaml.safe_load((REPO / "specs" / name).read_text())
    data["prompts"] = str(REPO / "prompts")
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url, "retries": 0}
                      for role in data["models"]}
    for node in data["nodes"].values():
        if node.get("type") == "source" and "path" in node:
            node["path"] = str(seeds)
    return data


@pytest.mark.parametrize("name", ["codeclm.yaml", "self_instruct.yaml", "evol_instruct.yaml", "alpagasus.yaml",
                                  "critique_rewrite.yaml"])
@pytest.mark.parametrize("breakage", ["unknown-type", "missing-node", "escape", "cycle"])
def test_the_shipped_pipelines_broken_stop_before_any_call(tmp_path, seeds_file, name, breakage):
    """Each shipped pipeline in the node language, broken four ways: `run` exits 2 with the spec's
    file and line, makes no call and leaves no run folder."""
    with FakeOpenAIServer() as server:
        data = _shipped(name, seeds_file, server)
        nodes = data["nodes"]
        first, second = list(nodes)[:2]
        if breakage == "unknown-type":
            nodes[second]["type"] = "llm_call"
        elif breakage == "missing-node":
            nodes[second]["for_each" if "for_each" in nodes[second] else "from"] = "no_such_node"
        elif breakage == "escape":
            next(iter(data["outputs"].values()))["fields"]["escape"] = "record.__class__.__mro__"
        else:  # the first node (a source) made to read every record of the last one
            from codeclm.programs.lang.spec import load_spec

            graph = load_spec(write_spec(tmp_path, data, "whole.yaml")).graph
            last = list(graph.nodes)[-1]  # as the graph has it: a rounds node's last copy (answer_2)
            field = next(f for n in graph.lineage(last) for f in graph.every[n].outputs())
            made = nodes[first].get("fields", ["instruction"])  # the source's fields, so its readers still resolve
            nodes[first] = {"type": "mix", "from": last, "count": 1,
                            "fields": {name: {"choice": f"{last}.{field}"} for name in made}}
        result = codeclm("run", write_spec(tmp_path, data), "-q", "--out", tmp_path / "run",
                         "--cache-dir", tmp_path / "cache")
        assert server.requests == 0
    assert result.exit_code == 2 and "spec.yaml:" in result.output and "Traceback" not in result.output, result.output
    assert breakage != "cycle" or "a cycle" in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("param", "value"), [("threshold", "3"), ("threshold", [3]), ("threshold", True)])
def test_a_param_used_as_a_number_must_be_one(tmp_path, seeds_file, param, value):
    """`threshold: "3"` passed validation; every instruction then failed in the switch (`judge.gap >
    params.threshold`: TypeError), after its calls. Now exit 2 at the param's line, before any call."""
    data = base_spec(seeds_file, **{param: value})
    with FakeOpenAIServer() as server:
        result = codeclm("run", write_spec(tmp_path, served(data, server)), "-q", "--out", tmp_path / "run",
                         "--cache-dir", tmp_path / "cache")
        assert server.requests == 0
    assert result.exit_code == 2 and f"params.{param} is used as a number" in result.output, result.output
    assert "spec.yaml:" in result.output and "judge.gap > params.threshold" in result.output


@pytest.mark.parametrize(("path", "value", "message"), [
    (("rubrics", "lazy"), "yes", "lazy must be true or false"),
    (("refine", "exhausted"), 5, "exhausted must be a status name"),
    (("seeds", "id_field"), 5, "id_field must name the field"),
])
def test_node_keys_of_the_wrong_type_are_refused(tmp_path, seeds_file, path, value, message):
    """These were read loosely (`lazy: "yes"` as true, `exhausted: 5` as the status "5")."""
    data = base_spec(seeds_file)
    data["nodes"][path[0]][path[1]] = value
    result = codeclm("validate", write_spec(tmp_path, data))
    assert result.exit_code == 2 and message in result.output and "spec.yaml:" in result.output, result.output


@pytest.mark.parametrize("model", [{"model": "openai/gpt-4o-mini"},
                                   {"model": "hosted_vllm/strong", "api_base": "http://127.0.0.1:9/v1",
                                    "api_key_env": "CODECLM_TEST_UNSET_KEY"}])
def test_a_live_run_whose_model_has_no_key_stops_before_any_call(tmp_path, seeds_file, monkeypatch, model):
    """Every call would have failed, one record at a time, and the run exited 1: now exit 2 at the
    model's line before anything runs. A dry run and a replay need no key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("CODECLM_TEST_UNSET_KEY", raising=False)
    data = base_spec(seeds_file)
    data["models"]["strong"] = model
    spec = write_spec(tmp_path, data)
    result = codeclm("run", spec, "-q", "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    env = model.get("api_key_env", "OPENAI_API_KEY")
    assert f"model 'strong' ({model['model']}) needs the {env} environment variable" in result.output
    assert "spec.yaml:" in result.output and not (tmp_path / "run").exists()
    dry = codeclm("run", spec, "-q", "--dry-run", "--cache-dir", tmp_path / "cache")
    assert dry.exit_code == 0, dry.output


def test_set_on_a_loop_body_node_says_where_it_is():
    """It made a new top-level node, which then `needs a type`; now the message gives the right path."""
    result = codeclm("validate", "critique_rewrite", "--set", "nodes.rewrite.temperature=1")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "node 'rewrite' is in the body of 'improve'" in result.output
    assert "--set nodes.improve.body.rewrite.temperature=1" in result.output
    assert codeclm("validate", "critique_rewrite", "--set", "nodes.improve.body.rewrite.temperature=1").exit_code == 0


@pytest.mark.parametrize("sets", [["nodes.encode.for_each=encode"], ["nodes.refine.for_each=refine"],
                                  ["nodes.decode.for_each=refine"]], ids=["self", "loop-self", "two-nodes"])
def test_a_for_each_cycle_is_refused_not_walked_forever(sets):
    """validate, graph and run walked the for_each chain with no end (memory grew without bound)."""
    args = [a for s in sets for a in ("--set", s)]
    for command in ("validate", "graph"):
        result = codeclm(command, "codeclm", *args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "for_each makes a cycle" in result.output


def test_a_setting_that_fails_two_checks_gets_one_message(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["models"]["strong"].update({"model": "hosted_vllm/strong", "api_base": "http://127.0.0.1:9/v1",
                                     "timeout": float("inf")})
    result = codeclm("validate", write_spec(tmp_path, data))
    assert result.exit_code == 2 and result.output.count("timeout must be") == 1, result.output


def test_clearer_messages_found_by_a_reliability_probe(tmp_path, seeds_file):
    """--budget-usd nan passed as 'budget sets no limit' at a spec line; .format() was refused as
    'would change data'; a computed {% include %} said 'includes None'; evaluate compared a role
    with itself."""
    result = codeclm("run", "demo", "--dry-run", "--budget-usd", "nan")
    assert result.exit_code == 2 and "nan is not a finite number" in result.output, result.output
    from codeclm.programs.lang.expressions import Expression, ExpressionError

    with pytest.raises(ExpressionError, match="format string can read attributes"):
        Expression("'{}'.format(x)")
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    (prompts / "respond.jinja").write_text('{% include instruction %}')
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    result = codeclm("validate", write_spec(tmp_path, data))
    assert result.exit_code == 2 and "a template named by a computed value" in result.output, result.output
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"instruction": "Hi"}\n')
    result = codeclm("evaluate", "demo", bench, "--candidate", "strong", "--reference", "strong")
    assert result.exit_code == 2 and "both 'strong'" in result.output, result.output


@pytest.mark.parametrize("field", ["[1] * 2000000", "encode.use_case * 10 ** 9", "10 ** 2000000",
                                   "record.id / 0"])
def test_an_output_field_that_fails_at_run_time_is_a_recorded_failure(tmp_path, seeds_file, field):
    """An output field evaluated per record that raised (the sandbox's * and ** limits, 1/0) ended
    the run in a traceback with its journals left as .partial files."""
    data = base_spec(seeds_file)
    data["outputs"]["extra"] = {"from": "encode", "fields": {"id": "record.id", "bad": field}}
    with FakeOpenAIServer() as server:
        spec = write_spec(tmp_path, served(data, server))
        result = codeclm("run", spec, "-q", "--no-report", "--out", tmp_path / "run", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    failures = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    assert failures and all(f["stage"] == "output extra" and f["node"] == "encode" for f in failures)
    assert not list((tmp_path / "run").glob("*.partial")) and (tmp_path / "run" / "dataset.jsonl").stat().st_size
    assert (tmp_path / "run" / "extra.jsonl").read_text() == ""


def test_a_dataset_field_that_fails_for_every_record_is_exit_1(tmp_path, seeds_file):
    """The records the dataset could not take were counted as `ok`: 0 pairs, no word, exit 0."""
    data = base_spec(seeds_file)
    data["outputs"]["dataset"]["fields"]["provenance"]["bad"] = "record.id / 0"
    with FakeOpenAIServer() as server:
        spec = write_spec(tmp_path, served(data, server))
        result = codeclm("run", spec, "-q", "--no-report", "--out", tmp_path / "run", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 1 and "no pairs kept" in result.output, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"]["instructions"].get("failed") and "kept" not in manifest["counts"]["instructions"]


def test_answers_cut_off_at_max_tokens_are_named_in_the_summary(tmp_path, seeds_file):
    """They were parsed and kept as they were, with a count only `inspect` showed."""
    from fake_openai_server import FaultPlan

    with FakeOpenAIServer(faults=FaultPlan(rate=0.3, kinds=("length",), seed=1)) as server:
        spec = write_spec(tmp_path, served(base_spec(seeds_file), server))
        result = codeclm("run", spec, "--no-report", "--out", tmp_path / "run", "--cache-dir", tmp_path / "c")
    truncated = json.loads((tmp_path / "run" / "manifest.json").read_text())["totals"]["truncated"]
    assert truncated and f"warning: {truncated} answer(s) stopped at max_tokens" in result.output, result.output
    assert "raise models." in result.output and ".max_tokens" in result.output

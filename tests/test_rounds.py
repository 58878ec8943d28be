"""The rounds node: a static number of rounds of a body over a growing pool, unrolled into
ordinary nodes when the spec is read. Names and references of the copies, the pool each round
reads, a 3-round run on the fake server, its replay and dry-run bounds, the same bytes as the
hand-written two rounds of Self-Instruct, and every problem reported at its line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from codeclm.programs.engine.dryrun import dry_run
from codeclm.programs.engine.run import RunOptions, run_spec
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.bounds import upper_bounds
from codeclm.programs.lang.expressions import Expression, renamed
from codeclm.programs.lang.rouge import rouge_l
from codeclm.programs.lang.spec import load_spec
from conftest import REPO
from fake_openai_server import FakeOpenAIServer

BASE = """\
name: grow
prompts: {prompts}
models:
  strong: {{model: local}}
params:
  rounds: 3
nodes:
  seeds:
    type: source
    records: [{{instruction: Write a poem about the sea.}}, {{instruction: Explain what a mutex is.}}]
  grow:
    type: rounds
    count: params.rounds
    keep: novel
    body:
      prompts:
        type: mix
        from: [seeds, pool]
        count: 2
        fields:
          human: {{sample: seeds.instruction, k: "2 if round.first else 1"}}
          machine: {{sample: pool.instruction, k: 1}}
      generate: {{type: llm, for_each: prompts, model: strong, template: self_instruct.jinja, parse: list,
                 inputs: {{examples: prompts.human + prompts.machine, count: 2}}, outputs: [items],
                 explode: {{field: items, as: instruction, limit: 2}}}}
      novel: {{type: dedup, for_each: generate, field: generate.instruction,
              against: [seeds.instruction, pool.instruction]}}
outputs:
  tasks:
    from: grow
    fields: {{id: record.id, task: lineage.instruction}}
  prompts:
    from: grow.prompts
    fields: {{id: record.id, machine: lineage.machine}}
"""


def write(tmp_path: Path, text: str | None = None, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text or BASE.format(prompts=REPO / "prompts"))
    return path


def on_server(url: str) -> list[str]:
    return ["models.strong.model=hosted_vllm/strong", f"models.strong.api_base={url}"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- unrolling ---------------------------------------------------------------------------------


def test_each_round_is_a_copy_of_the_body_named_NODE_N_reading_its_own_round(tmp_path):
    graph = load_spec(write(tmp_path)).graph
    assert list(graph.nodes) == ["seeds", "prompts_1", "generate_1", "novel_1", "prompts_2", "generate_2", "novel_2",
                                 "prompts_3", "generate_3", "novel_3"]
    generate = graph.nodes["generate_3"]
    assert generate.for_each == "prompts_3" and generate.unrolled == ("grow", 3)
    assert generate.inputs["examples"].source == "prompts_3.human + prompts_3.machine"
    assert generate.where == ("nodes", "grow", "body", "generate")  # errors name the body key's line
    assert [graph.static(graph.nodes[f"prompts_{i}"].draws["human"].k) for i in (1, 2, 3)] == [2, 1, 1]
    assert [graph.nodes[f"prompts_{i}"].id_prefix for i in (1, 2, 3)] == ["r1m", "r2m", "r3m"]
    assert graph.outputs["tasks"].sources == ["novel_1", "novel_2", "novel_3"]
    assert graph.outputs["prompts"].sources == ["prompts_1", "prompts_2", "prompts_3"]


def test_round_N_reads_the_keep_copies_of_the_rounds_before_it_as_its_pool(tmp_path):
    graph = load_spec(write(tmp_path)).graph
    pools = [graph.nodes[f"prompts_{i}"].draws["machine"].nodes for i in (1, 2, 3)]
    assert pools == [[], ["novel_1"], ["novel_1", "novel_2"]]
    assert [graph.nodes[f"prompts_{i}"].sources for i in (1, 3)] == [["seeds"], ["seeds", "novel_1", "novel_2"]]
    assert graph.nodes["novel_3"].against == [("seeds", "instruction"), ("novel_1", "instruction"),
                                              ("novel_2", "instruction")]


def test_renaming_leaves_quoted_text_attributes_and_the_round_helper_alone():
    constants = {"round": {"index": 2, "first": False, "last": True, "count": 2}}
    source = "generate.x ~ 'generate' ~ y.generate ~ round(generate.n) ~ round.index if round.last else -generate.z"
    assert renamed(Expression(source), {"generate": "generate_2"}, constants).source == \
        "generate_2.x ~ 'generate' ~ y.generate ~ round(generate_2.n) ~ 2 if true else -generate_2.z"
    same = Expression("seeds.instruction")
    assert renamed(same, {"generate": "generate_2"}, constants) is same


def test_renaming_leaves_filters_tests_and_keyword_arguments_alone():
    """Body nodes named like a filter (`first`), a test (`defined`) or a keyword argument keep those
    meanings: only a name that reads a variable is a node."""
    names = {"first": "first_2", "defined": "defined_2", "generate": "generate_2"}
    source = "first.items | first ~ (x is defined) ~ (y is not defined) ~ f(generate=1) ~ defined.n"
    assert renamed(Expression(source), names, {}).source == \
        "first_2.items | first ~ (x is defined) ~ (y is not defined) ~ f(generate=1) ~ defined_2.n"


def test_a_body_node_may_not_share_a_name_with_a_node_outside_the_body(tmp_path):
    text = BASE.replace("  grow:\n", "  generate: {{type: source, records: [{{instruction: x}}]}}\n  grow:\n")
    assert text != BASE
    text = text.format(prompts=REPO / "prompts")
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(write(tmp_path, text))
    errors = caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]
    shadow = [e for e in errors if "has the name of a node outside the body" in e.message]
    assert len(shadow) == 1 and "rename one" in shadow[0].hint


def test_render_and_optimize_name_a_round_s_copy(tmp_path):
    spec = load_spec(write(tmp_path))
    assert spec.model_node("generate_2") is spec.graph.nodes["generate_2"]
    with pytest.raises(SpecError) as caught:
        spec.model_node("generate")
    assert "copies it per round as generate_1 to generate_3" in caught.value.hint


def test_graph_shows_the_rounds_and_each_pool(tmp_path):
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "graph", str(write(tmp_path))], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "grow: rounds, 3 (params.rounds), each adding its novel to the pool later rounds read" in done.stdout
    assert "  round 3: pool novel_1 + novel_2\n    prompts_3: mix of seeds, novel_1, novel_2" in done.stdout


# -- running -----------------------------------------------------------------------------------


def test_three_rounds_run_on_the_server_replay_with_no_call_and_stay_within_the_dry_run_bounds(tmp_path):
    spec_path = write(tmp_path)
    with FakeOpenAIServer() as server:
        sets = on_server(server.url)
        live = run_spec(load_spec(spec_path, sets), RunOptions(out=tmp_path / "live", cache_dir=tmp_path / "cache",
                                                               overrides=sets))
    tasks = lines(live.out / "tasks.jsonl")
    assert {row["id"][:2] for row in tasks} == {"r1", "r2", "r3"}
    pool = ["Write a poem about the sea.", "Explain what a mutex is."]
    for row in tasks:  # round order: each task is new against the seeds and every earlier round's
        assert max(rouge_l(row["task"], other) for other in pool) < 0.7
        pool.append(row["task"])
    by_round = {row["id"]: row.get("machine") for row in lines(live.out / "prompts.jsonl")}
    kept = {round_: {row["task"] for row in tasks if row["id"].startswith(f"r{round_}")} for round_ in (1, 2)}
    assert all(machine == [] for id_, machine in by_round.items() if id_.startswith("r1"))
    assert all(set(machine) <= kept[1] for id_, machine in by_round.items() if id_.startswith("r2"))
    drawn = {m for id_, machine in by_round.items() if id_.startswith("r3") for m in machine}
    assert drawn and drawn <= kept[1] | kept[2]

    replay = run_spec(load_spec(spec_path, sets), RunOptions(out=tmp_path / "replay", cache_dir=tmp_path / "cache",
                                                             cache_mode="replay", overrides=sets))
    assert replay.manifest["totals"]["calls"] == 0
    for name in ("tasks", "prompts", "failures"):
        assert (replay.out / f"{name}.jsonl").read_bytes() == (live.out / f"{name}.jsonl").read_bytes()

    bounds = upper_bounds(load_spec(spec_path, sets).graph, {"seeds": 2})
    assert dict(bounds) == {(f"generate_{i}", "strong"): 2 for i in (1, 2, 3)}
    dry = dry_run(load_spec(spec_path, sets), RunOptions(cache_dir=tmp_path / "cache", overrides=sets))
    assert dry == {f"generate_{i}/strong": {"upper_bound": 2, "cached": 2} for i in (1, 2, 3)}


def test_self_instruct_in_rounds_gives_the_bytes_of_its_two_rounds_written_by_hand(tmp_path):
    """tests/self_instruct_by_hand.yaml is specs/self_instruct.yaml as it was before rounds: the
    same node names (prompts_1, ...), ids (r1p0000, ...), draws, calls and dataset."""
    small = ["params.prompts_per_round=2", "params.new_per_prompt=4"]
    with FakeOpenAIServer() as server:
        sets = on_server(server.url) + small
        for name, path in (("hand", REPO / "tests" / "self_instruct_by_hand.yaml"),
                           ("rounds", REPO / "specs" / "self_instruct.yaml")):
            run_spec(load_spec(path, sets), RunOptions(out=tmp_path / name, cache_dir=tmp_path / f"cache-{name}",
                                                       overrides=sets))
    for output in ("dataset.jsonl", "failures.jsonl"):
        assert (tmp_path / "rounds" / output).read_bytes() == (tmp_path / "hand" / output).read_bytes()
    assert lines(tmp_path / "rounds" / "dataset.jsonl")


# -- problems, each at its line ----------------------------------------------------------------

TOP_LEVEL_ANSWER = """\
  answer: {type: llm, for_each: grow, model: strong, template: respond.jinja,
           inputs: {instruction: lineage.instruction}, outputs: [answer]}
"""

BROKEN = {
    "keep-not-in-body": ("keep: novel", "keep: novell", "keep: novell",
                         "keep must name a node of the body", "body nodes: prompts, generate, novel"),
    "count-not-static": ("count: params.rounds", "count: seeds.instruction", "count: seeds",
                         "count may read only params", "computed before the run"),
    "count-zero": ("rounds: 3", "rounds: 0", "rounds: 0", "params.rounds must be a positive integer", None),
    "count-too-large": ("rounds: 3", "rounds: 101", "rounds: 101", "params.rounds must be at most 100",
                        "records, iterations or rounds"),
    "count-computed": ("count: params.rounds", "count: params.rounds * 50", "count: params.rounds",
                       "node 'grow' count must be at most 100, got params.rounds * 50 (= 150)", "split the job"),
    "pool-outside": ("    from: grow\n", "    from: pool\n", "from: pool", "reads 'pool'",
                     "pool is what earlier rounds kept"),
    "pool-per-record": ("count: 2}", "count: pool.instruction}", "inputs: {examples", "reads 'pool'",
                        "read whole: in a rounds body"),
    "round-outside": ("task: lineage.instruction", "task: round.index", "fields: {id: record.id, task",
                      "reads 'round'", "in a rounds body: round.index"),
    "round-field": ('"2 if round.first else 1"', '"2 if round.firts else 1"', "human: {sample",
                    "reads 'round'", "round.first, round.last, round.count"),
    "for-each-pool": ("for_each: generate, field", "for_each: pool, field", "novel: {type: dedup",
                      "for_each names 'pool'", "pool is what earlier rounds kept"),
    "for-each-rounds": ("outputs:\n", TOP_LEVEL_ANSWER + "outputs:\n", "answer: {type: llm, for_each: grow",
                        "for_each names 'grow'", "or per record in its body"),
    "choice-from-pool": ("machine: {sample: pool.instruction, k: 1}", "machine: {choice: pool.instruction}",
                         "machine: {choice", "chooses from pool, which is empty in round 1", "sample from it"),
    "source-in-body": ("    body:\n", "    body:\n      more: {type: source, records: [{x: 1}]}\n", "more: {type",
                       "a source node would repeat the same records every round", "declare it before"),
    "body-node-named-round": ("    body:\n", "    body:\n      round: {type: pick, from: '[1]'}\n", "round: {type",
                              "'round' cannot be in a rounds body", "rename it"),
    "for-each-on-rounds": ("type: rounds\n", "type: rounds\n    for_each: seeds\n", "for_each: seeds",
                           "a rounds node runs its body count times", "delete for_each here"),
    "rounds-in-a-loop": ("outputs:\n", "  again:\n    type: loop\n    for_each: seeds\n    body:\n"
                         "      inner: {type: rounds, count: 1, keep: x, body: {x: {type: pick, from: '[1]'}}}\n"
                         "outputs:\n", "inner: {type: rounds", "a rounds node cannot run inside a loop body", None),
    "copy-name-taken": ("  grow:\n", "  prompts_2: {type: source, records: [{instruction: x}]}\n  grow:\n",
                        "      prompts:", "two nodes are named 'prompts_2'", "round N of body node NAME is NAME_N"),
    "body-node-read-after": ("task: lineage.instruction", "task: generate.instruction",
                             "fields: {id: record.id, task", "reads 'generate'",
                             "copies it per round as generate_1 to generate_3"),
    "from-unknown-body-node": ("from: grow.prompts", "from: grow.prompt", "from: grow.prompt",
                               "reads 'grow.prompt'", "every round's copy of body node NODE: prompts, generate"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_problem_is_reported_at_its_line_with_a_fix(tmp_path, case):
    old, new, line_text, message, fix = BROKEN[case]
    text = BASE.format(prompts=REPO / "prompts")
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(path)
    errors = caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if line_text in text)
    found = [e for e in errors if message in e.message]
    assert len(found) == 1, [str(e) for e in errors]  # once, not once per round
    if case in ("keep-not-in-body", "count-zero", "count-too-large"):  # no follow-on errors about copies
        assert [str(e) for e in errors if message not in e.message] == []
    assert found[0].file == str(path) and found[0].line == line, [str(e) for e in errors]
    assert fix is None or fix in (found[0].hint or ""), [str(e) for e in errors]


def test_the_command_line_exits_2_with_file_and_line(tmp_path):
    text = BASE.format(prompts=REPO / "prompts").replace("keep: novel", "keep: nothing")
    path = write(tmp_path, text)
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "validate", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    line = next(n for n, text in enumerate(text.splitlines(), 1) if "keep: nothing" in text)
    assert done.returncode == 2 and f"{path}:{line}:" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_self_instruct_runs_any_number_of_rounds(tmp_path):
    data = yaml.safe_load((REPO / "specs" / "self_instruct.yaml").read_text())
    assert data["params"]["rounds"] == 2
    graph = load_spec(REPO / "specs" / "self_instruct.yaml", ["params.rounds=4"]).graph
    assert graph.outputs["dataset"].sources == [f"answer_{i}" for i in (1, 2, 3, 4)]
    assert graph.nodes["novel_4"].against[-1] == ("novel_3", "instruction")

"""Stages are DSPy modules: optimizers change their instructions and demos, which the
template renders; programs save and load; modules also work when called synchronously."""

from __future__ import annotations

import json
import shutil

import dspy
import pytest
from codeclm.programs.engine.llm import build_modules
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import ModelHub
from conftest import REPO, ScriptedBackend, base_spec, write_spec


def stages_for(tmp_path, backend):
    spec = load_spec(write_spec(tmp_path, base_spec(tmp_path / "unused.jsonl")))
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend, "target": backend})
    return build_modules(spec, hub)


def test_instructions_and_demos_reach_the_prompt(tmp_path):
    backend = ScriptedBackend("scripted/strong", answer=lambda m: "Use case: poetry\nSkills: rhyme")
    encode = stages_for(tmp_path, backend)["encode"]
    assert "instruction analyzer" in encode.predict.signature.instructions  # the template's default
    encode.predict.signature = encode.predict.signature.with_instructions("Name the use case and skills.")
    encode.predict.demos = [dspy.Example(instruction="Fix my SQL join.", use_case="code debugging",
                                         skills=["sql"]).with_inputs("instruction")]
    result = encode(item="x", instruction="Write a sonnet.")  # synchronous call, through the hub
    assert result.ok and result.values == {"use_case": "poetry", "skills": ["rhyme"]}
    system, *turns = backend.calls[-1]
    assert system["content"].startswith("Name the use case and skills.")
    assert any(t["content"] == "Instruction: Fix my SQL join." for t in turns)
    assert turns[-1]["content"] == "Instruction: Write a sonnet."


def test_optimized_state_saves_and_loads(tmp_path):
    backend = ScriptedBackend("scripted/strong")
    encode = stages_for(tmp_path, backend)["encode"]
    encode.predict.signature = encode.predict.signature.with_instructions("Tuned instructions.")
    path = tmp_path / "encode.json"
    encode.save(str(path))
    fresh = stages_for(tmp_path, backend)["encode"]
    fresh.load(str(path))
    assert fresh.predict.signature.instructions == "Tuned instructions."
    assert "api_key" not in path.read_text()


def test_a_spec_stage_loads_an_optimized_program(tmp_path):
    backend = ScriptedBackend("scripted/strong")
    encode = stages_for(tmp_path, backend)["encode"]
    encode.predict.signature = encode.predict.signature.with_instructions("Tuned by an optimizer.")
    encode.save(str(tmp_path / "encode.json"))
    data = base_spec(tmp_path / "unused.jsonl")
    data["nodes"]["encode"]["program"] = "encode.json"
    spec = load_spec(write_spec(tmp_path, data))
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache2"), backends={"strong": backend, "target": backend})
    assert build_modules(spec, hub)["encode"].predict.signature.instructions == "Tuned by an optimizer."


# -- codeclm optimize: BootstrapFewShot with "the completion parses" as the metric ---------------

FORMAT_SEEDS = [f"Seed instruction number {i}: write something useful." for i in range(8)]


def format_learner(messages):
    """A model that keeps the format only once it has seen more examples than the template's
    three, or for even-numbered seeds: what few-shot demos are for."""
    shown = sum(m["role"] == "assistant" for m in messages)
    number = int(messages[-1]["content"].split("number ")[1].split(":")[0])
    if shown > 3 or number % 2 == 0:
        return "Use case: writing\nSkills: clarity"
    return "I think this is about writing."


def optimize_spec(tmp_path):
    from codeclm.programs.optimize import OptimizeOptions

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(f'{{"id": "s{i}", "instruction": "{s}"}}\n' for i, s in enumerate(FORMAT_SEEDS)))
    spec = load_spec(write_spec(tmp_path, base_spec(seeds)))
    return spec, OptimizeOptions(stage="encode", examples=8, out=tmp_path / "encode.json")


def test_optimize_bootstraps_demos_that_parse_and_checks_them(tmp_path):
    from codeclm.programs.optimize import optimize

    spec, options = optimize_spec(tmp_path)
    backend = ScriptedBackend("scripted/strong", answer=format_learner)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend, "target": backend})
    result = optimize(spec, options, hub)
    # The seeded split holds out 3 of the 8 seeds; 1 of them parses before, all 3 after.
    assert (result.checked, result.before, result.after) == (3, pytest.approx(1 / 3, abs=1e-3), 1.0)
    saved = json.loads(result.path.read_text())
    demos = saved["predict"]["demos"]
    assert result.demos == len(demos) >= 1  # training seeds whose answers parsed: the even-numbered ones
    assert all(d["instruction"] in FORMAT_SEEDS[::2] for d in demos)
    assert all(d["use_case"] == "writing" for d in demos)
    # The spec loads it, and the stage then sends the demos as few-shot turns.
    data = base_spec(tmp_path / "seeds.jsonl")
    data["nodes"]["encode"]["program"] = str(result.path)
    tuned = build_modules(load_spec(write_spec(tmp_path, data, "tuned.yaml")), hub)["encode"]
    assert tuned(instruction=FORMAT_SEEDS[7]).ok


def test_optimize_with_a_teacher_role(tmp_path):
    from codeclm.programs.optimize import optimize

    spec, options = optimize_spec(tmp_path)
    options.teacher = "target"
    student = ScriptedBackend("scripted/strong", answer=format_learner)
    teacher = ScriptedBackend("scripted/target", answer=lambda m: "Use case: teaching\nSkills: patience")
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": student, "target": teacher})
    result = optimize(spec, options, hub)
    assert result.demos == 4 and result.checked == 3 and result.after == 1.0
    assert all(d["use_case"] == "teaching" for d in json.loads(result.path.read_text())["predict"]["demos"])


def test_optimize_later_stages_needs_a_run(tmp_path, scripted, seeds_file):
    from click.testing import CliRunner
    from codeclm.cli import main

    spec = write_spec(tmp_path, base_spec(seeds_file))
    result = CliRunner().invoke(main, ["optimize", str(spec), "judge", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2 and "0 example input(s)" in result.output
    assert "--from runs/NAME" in result.output
    result = CliRunner().invoke(main, ["optimize", str(spec), "augment"])
    assert result.exit_code == 2 and "'augment' is a mix node, which sends no prompt" in result.output


def test_optimize_from_a_run_with_too_few_inputs_does_not_ask_for_from_again(tmp_path, scripted, seeds_file):
    """With --from given, the fix said to pass --from: the run itself made the node too few inputs."""
    from codeclm.programs.errors import SpecError
    from codeclm.programs.optimize import OptimizeOptions, optimize

    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file, pool_size=1, dataset_size=2)))
    run = scripted(spec)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends=scripted.backends)
    with pytest.raises(SpecError, match="need at least 3") as caught:
        optimize(spec, OptimizeOptions(stage="decode", run_dir=run.out, out=tmp_path / "decode.json"), hub)
    assert "--from runs/NAME" not in caught.value.hint and "more records reaching the node" in caught.value.hint


def test_optimize_from_a_run_of_another_spec_says_what_differs(tmp_path, scripted, seeds_file):
    """Without the run's --set, optimize --from found 0 inputs and blamed the run ("rerun it with more
    records"), though it gave the node many: the spec's models differed, so its cache keys did."""
    from codeclm.programs.errors import SpecError
    from codeclm.programs.optimize import OptimizeOptions, optimize

    path = write_spec(tmp_path, base_spec(seeds_file))
    run = scripted(load_spec(path))
    spec = load_spec(path, ["models.strong.max_tokens=99"])
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends=scripted.backends)
    with pytest.raises(SpecError, match="0 example input") as caught:
        optimize(spec, OptimizeOptions(stage="judge", run_dir=run.out, out=tmp_path / "judge.json"), hub)
    assert "the spec is not the one the run ran (models.strong.max_tokens: 64 in the run, 99 here)" in str(caught.value)
    assert "more records" not in caught.value.hint and "no --set (the run had none)" in caught.value.hint


def test_optimize_judge_from_a_finished_run(tmp_path, scripted, seeds_file):
    from codeclm.programs.optimize import OptimizeOptions, optimize

    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    run = scripted(spec)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends=scripted.backends)
    result = optimize(spec, OptimizeOptions(stage="judge", run_dir=run.out, examples=6,
                                            out=tmp_path / "judge.json"), hub)
    assert result.after == 1.0 and result.checked >= 1 and result.demos >= 1
    demo = json.loads(result.path.read_text())["predict"]["demos"][0]
    assert {"answer_1", "answer_2", "score_1", "score_2"} <= set(demo)
    # Loaded into the stage, the demo reaches the judge's prompt as a scored example.
    judge = build_modules(spec, hub)["judge"]
    judge.load(str(result.path))
    judge(instruction="Q?", answer_1="a", answer_2="b", scale_low=1, scale_high=10)
    sent = scripted.backends["strong"].calls[-1]
    assert any(demo["answer_1"] in m["content"] for m in sent if m["role"] == "user")
    assert {"role": "assistant", "content": f"{demo['score_1']} {demo['score_2']}"} in sent


def test_optimize_refuses_a_template_without_demos(tmp_path):
    from codeclm.programs.errors import SpecError
    from codeclm.programs.optimize import optimize

    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    (prompts / "encode.jinja").write_text('{% call message("user") %}{{ instruction }}{% endcall %}\n')
    spec, options = optimize_spec(tmp_path)
    spec.prompts_dir = prompts
    backend = ScriptedBackend("scripted/strong", answer=format_learner)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend, "target": backend})
    with pytest.raises(SpecError, match="does not render demos") as refused:
        optimize(spec, options, hub)
    assert not backend.calls and "--optimizer gepa" not in refused.value.hint  # it renders no instructions either
    options.optimizer = "gepa"  # GEPA tunes instructions: it spent its whole budget and changed nothing
    with pytest.raises(SpecError, match="does not render instructions"):
        optimize(spec, options, hub)
    assert not backend.calls


def test_optimize_refuses_a_node_reading_and_writing_one_name(tmp_path):
    """An input and an output of one name (critique-rewrite's rewrite did it): DSPy crashed on the demos."""
    from codeclm.programs.errors import SpecError
    from codeclm.programs.optimize import optimize

    spec, options = optimize_spec(tmp_path)
    spec.graph.every["encode"].inputs["use_case"] = spec.graph.every["encode"].inputs["instruction"]
    with pytest.raises(SpecError, match="reads and writes 'use_case'"):
        optimize(spec, options)

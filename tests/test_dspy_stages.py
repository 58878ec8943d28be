"""Stages are DSPy modules: optimizers change their instructions and demos, which the
template renders; programs save and load; modules also work when called synchronously."""

from __future__ import annotations

import dspy
from conftest import ScriptedBackend, base_spec, write_spec

from programs.cache import CallCache
from programs.hub import ModelHub
from programs.spec import load_spec
from programs.stages import build_stages


def stages_for(tmp_path, backend):
    spec = load_spec(write_spec(tmp_path, base_spec(tmp_path / "unused.jsonl")))
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend, "target": backend})
    return build_stages(spec, hub)


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
    data["stages"]["encode"]["program"] = "encode.json"
    spec = load_spec(write_spec(tmp_path, data))
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache2"), backends={"strong": backend, "target": backend})
    assert build_stages(spec, hub)["encode"].predict.signature.instructions == "Tuned by an optimizer."

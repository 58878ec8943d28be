"""Runs that stream (issue #9): a pool of a million entries neither allocates its records up front nor
ignores Ctrl-C; a seed file is read as records are worked on."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from codeclm.programs.lang.seeds import read_records, stream_records
from conftest import base_spec, write_spec
from fake_openai_server import FakeOpenAIServer
from test_resume import codeclm_run, wait_for_calls


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_million_entry_pool_streams_and_stops_on_ctrl_c(tmp_path, seeds_file):
    data = base_spec(seeds_file, pool_size=1_000_000, dataset_size=1_000_000)  # the caps: 1 instruction per entry
    with FakeOpenAIServer(latency=0.01) as server:
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url, "concurrency": 8}
                          for role in ("strong", "target")}
        spec = write_spec(tmp_path, data)
        process = codeclm_run(spec, tmp_path / "run", tmp_path / "cache")
        wait_for_calls(server, 200, process)  # past the encodes: pool entries are flowing
        assert process.poll() is None, process.stderr.read().decode()
        assert rss_mib(process.pid) < 400  # a million pool records made up front would be far more
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert process.wait(10) == 130
        assert time.monotonic() - started < 5
    stderr = process.stderr.read().decode()
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr


def test_stream_records_checks_the_whole_file_then_reads_lazily(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(f'{{"id": "s{i}", "instruction": "task {i}", "input": "x{i}"}}\n' for i in range(50)))
    count, rows = stream_records(path, {"instruction": "instruction", "input": "input"})
    assert count == 50 and list(rows) == read_records(path, {"instruction": "instruction", "input": "input"})
    path.write_text(path.read_text() + '{"id": "s3", "instruction": "again"}\n')  # a duplicate id on the last line
    try:
        stream_records(path, {"instruction": "instruction"})
    except Exception as exc:  # noqa: BLE001 - the same located error read_records gives
        assert "duplicate seed id" in str(exc) and getattr(exc, "line", None) == 51
    else:
        raise AssertionError("a duplicate id on the last line was not refused up front")


def test_a_fan_out_queues_no_more_records_than_the_window(tmp_path, scripted, monkeypatch):
    """40 records each exploded into 50: a record is handed on only while fewer than the window's size
    wait for a place, so the run never holds a task for all 2,000 at once (it did: every admitted root's
    records were queued as soon as they existed)."""
    from codeclm.programs.engine import run as engine_run
    from codeclm.programs.lang.spec import load_spec

    data = {"name": "fan-out", "seed": 0, "prompts": str(Path(__file__).resolve().parents[1] / "prompts"),
            "models": {"strong": {"model": "local", "max_tokens": 64}},
            "nodes": {"topics": {"type": "source", "records": [{"instruction": f"topic {i}"} for i in range(40)]},
                      "ideas": {"type": "llm", "for_each": "topics", "model": "strong", "template": "respond.jinja",
                                "inputs": {"instruction": "topics.instruction"}, "parse": "list", "outputs": ["items"],
                                "explode": {"field": "items", "as": "idea", "limit": 50}},
                      "answer": {"type": "llm", "for_each": "ideas", "model": "strong", "template": "respond.jinja",
                                 "inputs": {"instruction": "ideas.idea"}, "outputs": ["answer"]}},
            "outputs": {"dataset": {"from": "answer", "fields": {"id": "record.id", "answer": "answer.answer"}}}}
    scripted.backends["strong"].answer = lambda messages: "\n".join(
        f"{i}. idea {i} about {messages[-1]['content'][-20:]}" for i in range(1, 51))
    scripted.backends["strong"].delay = 0.001
    most = [0]
    spawn = engine_run.Engine.spawn

    def counting_spawn(self, work):
        spawn(self, work)
        most[0] = max(most[0], len(self.tasks))

    monkeypatch.setattr(engine_run.Engine, "spawn", counting_spawn)
    waiting = [0]
    count = engine_run.Window._waiting

    def counting_waiting(self, change):
        count(self, change)
        waiting[0] = max(waiting[0], self.waiting)

    monkeypatch.setattr(engine_run.Window, "_waiting", counting_waiting)
    spec = load_spec(write_spec(tmp_path, data))
    result = scripted(spec, concurrency=2)
    window = engine_run.item_window(spec, 2)
    assert len((result.out / "dataset.jsonl").read_text().splitlines()) == 2000
    assert window == 64 and most[0] < 4 * window, most[0]
    assert waiting[0] <= window, waiting[0]  # never more than the window's size waiting for a place


def test_a_stopped_loop_iteration_stops_the_work_it_started_beside_it():
    """A loop body runs some nodes in tasks beside the iteration's own; when the iteration's task is
    cancelled (Ctrl-C, a run stopping on its first fatal error) those were left calling models while
    the run closed its models and cache. They are now cancelled with it, and waited for."""
    from types import SimpleNamespace

    from codeclm.programs.engine.nodes import LoopRun, NodeRunner

    log: list[tuple[str, str]] = []

    class Runner:  # the two things run_segment asks of a NodeRunner
        reads = {"a": set(), "b": set(), "c": {"b"}}  # a and b apart; c reads b
        _inline_plans: dict = {}
        inline_plan = NodeRunner.inline_plan

        async def run(self, node, record, views, item, lineage):
            log.append(("start", node.name))
            try:
                await asyncio.sleep({"a": 0.3, "b": 0.1}.get(node.name, 0.1))
            except asyncio.CancelledError:
                log.append(("cancelled", node.name))
                raise
            log.append(("end", node.name))
            return (SimpleNamespace(status="ok", ok=True),)

    async def stop_an_iteration() -> None:
        body = [SimpleNamespace(name=name) for name in "abc"]
        loop = LoopRun.__new__(LoopRun)
        loop.runner, loop.record, loop.lineage = Runner(), None, {}
        assert loop.runner.inline_plan(body) == (False, True, True)  # a in a task of its own
        iteration = asyncio.ensure_future(loop.run_segment(body, {}, {}, "i"))
        await asyncio.sleep(0.05)
        iteration.cancel()
        with pytest.raises(asyncio.CancelledError):
            await iteration
        assert ("cancelled", "a") in log  # stopped, and before the iteration's own task ended
        await asyncio.sleep(0.4)
        assert ("end", "a") not in log

    asyncio.run(stop_an_iteration())


def _main_task() -> asyncio.Task:
    """The task running the run (Ctrl-C cancels it): the one whose chain of awaits holds `_run`."""
    for task in asyncio.all_tasks():
        coroutine = task.get_coro()
        while coroutine is not None and hasattr(coroutine, "cr_await"):
            if coroutine.__qualname__ == "_run":
                return task
            coroutine = coroutine.cr_await
    raise AssertionError("no task runs _run")


def test_a_stopped_run_cancels_the_joins_in_flight_before_it_closes_its_files(scripted, seeds_file, monkeypatch):
    """A join (CodecLM's rubrics, made on first need) runs in a task of its own, shared by the records that
    need it. When a run stopped (Ctrl-C, a fatal error) its records' tasks were cancelled but not the joins:
    a join answered after the journals were closed wrote to them ("Task exception was never retrieved ...
    KeyError: 'failures'"), or into a folder already removed, and left call_keys.txt.partial behind."""
    from codeclm.programs.engine.outputs import OutputWriter
    from conftest import ScriptedBackend

    asked = {"rubrics": 0}

    class Stopping(ScriptedBackend):
        async def complete(self, messages, params):
            if "generate domain specific rubrics" in messages[0]["content"]:
                asked["rubrics"] += 1
                _main_task().cancel()  # as Ctrl-C does, while this join is in flight
                await asyncio.sleep(3600)
            return await super().complete(messages, params)

    running_at_abandon: list[str] = []
    abandon = OutputWriter.abandon

    def noting_abandon(self):
        running_at_abandon.extend(t.get_coro().__qualname__ for t in asyncio.all_tasks()
                                  if t is not asyncio.current_task() and not t.done())
        abandon(self)

    monkeypatch.setattr(OutputWriter, "abandon", noting_abandon)
    scripted.backends["strong"] = Stopping("scripted/strong")
    with pytest.raises(asyncio.CancelledError):
        scripted(write_spec(scripted.tmp_path, base_spec(seeds_file)))
    assert asked["rubrics"], "no rubrics call was made: the test shows nothing"
    assert running_at_abandon == [], running_at_abandon
    assert not list((scripted.tmp_path / "run").glob("*.partial"))

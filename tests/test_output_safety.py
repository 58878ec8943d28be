"""A run never deletes or overwrites files it did not write: it writes only into a new, empty or
codeclm-made folder, never the root, the home folder or the run a replay checks, and only once
its inputs are checked. A spec name is a name, not a path. SIGTERM stops a run the way Ctrl-C does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.artifacts.store import ARTIFACTS, MARKER, RunStore
from codeclm.programs.errors import SpecError, SpecErrors
from codeclm.programs.lang.spec import load_spec
from conftest import REPO, base_spec, child_env, write_spec
from fake_openai_server import FakeOpenAIServer

USER_DATA = '{"mine": "a dataset I made by hand"}\n'


def unreachable_spec(tmp_path: Path, seeds: Path, **changes) -> Path:
    """A spec whose models nobody serves: a test that makes a call by mistake fails fast, loads nothing."""
    data = base_spec(seeds)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": "http://127.0.0.1:9/v1", "retries": 0,
                             "timeout": 2} for role in ("strong", "target")}
    data.update(changes)
    return write_spec(tmp_path, data)


def codeclm(*args: str) -> object:
    return CliRunner().invoke(cli.main, list(args))


def test_a_broken_seed_file_leaves_a_foreign_folder_as_it_was(tmp_path, seeds_file):
    """The issue's repro: a folder with the user's own dataset.jsonl, a broken seed file: exit 2, file kept."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "dataset.jsonl").write_text(USER_DATA)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "instruction": "fine"}\n{not json\n')
    spec = unreachable_spec(tmp_path, seeds_file)
    result = codeclm("run", str(spec), "-q", "--seeds", str(broken), "--out", str(folder),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (folder / "dataset.jsonl").read_text() == USER_DATA
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.jsonl"]


def test_a_refused_run_folder_makes_no_cache_folder(tmp_path, seeds_file):
    """The cache was opened (its folder and cache.db made) before the run folder was checked."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "dataset.jsonl").write_text(USER_DATA)
    result = codeclm("run", str(unreachable_spec(tmp_path, seeds_file)), "-q", "--out", str(folder),
                     "--cache-dir", str(tmp_path / "new-cache"))
    assert result.exit_code == 2 and "is not empty and is not a codeclm run" in result.output, result.output
    assert not (tmp_path / "new-cache").exists()


@pytest.mark.parametrize("cache", ["cache", "."])
def test_a_cache_folder_inside_the_run_folder_is_refused_before_either_is_made(tmp_path, seeds_file, cache):
    """A cache made in the run folder made it a folder of files the run did not write: the run refused it
    (blaming the user's folder) on every try, the cache left behind."""
    out = tmp_path / "runs" / "x"
    result = codeclm("run", str(unreachable_spec(tmp_path, seeds_file)), "-q", "--out", str(out),
                     "--cache-dir", str(out / cache))
    assert result.exit_code == 2, result.output
    assert "the cache folder is inside the run folder" in result.output and "--cache-dir outside" in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("state", ["new", "empty"])
def test_a_broken_seed_file_does_not_touch_a_new_or_empty_folder(tmp_path, seeds_file, state):
    folder = tmp_path / "out"
    if state == "empty":
        folder.mkdir()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    result = codeclm("run", str(unreachable_spec(tmp_path, seeds_file)), "-q", "--seeds", str(broken),
                     "--out", str(folder), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and "broken.jsonl:1" in result.output, result.output
    assert (list(folder.iterdir()) == []) if state == "empty" else not folder.exists()


def test_a_foreign_folder_is_refused_before_any_call(tmp_path, seeds_file, scripted):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ARTIFACTS.values():
        (folder / name).write_text(USER_DATA)
    spec = write_spec(tmp_path, base_spec(seeds_file))
    with pytest.raises(SpecError) as caught:
        scripted(spec, out="mine")
    assert str(folder) in str(caught.value) and "not a codeclm run" in str(caught.value)
    assert "another --out" in str(caught.value)
    assert scripted.calls() == 0
    assert all((folder / name).read_text() == USER_DATA for name in ARTIFACTS.values())
    assert not (folder / MARKER).exists()


def test_the_root_and_the_home_folder_are_refused(tmp_path, seeds_file, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()  # even empty: a run folder is never the home folder
    monkeypatch.setenv("HOME", str(home))
    spec = str(unreachable_spec(tmp_path, seeds_file))
    for out, what in (("/", "root"), (str(home), "home"), ("~", "home"), (str(home / "x" / ".."), "home")):
        result = codeclm("run", spec, "-q", "--out", out, "--cache-dir", str(tmp_path / "cache"))
        assert result.exit_code == 2, (out, result.output)
        assert what in result.output and "--out" in result.output and "Traceback" not in result.output
    assert list(home.iterdir()) == []


def test_the_current_folder_is_refused_unless_empty(tmp_path, seeds_file, monkeypatch, scripted):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    spec = write_spec(tmp_path, base_spec(seeds_file))
    result = codeclm("run", str(spec), "-q", "--out", ".", "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and "current folder" in result.output, result.output
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".", "a\\b"])
def test_a_spec_name_that_is_a_path_is_refused_with_its_line(tmp_path, seeds_file, name):
    spec = write_spec(tmp_path, base_spec(seeds_file))  # name: is the first line
    spec.write_text(spec.read_text().replace("name: tiny", f"name: {json.dumps(name)}"))
    with pytest.raises(SpecErrors) as caught:
        load_spec(spec, [])
    error = next(e for e in caught.value.errors if "plain name" in e.message)
    assert error.line == 1 and error.file == str(spec)
    result = codeclm("validate", str(spec))
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_spec_name_override_that_is_a_path_is_refused(tmp_path, seeds_file):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    with pytest.raises(SpecErrors, match="plain name"):
        load_spec(spec, ["name=../../etc"])


def test_a_replay_never_writes_over_the_run_it_checks(tmp_path, seeds_file, scripted, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="runs/tiny")
    recorded = {name: (first.out / name).read_bytes() for name in ARTIFACTS.values() if name != "stopped.json"}
    cache = str(scripted.cache_dir)
    for out in (str(first.out), "runs/tiny", "./runs/../runs/tiny"):
        replayed = codeclm("replay", str(first.out), "--out", out, "--cache-dir", cache)
        assert replayed.exit_code == 2 and "replay" in replayed.output, replayed.output
        ran = codeclm("run", str(spec), "-q", "--replay", "--out", out, "--cache-dir", cache)
        assert ran.exit_code == 2 and "the run being replayed" in ran.output, ran.output
    assert {name: (first.out / name).read_bytes() for name in recorded} == recorded
    assert not (first.out / "stopped.json").exists()  # written only by a run that stops on an error
    # The replay that writes elsewhere still works, and compares two different folders.
    replayed = codeclm("replay", str(first.out), "--out", str(tmp_path / "again"), "--cache-dir", cache)
    assert replayed.exit_code != 2 and "the run being replayed" not in replayed.output, replayed.output


def test_a_rerun_into_its_own_run_folder_replaces_its_own_artifacts(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="run")
    expected = (first.out / "dataset.jsonl").read_bytes()
    assert (first.out / MARKER).is_file()
    (first.out / "notes.txt").write_text("mine")  # the user's file next to the artifacts is left alone
    again = scripted(spec, out="run")
    assert (again.out / "dataset.jsonl").read_bytes() == expected
    assert (again.out / "notes.txt").read_text() == "mine"
    # A run folder written before the marker existed is known by its manifest.
    (first.out / MARKER).unlink()
    again = scripted(spec, out="run", overrides=["params.threshold=2"])
    assert (again.out / "manifest.json").is_file() and (again.out / MARKER).is_file()
    assert not list(first.out.glob(".*.tmp"))


def test_a_finished_rerun_leaves_no_artifact_of_the_earlier_run(tmp_path):
    """The manifest goes at the first write (the folder is unfinished until the end); an earlier run's
    artifact the new run did not write goes when the new manifest is written (here an older codeclm's
    folder: its manifest names the pool as its run's)."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text("{}")
    (folder / "pool.jsonl").write_text("old\n")
    (folder / "manifest.json").write_text(json.dumps({"spec": {"resolved": {"outputs": {"pool": {}}}}}))
    (folder / "notes.txt").write_text("mine")
    store = RunStore(folder)
    assert (folder / "manifest.json").exists()  # nothing is touched before the first write
    store.write_jsonl("metadata", [{"id": "x"}])
    assert not (folder / "manifest.json").exists() and (folder / "pool.jsonl").exists()
    store.write_json("manifest", {"done": True})
    assert not (folder / "pool.jsonl").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, "metadata.jsonl", "manifest.json",
                                                                "notes.txt"])


def test_sigterm_stops_like_ctrl_c_and_the_rerun_resumes(tmp_path, seeds_file):
    from test_resume import codeclm_run, http_spec, reference_run, wait_for_calls

    with FakeOpenAIServer(latency=0.03) as server:
        spec = http_spec(tmp_path, seeds_file, server.url)
        uninterrupted_calls = reference_run(spec, tmp_path, server)
        process = codeclm_run(spec, tmp_path / "resumed", tmp_path / "cache-resumed")
        wait_for_calls(server, uninterrupted_calls * 1.5, process)
        assert process.poll() is None, "the run finished before SIGTERM"
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 143
        stderr = process.stderr.read().decode()
        assert not (tmp_path / "resumed" / "manifest.json").exists()
        final = codeclm_run(spec, tmp_path / "resumed", tmp_path / "cache-resumed")
        assert final.wait(120) == 0, final.stderr.read().decode()

    assert "interrupted" in stderr and "run the same command again to resume" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    for name in ("dataset.jsonl", "instructions.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def python_code(code: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter in the checkout (where `import cli` is codeclm's)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=child_env())


def test_sigterm_outside_the_event_loop_also_exits_143(tmp_path):
    """A SIGTERM while no run is going (here: during a slow command's own code) still prints and exits 143."""
    code = ("import os, signal, sys, time, click, cli\n"
            "@cli.main.command('sleepy')\n@cli.reports_errors\ndef sleepy():\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "cli.main(['sleepy'])\n")
    done = python_code(code)
    assert done.returncode == 143, done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr
    assert "cached" not in done.stderr  # a command that calls no model has no calls to keep


def test_sigterm_where_ctrl_c_is_ignored_cancels_the_run_without_a_traceback(tmp_path):
    """Under nohup or `codeclm run ... &` in a script, SIGINT is ignored and asyncio installs no Ctrl-C handler.
    A SIGTERM then raised inside whatever task ran at that moment (an HTTP request's write, here `side`):
    "Task exception was never retrieved" and a traceback on the terminal. It must cancel the run instead."""
    code = ("import asyncio, os, signal, cli\n"
            "from codeclm.programs.engine import event_loop\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "async def side_task():\n    os.kill(os.getpid(), signal.SIGTERM); await asyncio.sleep(5)\n"
            "async def work():\n    side = asyncio.ensure_future(side_task())\n"
            "    try:\n        await asyncio.sleep(5)\n"
            "    except asyncio.CancelledError:\n"
            "        print('the stop was raised in another task' if side.done() else 'the run was cancelled')\n"
            "        side.cancel(); raise\n"
            "@cli.main.command('run')\n@cli.reports_errors\ndef run():\n    event_loop.run(work())\n"
            "cli.main(['run'])\n")
    done = python_code(code)
    assert done.returncode == 143, done.stderr
    assert done.stdout == "the run was cancelled\n", done.stdout + done.stderr
    assert "interrupted (SIGTERM)" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_interrupted_validate_does_not_speak_of_cached_calls(tmp_path, seeds_file):
    """validate and graph call no model: interrupted, they said "every finished call is cached"."""
    from codeclm.programs.lang import spec as spec_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    spec = write_spec(tmp_path, base_spec(seeds_file))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spec_module, "load_spec", interrupted)
        result = codeclm("validate", str(spec))
    assert result.exit_code == 130 and "interrupted: run the command again." in result.output, result.output
    assert "cached" not in result.output


@pytest.mark.parametrize("folder_kind", ["foreign", "own"])
def test_evaluate_refuses_a_foreign_folder_before_any_call(tmp_path, seeds_file, folder_kind):
    """In codeclm's own folder too (a run's), an eval.json codeclm did not write is not replaced: it was."""
    folder = tmp_path / "mine"
    if folder_kind == "own":
        RunStore(folder).write_jsonl("metadata", [{"id": "m"}])
    folder.mkdir(exist_ok=True)
    (folder / "eval.json").write_text(USER_DATA)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"id": "b1", "instruction": "Say hi."}\n')
    result = codeclm("evaluate", str(unreachable_spec(tmp_path, seeds_file)), str(bench), "-q", "--out", str(folder),
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and str(folder) in result.output, result.output
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_rerun_with_another_spec_removes_only_the_earlier_runs_outputs(tmp_path):
    """A run folder reused by another pipeline kept the first one's outputs (histories.jsonl beside
    alpagasus' files); the outputs its manifest declared now go, and only plain names inside the
    folder: a manifest naming `../victim` deletes nothing outside it."""
    folder = tmp_path / "run"
    first = RunStore(folder)
    first.write_jsonl("histories", [{"id": "a"}])
    outputs = {"histories": {}, "../victim": {}, "failures": {}}
    first.write_json("manifest", {"spec": {"resolved": {"outputs": outputs}}})
    victim = tmp_path / "victim.jsonl"
    victim.write_text(USER_DATA)
    second = RunStore(folder)
    second.write_jsonl("ratings", [{"id": "b"}])
    assert (folder / "histories.jsonl").is_file()  # not before the second run is complete
    second.write_json("manifest", {"spec": {"resolved": {"outputs": {"ratings": {}}}}})
    assert not (folder / "histories.jsonl").exists() and (folder / "ratings.jsonl").is_file()
    assert victim.read_text() == USER_DATA


def test_an_output_never_replaces_a_file_codeclm_did_not_write(tmp_path, seeds_file):
    """A user's notes.jsonl in a run folder, then a spec with an output named notes: the run
    replaced it without a word; now exit 2 before anything runs, the file as it was. The marker
    lists the outputs codeclm writes, so its own files are still replaced (a rerun, a resume),
    and a marker naming ../victim.jsonl removes nothing outside the folder."""
    folder = tmp_path / "run"
    store = RunStore(folder)
    store.write_jsonl("histories", [{"id": "a"}])
    store.release()  # that run is over
    (folder / "notes.jsonl").write_text(USER_DATA)
    with pytest.raises(SpecError, match="codeclm did not write it: output 'notes' would replace it"):
        RunStore(folder).check_outputs(["dataset", "notes"])
    assert (folder / "notes.jsonl").read_text() == USER_DATA
    RunStore(folder).check_outputs(["dataset", "histories"])  # its own: fine
    marker = json.loads((folder / MARKER).read_text())
    assert marker["written"] == ["histories.jsonl"]
    victim = tmp_path / "victim.jsonl"
    victim.write_text(USER_DATA)
    (folder / MARKER).write_text(json.dumps({**marker, "written": ["../victim.jsonl", "histories.jsonl"]}))
    rerun = RunStore(folder)
    rerun.write_jsonl("ratings", [{"id": "b"}])
    rerun.write_json("manifest", {"spec": {"resolved": {"outputs": {"ratings": {}}}}})
    assert victim.read_text() == USER_DATA and (folder / "notes.jsonl").read_text() == USER_DATA
    assert not (folder / "histories.jsonl").exists()  # the earlier run's output, not this one's
    assert json.loads((folder / MARKER).read_text())["written"] == ["manifest.json", "ratings.jsonl"]


def test_a_run_refuses_an_output_over_a_foreign_file_before_any_call(tmp_path, seeds_file):
    spec = unreachable_spec(tmp_path, seeds_file)
    folder = tmp_path / "run"
    RunStore(folder).write_jsonl("metadata", [{"id": "m"}])  # a codeclm folder
    (folder / "notes.jsonl").write_text(USER_DATA)
    result = codeclm("run", str(spec), "-q", "--out", str(folder), "--cache-dir", str(tmp_path / "cache"),
                     "--set", "outputs.notes.from=seeds", "--set", "outputs.notes.fields.id=record.id")
    assert result.exit_code == 2 and "would replace it" in result.output, result.output
    assert (folder / "notes.jsonl").read_text() == USER_DATA


def test_an_out_folder_that_cannot_be_made_is_refused_before_any_call(tmp_path, seeds_file):
    """A file where a parent folder belongs, or a name past 255 bytes: the run made every call and
    then died on a traceback (NotADirectoryError, ENAMETOOLONG); now exit 2 before anything runs."""
    spec = unreachable_spec(tmp_path, seeds_file)
    (tmp_path / "afile").write_text(USER_DATA)
    for out, message in ((tmp_path / "afile" / "sub", "afile is a file, not a folder"),
                         (tmp_path / ("x" * 300), "longer than a file name may be")):
        result = codeclm("run", str(spec), "-q", "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
        assert result.exit_code == 2 and message in result.output, result.output
    assert (tmp_path / "afile").read_text() == USER_DATA


def test_a_full_disk_mid_run_is_a_message_not_a_traceback(tmp_path, seeds_file, monkeypatch):
    """An OSError of the machine (disk full, too many open files) ends the run with the file, the
    cause and how to resume, exit 1."""
    import errno

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "metadata.jsonl.partial"))

    monkeypatch.setattr(RunStore, "append", full)
    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        result = codeclm("run", str(write_spec(tmp_path, data)), "-q", "--out", str(tmp_path / "run"),
                         "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 1, result.output
    assert "metadata.jsonl.partial: No space left on device" in result.output and "resume" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # its journals are gone, and the folder it made for them


def test_a_failed_replay_removes_the_journals_it_began(tmp_path, seeds_file):
    """A replay that missed the cache (exit 3) left dataset.jsonl.partial and every other journal in its
    --out. Now it removes what it began and nothing else: a new folder goes again, an empty one stays
    empty, a reused run folder keeps the files its earlier run finished and the user's."""
    run, cache, again = tmp_path / "run", str(tmp_path / "cache"), tmp_path / "again"
    with FakeOpenAIServer() as server:
        data = base_spec(seeds_file)
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                          for role in ("strong", "target")}
        spec = str(write_spec(tmp_path, data))
        assert codeclm("run", spec, "-q", "--no-report", "--out", str(run), "--cache-dir", cache).exit_code == 0
    assert codeclm("replay", str(run), "--out", str(again), "--cache-dir", cache).exit_code == 0
    (again / "notes.txt").write_text(USER_DATA)
    (tmp_path / "empty").mkdir()
    kept = sorted(path.name for path in again.iterdir() if path.name != "manifest.json")  # a rerun's first write
    cleared = codeclm("cache", "clear", "--model", "hosted_vllm/target", "--yes", "--cache-dir", cache)
    assert cleared.exit_code == 0, cleared.output  # the replay now misses mid-way, its journals begun
    for out in ("new", "empty", "again", "made/for/it", "empty/inside"):
        missed = codeclm("replay", str(run), "--out", str(tmp_path / out), "--cache-dir", cache)
        assert missed.exit_code == 3 and "Traceback" not in missed.output, missed.output
    assert not (tmp_path / "new").exists() and list((tmp_path / "empty").iterdir()) == []
    assert not (tmp_path / "made").exists()  # the parents it made go too; `empty`, which it did not make, stays
    assert sorted(path.name for path in again.iterdir()) == kept
    assert (again / "notes.txt").read_text() == USER_DATA


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk at a file's last flush left its temporary `.NAME.tmp` beside the run's files."""
    import errno

    from codeclm.programs.artifacts.store import _AtomicFile, write_atomic

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "manifest.json", "{}\n")
    with pytest.raises(OSError, match="No space"), _AtomicFile(tmp_path / "dataset.jsonl") as handle:
        handle.write("{}\n")
    assert list(tmp_path.iterdir()) == []


def test_two_runs_into_one_folder_at_once_the_second_is_refused(tmp_path):
    """Two runs at once into one --out mixed and deleted each other's journals (one died on a
    FileNotFoundError); the folder is now held by the run writing into it."""
    folder = tmp_path / "run"
    first = RunStore(folder)
    first.write_jsonl("histories", [{"id": "a"}])
    second = RunStore(folder)
    with pytest.raises(SpecError, match="another codeclm run is writing into this folder"):
        second.write_jsonl("histories", [{"id": "b"}])
    first.release()
    second.write_jsonl("histories", [{"id": "b"}])
    assert json.loads((folder / "histories.jsonl").read_text()) == {"id": "b"}


def test_a_second_run_into_a_busy_run_folder_is_refused_before_any_call(tmp_path, seeds_file):
    """The lock was taken at the first write, so a second run into a busy folder made (and cached)
    calls for its first records before it was refused; it is now taken before the first call."""
    from fake_openai_server import FakeOpenAIServer

    folder = tmp_path / "run"
    folder.mkdir()
    busy = RunStore(folder)
    busy.hold()  # the first run, still writing
    try:
        with FakeOpenAIServer() as server:
            data = base_spec(seeds_file)
            data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url}
                              for role in ("strong", "target")}
            result = codeclm("run", str(write_spec(tmp_path, data)), "-q", "--out", str(folder),
                             "--cache-dir", str(tmp_path / "cache"))
            assert result.exit_code == 2 and "another codeclm run is writing into this folder" in result.output
            assert server.completions == 0, "a refused run called the model"
    finally:
        busy.release()
    assert list(folder.iterdir()) == []  # nothing written either


def test_a_report_into_a_folder_a_run_is_writing_waits_its_turn(tmp_path):
    """`codeclm report RUN` rewrote the marker's file list while a run in that folder was adding to it,
    so a name could drop out (and the run's file then count as someone else's). A command writing
    beside a run now takes the run's folder lock: refused while a run holds it, written after."""
    from codeclm.programs.artifacts.html_report import write_report
    from codeclm.programs.artifacts.store import own_files

    folder = tmp_path / "run"
    finished = RunStore(folder)
    finished.write_jsonl("metadata", [{"id": "m0", "status": "ok"}])
    finished.write_json("manifest", {"spec": {"name": "t"}, "totals": {"calls": 0}})
    rerun = RunStore(folder)
    rerun.hold()  # a rerun into the folder, writing now
    try:
        with pytest.raises(SpecError, match="another codeclm run is writing into this folder"):
            write_report(folder)
        assert "report.html" not in own_files(folder) and not (folder / "report.html").exists()
    finally:
        rerun.release()
    write_report(folder)
    assert "report.html" in own_files(folder) and "metadata.jsonl" in own_files(folder)


def test_a_folder_from_before_the_marker_listed_outputs_still_resumes(tmp_path):
    """A folder whose marker lists no files: a rerun removed the manifest naming its outputs, then
    stopped; the next run refused those outputs as not codeclm's. They are now listed at the claim."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"written_by": "codeclm"}) + "\n")  # the old marker
    (folder / "histories.jsonl").write_text('{"id": "a"}\n')
    (folder / "manifest.json").write_text(json.dumps({"spec": {"resolved": {"outputs": {"histories": {}}}}}))
    stopped = RunStore(folder)
    stopped.write_jsonl("metadata", [{"id": "m"}])  # claims: the manifest goes; then the run stops
    stopped.release()
    assert not (folder / "manifest.json").exists()
    RunStore(folder).check_outputs(["histories"])  # still codeclm's


def test_a_file_system_without_locks_runs_unlocked(tmp_path, monkeypatch):
    """ENOLCK (some network mounts) is not 'another run': the run goes on without the lock."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    store = RunStore(tmp_path / "run")
    store.write_jsonl("histories", [{"id": "a"}])
    assert (tmp_path / "run" / "histories.jsonl").is_file()


def test_call_keys_is_not_an_output_name(tmp_path, seeds_file):
    """call_keys.txt is every run's own file: an output of that name mixed its lines into it."""
    spec = unreachable_spec(tmp_path, seeds_file)
    result = codeclm("validate", str(spec), "--set", "outputs.call_keys.from=seeds",
                     "--set", "outputs.call_keys.fields.id=record.id")
    assert result.exit_code == 2 and "call_keys" in result.output, result.output


def test_a_rerun_keeps_a_users_file_named_like_an_artifact(tmp_path, seeds_file, scripted):
    """The trial's repro: a run writing no metadata.jsonl or pool.jsonl, the user's files of those names
    put in its folder, the same run again: they were deleted (every artifact name counted as codeclm's).
    Now they stay; a spec that writes metadata.jsonl is refused there (exit 2) before it writes anything."""
    data = base_spec(seeds_file)
    del data["outputs"]["metadata"], data["outputs"]["pool"]
    spec = write_spec(tmp_path, data)
    first = scripted(spec, out="run")
    (first.out / "metadata.jsonl").write_text(USER_DATA)
    (first.out / "pool.jsonl").write_text(USER_DATA)
    again = scripted(spec, out="run")
    assert (again.out / "manifest.json").is_file()
    assert (again.out / "metadata.jsonl").read_text() == USER_DATA == (again.out / "pool.jsonl").read_text()
    before = {p.name: p.read_bytes() for p in first.out.iterdir()}
    with pytest.raises(SpecError, match="codeclm did not write it: output 'metadata' would replace it"):
        scripted(write_spec(tmp_path, base_spec(seeds_file), "full.yaml"), out="run")
    assert {p.name: p.read_bytes() for p in first.out.iterdir()} == before


def test_an_older_folder_owns_only_what_its_manifest_names(tmp_path):
    """A folder an older codeclm wrote (a marker with no list): a file of an artifact's name that its
    manifest does not name is the user's; the files it names (the outputs, every run's own) are codeclm's."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"written_by": "codeclm"}) + "\n")
    for name in ("dataset.jsonl", "failures.jsonl", "call_keys.txt", "metadata.jsonl"):
        (folder / name).write_text(USER_DATA)
    (folder / "manifest.json").write_text(json.dumps({"spec": {"resolved": {"outputs": {"dataset": {}}}}}))
    with pytest.raises(SpecError, match="output 'metadata' would replace it"):
        RunStore(folder).check_outputs(["dataset", "metadata"])
    rerun = RunStore(folder)
    rerun.check_outputs(["dataset"])
    rerun.write_jsonl("rubrics", [{"id": "r"}])
    rerun.write_json("manifest", {"spec": {"resolved": {"outputs": {"rubrics": {}}}}})
    assert (folder / "metadata.jsonl").read_text() == USER_DATA  # never the earlier run's
    assert not (folder / "dataset.jsonl").exists() and not (folder / "failures.jsonl").exists()


def test_an_older_codeclms_run_killed_before_its_manifest_resumes(tmp_path):
    """An older codeclm removed the manifest as a run began and listed no files in its marker: its killed
    run left a folder whose artifacts no manifest names, and the rerun refused them as the user's."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"written_by": "codeclm"}) + "\n")
    for name in ("metadata.jsonl", "dataset.jsonl.partial", "failures.jsonl.partial"):
        (folder / name).write_text('{"id": "old"}\n')
    rerun = RunStore(folder)
    rerun.check_outputs(["dataset", "metadata"])
    rerun.write_jsonl("metadata", [{"id": "m"}])
    rerun.write_json("manifest", {"spec": {"resolved": {"outputs": {"metadata": {}}}}})
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, "manifest.json", "metadata.jsonl"])


def test_a_run_killed_mid_way_still_owns_what_it_began(tmp_path):
    """The marker lists each file before it is written: a run killed after writing the metadata and
    while streaming a journal leaves a folder whose resume replaces both, and finishes clean."""
    folder = tmp_path / "run"
    killed = RunStore(folder)
    killed.write_jsonl("metadata", [{"id": "m"}])
    killed.open_journal("dataset")
    killed.append("dataset", (0,), {"id": "d"})
    killed.note_calls((0,), [{"key": "k1"}])
    killed.release()  # the process is gone: no manifest, the journals left behind
    resume = RunStore(folder)
    resume.check_outputs(["dataset", "metadata"])
    resume.write_jsonl("metadata", [{"id": "m"}])
    resume.open_journal("dataset")
    resume.append("dataset", (0,), {"id": "d"})
    resume.finish_journals()
    resume.write_json("manifest", {"spec": {"resolved": {"outputs": {"dataset": {}, "metadata": {}}}}})
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, "dataset.jsonl", "metadata.jsonl",
                                                                "manifest.json"])


DEAD_PID = 4194305  # above Linux's largest PID (2**22): no process has it


def test_the_rerun_removes_the_temporary_files_of_a_run_killed_while_writing(tmp_path):
    """SIGKILL between writing `.dataset_info.json.PID.tmp` and renaming it left the file for good: the
    rerun writes under its own PID. It goes on the rerun; a living writer's and the user's files stay."""
    folder = tmp_path / "run"
    killed = RunStore(folder)
    killed.write_jsonl("dataset", [{"id": "d"}])
    killed.write_dataset_info("dataset")
    killed.release()
    dead = [f".dataset_info.json.{DEAD_PID}.tmp", f".{MARKER}.{DEAD_PID}.tmp", ".dataset.jsonl.tmp"]
    kept = [f".report.html.{os.getpid()}.tmp", f".notes.txt.{DEAD_PID}.tmp", "mine.tmp"]
    for name in dead + kept:
        (folder / name).write_text("half written")
    resume = RunStore(folder)
    resume.write_dataset_info("dataset")
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, "dataset.jsonl", "dataset_info.json", *kept])


def test_a_run_killed_while_writing_its_first_marker_resumes_into_its_folder(tmp_path, seeds_file, scripted):
    """A folder holding only the marker's temporary file was "not empty and not a codeclm run": the rerun
    was refused, and the user told to empty a folder codeclm had made."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / f".{MARKER}.{DEAD_PID}.tmp").write_text('{"written_by": "codeclm"}')
    scripted(write_spec(tmp_path, base_spec(seeds_file)), out="run")
    assert (folder / "dataset.jsonl").is_file() and not list(folder.glob("*.tmp")) + list(folder.glob(".*.tmp"))


@pytest.mark.parametrize("folder_kind", ["foreign", "own"])
def test_compare_never_replaces_a_file_it_did_not_write(tmp_path, seeds_file, folder_kind):
    """The trial's repro: `compare --out mydir` over the user's compare.txt and compare.json replaced them.
    Now a folder of the user's files is refused as `run` refuses it, and in codeclm's own folder a compare
    file it did not write is too: exit 2 before any call, every file as it was."""
    spec = unreachable_spec(tmp_path, seeds_file)
    folder = tmp_path / "mydir"
    if folder_kind == "own":
        RunStore(folder).write_jsonl("metadata", [{"id": "m"}])
    folder.mkdir(exist_ok=True)
    (folder / "compare.txt").write_text("my own notes\n")
    (folder / "compare.json").write_text(USER_DATA)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = codeclm("compare", str(spec), "--set-b", "params.threshold=2", "--judge", "strong",
                     "--out", str(folder), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert str(folder) in result.output
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_users_file_beside_a_run_is_not_read_as_its_data(tmp_path, seeds_file, scripted):
    """A run kept a user's metadata.jsonl (it writes none) and the report read it as the run's seeds."""
    from codeclm.programs.artifacts.rundata import RunData
    from conftest import hand_written

    records = [{"id": "h0", "use_case": "poems", "skills": ["rhyme"]},
               {"id": "h1", "use_case": "code", "skills": ["sql"]}]
    run = scripted(write_spec(tmp_path, hand_written(base_spec(seeds_file), records)), out="run").out
    (run / "metadata.jsonl").write_text(json.dumps({"id": "u", "instruction": "MY OWN SEED"}) + "\n")
    data = RunData.open(run)
    assert data.stream("metadata") is None and "metadata.jsonl" in data.missing
    assert all("MY OWN SEED" not in seed["text"] for seed in data.iter_seeds())
    page = codeclm("report", str(run), "--out", str(tmp_path / "page.html"))
    assert page.exit_code == 0 and "MY OWN SEED" not in (tmp_path / "page.html").read_text()


def test_a_rerun_keeps_what_evaluate_and_compare_wrote_in_its_folder(tmp_path, seeds_file, scripted):
    """Since evaluate and compare list their files in the marker, a rerun took them for a stale run's and
    deleted them."""
    from codeclm.programs.artifacts.store import note_own

    spec = write_spec(tmp_path, base_spec(seeds_file))
    run = scripted(spec, out="run").out
    note_own(run, {"eval.json", "eval.jsonl", "compare.txt"})  # as `codeclm evaluate --out RUN` does
    for name in ("eval.json", "eval.jsonl", "compare.txt"):
        (run / name).write_text("results\n")
    scripted(spec, out="run")
    assert all((run / name).read_text() == "results\n" for name in ("eval.json", "eval.jsonl", "compare.txt"))
    assert {"eval.json", "compare.txt"} <= set(json.loads((run / MARKER).read_text())["written"])


def test_ctrl_c_during_the_end_of_run_report_says_the_run_finished(tmp_path, seeds_file):
    """Interrupted while writing report.html, a finished run said "run the same command again to resume"."""
    from types import SimpleNamespace

    from codeclm.programs.artifacts import html_report
    from codeclm.programs.engine import run as engine_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    spec, out = write_spec(tmp_path, base_spec(seeds_file)), tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_run, "run_spec", lambda loaded, options: SimpleNamespace(out=out))
        patch.setattr(html_report, "write_report", interrupted)
        result = codeclm("run", str(spec), "--out", str(out), "-q")
    assert result.exit_code == 130, result.output
    assert f"interrupted: the run finished ({out} has its dataset and manifest); report.html was not written: " \
           f"`codeclm report {out}` writes it." in result.output
    assert "resume" not in result.output

"""Bad input is exit 2 with the file, the line and the fix; faults are clear messages; never a
traceback. Three classes: YAML (specs and --set), text that is not Unicode (seeds, benchmarks,
--input), and the cache (damaged, read-only, misplaced, bad bundles)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from codeclm.programs.artifacts.bundle import export_bundle, import_bundle
from codeclm.programs.errors import ReplayMiss, SpecError, SpecErrors
from codeclm.programs.lang.seeds import read_seeds
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.cache import CallCache, CallIdentity
from conftest import REPO, ScriptedBackend, ScriptedRun, base_spec, write_spec

# -- helpers -------------------------------------------------------------------------------


def cli(*args: str | bytes, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", *args], cwd=REPO, capture_output=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    done.stdout, done.stderr = (done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))
    return done


def assert_reports(done: subprocess.CompletedProcess, *texts: str, code: int = 2) -> None:
    """Exit `code`, each text in the message, and no traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    for text in texts:
        assert text in done.stderr, done.stderr


def spec_error(path: Path, overrides: list[str] | None = None) -> SpecError:
    with pytest.raises((SpecError, SpecErrors)) as caught:
        load_spec(path, overrides)
    error = caught.value
    return error.errors[0] if isinstance(error, SpecErrors) else error


def raw_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


ENTRY = {"text": "an answer", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def key(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def filled_cache(folder: Path, entries: int = 5) -> list[str]:
    cache = CallCache(folder)
    keys = [key(n) for n in range(entries)]
    for k in keys:
        cache.put(k, "some/model", ENTRY)
    cache.close()
    return keys


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under folder: size, mtime and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. YAML: duplicate keys, alias bombs, encodings, --set ------------------------------


def test_duplicate_key_names_both_lines(tmp_path, seeds_file):
    text = write_spec(tmp_path, base_spec(seeds_file)).read_text()
    path = raw_spec(tmp_path, text.replace("    temperature: 0.7\n", "    temperature: 0.7\n    temperature: 0.2\n", 1))
    lines = path.read_text().splitlines()
    first = lines.index("    temperature: 0.7") + 1
    error = spec_error(path)
    assert error.line == first + 1 and f"first on line {first}" in error.message
    assert "duplicate key 'temperature'" in error.message


def test_two_stages_of_the_same_name(tmp_path, seeds_file):
    text = write_spec(tmp_path, base_spec(seeds_file)).read_text()
    second = "  decode:\n    type: llm\n    model: target\n    template: decode.jinja\n"
    path = raw_spec(tmp_path, text.replace("  refine:\n", second + "  refine:\n", 1))
    lines = path.read_text().splitlines()
    first, again = [n for n, line in enumerate(lines, start=1) if line == "  decode:"]
    done = cli("validate", str(path))
    assert_reports(done, f"{path}:{again}", "duplicate key 'decode'", f"first on line {first}", "fix:")


def test_merge_keys_are_not_duplicates(tmp_path, seeds_file):
    text = write_spec(tmp_path, base_spec(seeds_file)).read_text()
    assert "  target:\n    model: local\n    temperature: 0.7\n" in text
    text = text.replace("  strong:\n", "  strong: &strong\n", 1)
    text = text.replace("  target:\n    model: local\n    temperature: 0.7\n", "  target:\n    <<: *strong\n", 1)
    spec = load_spec(raw_spec(tmp_path, text))  # a merged key given again overrides it: no duplicate
    assert spec.models["target"].max_tokens == 32 and spec.models["target"].temperature == 0.7


def test_two_merge_keys_in_one_mapping_are_a_duplicate(tmp_path, seeds_file):
    """Two `<<:` in one mapping: YAML keys are unique, and which one wins was PyYAML's choice."""
    text = write_spec(tmp_path, base_spec(seeds_file)).read_text()
    text = text.replace("  strong:\n", "  strong: &strong\n", 1)
    twice = "  target:\n    <<: *strong\n    <<: *strong\n    model: local\n"
    text = text.replace("  target:\n    model: local\n", twice, 1)
    path = raw_spec(tmp_path, text)
    second = path.read_text().splitlines().index("    <<: *strong") + 2
    error = spec_error(path)
    assert error.line == second and "duplicate key '<<'" in error.message and "<<: [*first, *second]" in error.hint


BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True))


def test_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path):
    path = raw_spec(tmp_path, BOMB)  # 9**9 = 387 million strings once expanded
    tracemalloc.start()
    started = time.monotonic()
    error = spec_error(path)
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 2 and peak < 20e6, (elapsed, peak)
    assert "anchors and aliases expand" in error.message and error.line == 1
    started = time.monotonic()
    assert_reports(cli("validate", str(path)), str(path), "anchors and aliases expand")
    assert time.monotonic() - started < 20


def test_the_budget_counts_only_what_aliases_add(monkeypatch):
    from codeclm.programs.lang import yaml_lines

    monkeypatch.setattr(yaml_lines, "MAX_NODES", 1000)
    assert len(yaml_lines.load_value("[" + "x, " * 3000 + "]", "--set v")) == 3000  # written out: fine
    assert len(yaml_lines.load_value("[&a [" + "x, " * 100 + "], " + "*a, " * 9 + "]", "--set v")) == 10
    with pytest.raises(SpecError, match="beyond what is written"):  # 100 values aliased 12 times
        yaml_lines.load_value("[&a [" + "x, " * 100 + "], " + "*a, " * 12 + "]", "--set v")


def test_a_device_or_huge_file_is_not_read_as_a_spec():
    started = time.monotonic()
    assert_reports(cli("validate", "/dev/zero"), "/dev/zero", "not a spec")
    assert time.monotonic() - started < 20


def test_recursive_alias_and_deep_nesting(tmp_path):
    assert "refers to the node that contains it" in spec_error(raw_spec(tmp_path, "a: &a\n  - *a\n")).message
    assert "nested too deeply" in spec_error(raw_spec(tmp_path, "a: " + "[" * 3000 + "]" * 3000 + "\n")).message


def test_spec_that_is_not_utf8(tmp_path, seeds_file):
    text = write_spec(tmp_path, base_spec(seeds_file)).read_text()
    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode().replace(b"name: tiny", b"name: caf\xe9", 1))
    bad_line = text.splitlines().index("name: tiny") + 1
    offset = text.encode().index(b"name: tiny") + len("name: caf")
    error = spec_error(path)
    assert error.line == bad_line and f"offset {offset}" in error.message and "UTF-8" in error.message
    assert_reports(cli("validate", str(path)), f"{path}:{bad_line}", "not valid UTF-8", "fix:")


def test_spec_with_a_lone_surrogate_or_a_control_character(tmp_path):
    error = spec_error(raw_spec(tmp_path, 'name: ok\ndescription: "bad \\ud800 text"\n'))
    assert error.line == 2 and "lone surrogate" in error.message
    error = spec_error(raw_spec(tmp_path, "name: ok\ndescription: a\x07b\n"))
    assert error.line == 2 and "control character" in error.message


def test_template_that_is_not_utf8(tmp_path, seeds_file):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for template in (REPO / "prompts").glob("*.jinja"):
        (prompts / template.name).write_bytes(template.read_bytes())
    (prompts / "decode.jinja").write_bytes((REPO / "prompts" / "decode.jinja").read_bytes() + b"\ncaf\xe9\n")
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    done = cli("validate", str(write_spec(tmp_path, data)))
    assert_reports(done, str(prompts / "decode.jinja"), "not valid UTF-8")


def test_yaml_values_that_are_not_json(tmp_path):
    path = raw_spec(tmp_path, "name: ok\ndescription: 2024-01-01\n")
    from codeclm.programs.lang.yaml_lines import load_with_lines

    assert load_with_lines(path)[0]["description"] == "2024-01-01"  # text, not a date the manifest cannot write
    error = spec_error(raw_spec(tmp_path, "name: ok\ndescription: !!set {a, b}\n"))
    assert error.line == 2 and "!!set" in error.message


@pytest.mark.parametrize(("override", "message"), [
    ("params.threshold=[1, 2", "invalid YAML"),
    ("params.threshold={a: 1, a: 2}", "duplicate key 'a'"),
    ("params.threshold=\"\\ud800\"", "lone surrogate"),
    ("seed.x=1", "'seed' is a int, not a mapping"),
    ("params..threshold=1", "empty key part"),
], ids=["unclosed", "duplicate", "surrogate", "into-scalar", "empty-part"])
def test_set_values_that_are_not_valid(tmp_path, seeds_file, override, message):
    path = write_spec(tmp_path, base_spec(seeds_file))
    error = spec_error(path, [override])  # at the --set, never at a line of the file, which does not hold it
    assert message in str(error) and "--set" in str(error) and error.line is None


def test_a_number_yaml_reads_as_text_and_nodes_set_to_nothing_get_a_fix(tmp_path, seeds_file):
    """`1.0e400` is text to YAML 1.1 (an exponent needs its sign): the error said so nowhere. And with no node
    left (`--set nodes=1`), each output's fix line was an empty list of node names, `fix: nodes: `."""
    path = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("validate", str(path), "--set", "models.strong.temperature=1.0e400"),
                   "got '1.0e400'", "write the exponent with its sign")
    done = cli("validate", str(path), "--set", "nodes=1")
    assert "fix: nodes: \n" not in done.stderr and "declare the node under nodes:" in done.stderr, done.stderr


def test_set_alias_bomb_and_bad_bytes_through_the_cli(tmp_path, seeds_file):
    path = write_spec(tmp_path, base_spec(seeds_file))
    bomb = "[" + ", ".join(f"&{n} [" + ", ".join(["*" + p] * 9) + "]" for p, n in zip("abcdefgh", "bcdefghi",
                                                                                     strict=True)) + "]"
    bomb = "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + bomb[1:]
    assert_reports(cli("validate", str(path), "--set", f"description={bomb}"), "--set description",
                   "anchors and aliases expand")
    done = cli("validate", str(path), "--set", b"description=caf\xe9")  # argv bytes that are not UTF-8
    assert_reports(done, str(path), "not valid text")


# -- 2. text that is not Unicode: seeds, benchmarks, --input ---------------------------


@pytest.mark.parametrize(("name", "content", "line"), [
    ("seeds.jsonl", b'{"instruction": "fine"}\n{"instruction": "caf\xe9"}\n', 2),
    ("seeds.csv", b"id,instruction\n1,fine\n2,\"two\nlines\"\n3,caf\xe9\n", 5),
    ("seeds.txt", b"fine\n\nalso fine\ncaf\xe9 au lait\n", 4),
], ids=["jsonl", "csv", "text"])
def test_seed_file_with_invalid_utf8_is_located(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SpecError) as caught:
        read_seeds(path)
    error = caught.value
    assert error.line == line and f"offset {content.index(b'caf') + 3}" in error.message, str(error)
    assert error.file == str(path) and "UTF-8" in error.message and error.hint


def test_seed_file_with_invalid_utf8_through_run(tmp_path, seeds_file):
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"Write a haiku.\n\xff\xfe broken\n")
    started = time.monotonic()
    done = cli("run", str(write_spec(tmp_path, base_spec(seeds))), "--out", str(tmp_path / "run"),
               "--cache-dir", str(tmp_path / "cache"), "-q")
    assert time.monotonic() - started < 20
    assert_reports(done, f"{seeds}:2", "not valid UTF-8", "offset 15")


def test_file_names_that_are_not_utf8(tmp_path, seeds_file):
    odd = tmp_path / os.fsdecode(b"seeds\xff.jsonl")
    odd.write_bytes(seeds_file.read_bytes())
    with pytest.raises(SpecError, match="name is not valid UTF-8"):
        read_seeds(odd)
    with pytest.raises(SpecError, match="name is not valid UTF-8"):
        CallCache(tmp_path / os.fsdecode(b"cache\xff"), "replay")
    spec = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("run", str(spec), "--dry-run", "--seeds", os.fsencode(odd)), "seeds", "not valid UTF-8",
                   "rename it")


@pytest.mark.parametrize("record", [
    {"id": "a", "instruction": "bad \ud800 text"},
    {"id": "\udfff", "instruction": "fine"},
], ids=["instruction", "id"])
def test_lone_surrogate_escapes_in_seeds_are_located(tmp_path, record):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps({"instruction": "ok", "id": "z"}) + "\n" + json.dumps(record) + "\n")
    assert "\\ud800" in path.read_text() or "\\udfff" in path.read_text()  # the file itself is ASCII
    with pytest.raises(SpecError) as caught:
        read_seeds(path)
    assert caught.value.line == 2 and "lone surrogate" in caught.value.message


def test_csv_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "seeds.csv"
    path.write_bytes(b"\xef\xbb\xbfid,instruction\n1,Write a haiku.\n")
    assert [s["instruction"] for s in read_seeds(path)] == ["Write a haiku."]


def test_benchmark_with_bad_bytes_or_surrogates_through_evaluate(tmp_path, seeds_file):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    bench = tmp_path / "bench.jsonl"
    bench.write_bytes(b'{"id": "1", "instruction": "fine"}\n{"id": "2", "instruction": "\xc3("}\n')
    assert_reports(cli("evaluate", str(spec), str(bench), "-q", "--cache-dir", str(tmp_path / "c")),
                   f"{bench}:2", "not valid UTF-8")
    bench.write_text('{"id": "1", "instruction": "fine"}\n{"id": "2", "instruction": "x\\ud834"}\n')
    assert_reports(cli("evaluate", str(spec), str(bench), "-q", "--cache-dir", str(tmp_path / "c")),
                   f"{bench}:2", "lone surrogate")


@pytest.mark.parametrize(("given", "message"), [
    ('{"instruction": "x\\ud800"}', "not valid Unicode"),
    (b'{"instruction": "caf\xe9"}', "not valid Unicode"),
    ('["a list"]', "must be a JSON object"),
], ids=["surrogate-escape", "bad-bytes", "not-object"])
def test_render_input_that_is_not_text(tmp_path, seeds_file, given, message):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("render", str(spec), "decode", "--input", given), "--input", message)


def test_cache_keys_never_crash_on_a_lone_surrogate():
    identity = CallIdentity.of("m", [{"role": "user", "content": "x\ud800"}], {"temperature": 0.0})
    assert len(identity.key) == 64
    clean = CallIdentity.of("m", [{"role": "user", "content": "x"}], {"temperature": 0.0})
    assert clean.key != identity.key


# -- 3. the cache: damaged, read-only, misplaced; bundles --------------------------------


def test_garbage_cache_database(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cache.db").write_bytes(os.urandom(8192))
    for mode in ("live", "replay", "read", "refresh"):
        with pytest.raises(SpecError) as caught:
            CallCache(folder, mode)
        assert caught.value.file == str(folder / "cache.db") and "damaged" in caught.value.message
    assert_reports(cli("cache", "stats", "--cache-dir", str(folder)), f"{folder / 'cache.db'}", "damaged",
                   "--cache-dir")
    assert_reports(cli("cache", "clear", "--yes", "--cache-dir", str(folder)), "damaged")


def test_truncated_cache_database(tmp_path):
    folder = tmp_path / "cache"
    keys = filled_cache(folder, 200)
    data = (folder / "cache.db").read_bytes()
    (folder / "cache.db").write_bytes(data[: len(data) // 2])
    for mode in ("live", "replay", "read"):
        try:
            cache = CallCache(folder, mode)
        except SpecError as exc:
            assert "damaged" in exc.message
            continue
        for k in keys:  # whatever survives reads as an entry or a miss, never as an exception
            entry = cache.get(k)
            assert entry is None or entry["text"] == "an answer"
        cache.close()
    assert_reports(cli("cache", "stats", "--cache-dir", str(folder)), "cache.db", "damaged")


def _set_raw_value(folder: Path, k: str, value: bytes) -> None:
    with sqlite3.connect(folder / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (value, k))


@pytest.mark.parametrize("value", [
    b"\x80\x04garbage that does not unpickle",
    pickle.dumps({"text": 5}),  # unpickles, but is no completion entry
    pickle.dumps("a string"),
], ids=["not-a-pickle", "no-text", "not-a-dict"])
def test_undeserializable_entry_is_a_miss_with_a_warning(tmp_path, capsys, value):
    folder = tmp_path / "cache"
    keys = filled_cache(folder, 3)
    _set_raw_value(folder, keys[1], value)
    for mode in ("replay", "read", "live"):
        cache = CallCache(folder, mode)
        assert cache.get(keys[0])["text"] == "an answer"
        assert cache.get(keys[1]) is None
        cache.close()
        assert f"entry {keys[1][:12]} is damaged" in capsys.readouterr().err
    cache = CallCache(folder)  # a live run calls again and overwrites the damaged entry
    cache.put(keys[1], "some/model", ENTRY)
    assert cache.get(keys[1])["text"] == "an answer"
    cache.close()


def test_damaged_entry_through_a_run_is_called_again(tmp_path, seeds_file, scripted, capsys):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="first")
    calls = scripted.calls()
    with sqlite3.connect(scripted.cache_dir / "cache.db") as con:
        (damaged,) = con.execute("SELECT key FROM Cache ORDER BY rowid LIMIT 1").fetchone()
    _set_raw_value(scripted.cache_dir, damaged, b"\x80\x04broken")
    second = scripted(spec, out="second")
    assert scripted.calls() == calls + 1  # only the damaged call is made again
    assert (first.out / "dataset.jsonl").read_bytes() == (second.out / "dataset.jsonl").read_bytes()
    assert "is damaged" in capsys.readouterr().err


def test_a_replay_miss_on_a_damaged_entry_says_so(tmp_path, seeds_file, scripted):
    """It blamed "an input upstream changed" for a call the cache holds but cannot read."""
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="first")
    with sqlite3.connect(scripted.cache_dir / "cache.db") as con:
        (damaged,) = con.execute("SELECT key FROM Cache ORDER BY rowid LIMIT 1").fetchone()
    _set_raw_value(scripted.cache_dir, damaged, b"\x80\x04broken")
    with pytest.raises(ReplayMiss) as missed:
        scripted(spec, out="again", mode="replay", recorded_run=first.out)
    assert "its entry is damaged and cannot be read" in str(missed.value) and "upstream" not in str(missed.value)


def test_replay_reads_the_cache_read_only_and_writes_nothing(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    folder = scripted.cache_dir
    before = snapshot(folder)
    os.chmod(folder, 0o555)  # read-only (root ignores this: the checks below do not rely on it)
    try:
        cache = CallCache(folder, "replay")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # the connection itself refuses writes
            cache.store.con.execute("CREATE TABLE probe (x)")
        assert not cache.put(key(1), "m", ENTRY)
        cache.close()
        scripted.backends = {role: _Unreachable(b.name) for role, b in scripted.backends.items()}
        second = scripted(spec, out="replay", mode="replay")
    finally:
        os.chmod(folder, 0o755)
    assert (first.out / "dataset.jsonl").read_bytes() == (second.out / "dataset.jsonl").read_bytes()
    assert snapshot(folder) == before  # no byte, no mtime, no -wal or -shm file


def test_read_only_open_while_a_writer_is_at_work(tmp_path):
    folder = tmp_path / "cache"
    writer = CallCache(folder)
    writer.put(key(0), "m", ENTRY)
    assert (folder / "cache.db-wal").exists()  # a live connection: the reader must go through SQLite's locks
    reader = CallCache(folder, "replay")
    assert reader.get(key(0))["text"] == "an answer"
    writer.put(key(1), "m", ENTRY)
    assert reader.get(key(1))["text"] == "an answer"
    reader.close()
    writer.close()


def test_a_cache_folder_a_live_run_cannot_write(tmp_path, monkeypatch):
    """As root, permissions cannot make a folder read-only: make SQLite say so."""
    import diskcache

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    filled_cache(tmp_path / "cache", 1)
    monkeypatch.setattr(diskcache, "Cache", refuse)
    with pytest.raises(SpecError) as caught:
        CallCache(tmp_path / "cache", "live")
    assert "cannot be written" in caught.value.message and "--replay" in caught.value.hint
    assert CallCache(tmp_path / "cache", "replay").get(key(0))["text"] == "an answer"


def test_replay_of_a_missing_cache_folder_creates_nothing(tmp_path, seeds_file):
    folder = tmp_path / "nowhere"
    cache = CallCache(folder, "replay")
    assert cache.get(key(0)) is None and len(cache.store) == 0
    cache.close()
    assert not folder.exists()


class _Unreachable(ScriptedBackend):
    async def complete(self, messages, params):
        raise AssertionError("replay must not contact a model")


def test_cli_replay_and_stats_on_a_read_only_cache(tmp_path, seeds_file):
    """`run --replay` from the CLI, on a cache written by scripted models named as the spec's."""
    data = base_spec(seeds_file)
    for role in ("strong", "target"):
        data["models"][role].update(model=f"hosted_vllm/{role}", api_base="http://127.0.0.1:9/v1")
    spec = write_spec(tmp_path, data)
    scripted = ScriptedRun(tmp_path)
    scripted.backends = {role: ScriptedBackend(f"hosted_vllm/{role}") for role in ("strong", "target")}
    first = scripted(spec, out="live")
    before = snapshot(scripted.cache_dir)
    home = tmp_path / "home"
    home.mkdir()
    done = cli("run", str(spec), "--replay", "-q", "--cache-dir", str(scripted.cache_dir),
               "--out", str(tmp_path / "replayed"), env={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")},
               timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(home.iterdir())  # nor any other cache (DSPy's): replay writes only its output folder
    assert (first.out / "dataset.jsonl").read_bytes() == (tmp_path / "replayed" / "dataset.jsonl").read_bytes()
    stats = cli("cache", "stats", "--cache-dir", str(scripted.cache_dir))
    assert stats.returncode == 0 and "hosted_vllm/strong" in stats.stdout, stats.stderr
    dry = cli("run", str(spec), "--dry-run", "--cache-dir", str(scripted.cache_dir), timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert snapshot(scripted.cache_dir) == before


def test_cache_path_that_is_a_file(tmp_path, seeds_file):
    path = tmp_path / "cache-file"
    path.write_text("not a folder")
    for mode in ("live", "replay", "read"):
        with pytest.raises(SpecError, match="is a file, not a folder"):
            CallCache(path, mode)
    assert_reports(cli("cache", "stats", env={"CODECLM_CACHE_DIR": str(path)}), str(path), "not a folder")
    data = base_spec(seeds_file)
    data["cache"] = str(path)
    done = cli("run", str(write_spec(tmp_path, data)), "--dry-run", timeout=120)
    assert_reports(done, str(path), "not a folder")


@pytest.mark.parametrize(("name", "content", "message", "line"), [
    # garbage with no newline in it (random bytes held one a fifth of the time, and the error moved to line 2)
    ("bundle.jsonl", bytes(range(0x80, 0xC0)) + b"\xff\n", "not a codeclm cache bundle", 1),
    ("bundle.jsonl", b'{"key": "abc", "entry": {}}\n', "not a call key", 1),
    ("bundle.jsonl.gz", b"plain text, not gzip\n", "not gzip-compressed", None),
    ("bundle.jsonl.gz", "truncated-gzip", "truncated or damaged", None),
    ("bundle.jsonl", "truncated-jsonl", "may be truncated", 3),
    ("bundle.jsonl", "bad-entry", "no completion text", 2),
    ("bundle.jsonl", "surrogate", "lone surrogate", 1),
], ids=["garbage", "bad-key", "gz-not-gzip", "gz-truncated", "jsonl-truncated", "bad-entry", "surrogate"])
def test_bad_bundles_import_nothing(tmp_path, name, content, message, line):
    good = [json.dumps({"key": key(n), "entry": {**ENTRY, "model": "m"}}) + "\n" for n in range(3)]
    if content == "truncated-gzip":
        content = gzip.compress("".join(good).encode())[:-12]
    elif content == "truncated-jsonl":
        content = "".join(good).encode()[:-20]
    elif content == "bad-entry":
        content = (good[0] + json.dumps({"key": key(9), "entry": {"usage": ENTRY["usage"]}}) + "\n").encode()
    elif content == "surrogate":
        content = (json.dumps({"key": key(9), "entry": {**ENTRY, "text": "x\ud800"}}) + "\n").encode()
    bundle = tmp_path / name
    bundle.write_bytes(content)
    folder = tmp_path / "cache"
    with pytest.raises(SpecError) as caught:
        import_bundle(bundle, folder)
    assert message in caught.value.message and caught.value.file == str(bundle)
    if line:
        assert caught.value.line == line
    assert not folder.exists()  # checked before the cache is touched: nothing half-imported
    assert_reports(cli("cache", "import", str(bundle), "--cache-dir", str(folder)), str(bundle), message)


def test_export_and_import_round_trip_and_a_damaged_manifest(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    before = snapshot(scripted.cache_dir)
    bundle = tmp_path / "b.jsonl.gz"
    count = export_bundle(first.out, bundle)
    assert count == first.manifest["totals"]["calls"] and snapshot(scripted.cache_dir) == before
    assert import_bundle(bundle, tmp_path / "other") == (count, count)
    (first.out / "manifest.json").write_text("{not json")
    for command in (["cache", "export", str(first.out), str(tmp_path / "x.jsonl")], ["replay", str(first.out)],
                    ["optimize", str(spec), "encode", "--from", str(first.out)]):  # one reader, one message
        assert_reports(cli(*command), "manifest.json:1", "damaged: not JSON")
    (first.out / "manifest.json").write_text('{"options": {}}')
    assert_reports(cli("replay", str(first.out)), "manifest.json", "not a codeclm run manifest (no options.cache_dir)")


def test_a_completion_with_a_lone_surrogate_is_written_not_crashed_on(tmp_path, seeds_file, scripted):
    """A server may send "\\ud800" in its JSON: the run writes U+FFFD in its place and goes on."""
    from conftest import ScriptedBackend, base_spec, write_spec
    from fake_openai_server import answer_text

    scripted.backends["target"] = ScriptedBackend(
        "scripted/target", lambda messages: answer_text(messages, "scripted/target") + " \ud800")
    result = scripted(write_spec(tmp_path, base_spec(seeds_file)))
    histories = (result.out / "instructions.jsonl").read_text(encoding="utf-8")
    assert "\ufffd" in histories and "\\ud800" not in histories


def test_run_files_nested_past_reading_are_exit_2(tmp_path, seeds_file, scripted):
    """A manifest or a run line of 100,000 nested brackets: a RecursionError traceback in inspect,
    report, export, replay and cache export; now exit 2 naming the file."""
    first = scripted(write_spec(tmp_path, base_spec(seeds_file)), out="live")
    deep = "[" * 100_000 + "]" * 100_000
    (first.out / "manifest.json").write_text(deep)
    for args in (["inspect", str(first.out)], ["export", str(first.out), str(tmp_path / "hf")],
                 ["replay", str(first.out)], ["cache", "export", str(first.out), str(tmp_path / "x.jsonl")]):
        assert_reports(cli(*args), "manifest.json")
    assert not (tmp_path / "hf").exists()


def test_integers_of_more_digits_than_python_reads_are_exit_2(tmp_path, seeds_file):
    """int() refuses more than 4,300 digits (a ValueError): a traceback from a spec, a --set, a seed
    file and render --input; now exit 2 at the line."""
    huge = "9" * 5000
    spec = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("validate", str(spec), "--set", f"params.threshold={huge}"), "more digits than Python reads")
    seeds = tmp_path / "huge.jsonl"
    seeds.write_text(f'{{"id": "x", "instruction": "hi", "n": {huge}}}\n')
    assert_reports(cli("run", str(spec), "--dry-run", "--seeds", str(seeds)), f"{seeds}:1", "unreadable JSON")
    assert_reports(cli("render", str(spec), "encode", "--input", f'{{"instruction": {huge}}}'), "unreadable JSON")


def test_a_pipe_or_a_device_is_not_a_spec_or_a_seed_file(tmp_path, seeds_file):
    """`validate FIFO` blocked forever on the read; /dev/zero as seeds said 'not found'."""
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    assert_reports(cli("validate", str(fifo), timeout=20), "not a regular file")
    spec = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("run", str(spec), "--dry-run", "--seeds", "/dev/zero", timeout=20), "not a regular file")


def test_init_refuses_the_home_folder_and_a_path_under_a_file(tmp_path):
    """As `run` does: `codeclm init ~` wrote specs/, prompts/, seeds/ and README.md into the home folder."""
    home = tmp_path / "home"
    home.mkdir()
    assert_reports(cli("init", str(home), env={"HOME": str(home)}), "your home folder")
    assert list(home.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    assert_reports(cli("init", str(tmp_path / "afile" / "sub")), "afile is a file, not a folder")


def test_render_refuses_an_input_the_node_does_not_have(tmp_path, seeds_file):
    """A typo in --input rendered the sample value in its place, silently."""
    spec = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("render", str(spec), "encode", "--input", '{"instructoin": "Hi"}'),
                   "node 'encode' has no input 'instructoin'", "its inputs: instruction")


def test_a_seed_id_that_is_not_text_or_a_number_is_refused(tmp_path, seeds_file):
    """An object as an id became its Python repr ("{'a': 1}") in every artifact."""
    seeds = tmp_path / "ids.jsonl"
    seeds.write_text('{"id": {"a": 1}, "instruction": "Hi"}\n')
    spec = write_spec(tmp_path, base_spec(seeds_file))
    assert_reports(cli("run", str(spec), "--dry-run", "--seeds", str(seeds)), f"{seeds}:1", "holds a dict")


def test_seeds_option_for_a_spec_that_reads_no_file_is_refused(tmp_path):
    """--seeds was ignored when every source's records are written in the spec: the run used them."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"id": "a", "instruction": "Say hi."}\n')
    done = cli("run", str(REPO / "specs" / "no_seed.yaml"), "--seeds", str(seeds), "--dry-run",
               "--cache-dir", str(tmp_path / "cache"))
    assert_reports(done, "--seeds", "the spec reads no file", "drop --seeds")


class _Plant:
    """What a hostile cache folder would pickle: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_cache_entry_never_runs_code_when_read(tmp_path, capsys):
    """diskcache pickles values, and a pickle can name any callable: a cache folder from elsewhere
    (a CI artifact, a shared mount) ran `os.system` on replay. Such an entry is damage now."""
    folder, marker = tmp_path / "cache", tmp_path / "PWNED"
    keys = filled_cache(folder, 3)
    _set_raw_value(folder, keys[1], pickle.dumps({"text": _Plant(marker)}))
    with sqlite3.connect(folder / "cache.db") as con:  # a value "file" outside the cache's own files
        con.execute("UPDATE Cache SET value = NULL, filename = ? WHERE key = ?", (str(tmp_path / "x.val"), keys[2]))
    (tmp_path / "x.val").write_bytes(pickle.dumps({"text": "planted", "usage": {}}))
    for mode in ("replay", "read", "live"):
        cache = CallCache(folder, mode)
        assert cache.get(keys[0])["text"] == "an answer"
        assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
        cache.close()
        assert f"entry {keys[1][:12]} is damaged" in capsys.readouterr().err
    assert not marker.exists()


def test_a_long_answer_in_a_value_file_still_reads(tmp_path):
    """diskcache keeps a value over 32 KB in a file of its own: the safe reader reads those."""
    cache = CallCache(tmp_path / "cache")
    entry = {"text": "word " * 20_000, "usage": {"prompt_tokens": 1, "completion_tokens": 20_000}}
    cache.put("a" * 64, "m", entry, strict=True)
    cache.close()
    assert list((tmp_path / "cache").rglob("*.val"))
    for mode in ("replay", "live"):
        again = CallCache(tmp_path / "cache", mode)
        assert again.get("a" * 64)["text"] == entry["text"]
        again.close()


@pytest.mark.parametrize("damage", ["manifest", "dataset"])
def test_report_and_inspect_name_a_damaged_run_file_with_its_line(tmp_path, seeds_file, damage):
    """The trial's repro: a truncated manifest.json (inspect exit 2, report exit 0 and a page), a truncated last
    line in dataset.jsonl (both exit 0; export named line 13). Now both exit 2 naming the file and line, as export."""
    run = ScriptedRun(tmp_path)(write_spec(tmp_path, base_spec(seeds_file)), out="run").out
    if damage == "manifest":
        (run / "manifest.json").write_bytes((run / "manifest.json").read_bytes()[:300])
        where = f"{run / 'manifest.json'}:1:"
    else:
        lines = (run / "dataset.jsonl").read_text(encoding="utf-8").count("\n")
        with (run / "dataset.jsonl").open("a", encoding="utf-8") as handle:
            handle.write('{"messages": [\n')
        where = f"{run / 'dataset.jsonl'}:{lines + 1}:"
    for args in (["inspect", str(run)], ["report", str(run)], ["report", str(run), "--out", str(tmp_path / "r.html")]):
        assert_reports(cli(*args), where, "damaged")
    assert not (run / "report.html").exists() and not (tmp_path / "r.html").exists()


def test_a_users_file_beside_a_run_is_not_called_damage(tmp_path, seeds_file):
    """A user's notes in metadata.jsonl beside a run that writes none: not the run's file, so not its damage."""
    data = base_spec(seeds_file)
    del data["outputs"]["metadata"]
    run = ScriptedRun(tmp_path)(write_spec(tmp_path, data), out="run").out
    (run / "metadata.jsonl").write_text("my notes - not from codeclm\n")
    done = cli("report", str(run))
    assert done.returncode == 0 and (run / "report.html").is_file(), done.stderr


def test_review_cases_are_messages_not_tracebacks(tmp_path, seeds_file, scripted):
    """A count that reaches range's cap (OverflowError), a bundle entry that is a number, a manifest whose
    cache_dir is null (optimize --from used a folder named 'None'), a template no longer UTF-8 at export."""
    assert_reports(cli("validate", str(REPO / "specs" / "demo.yaml"), "--set",
                       "nodes.augment.count=range(200000) | list | length"), "Range too big")
    bundle = tmp_path / "b.jsonl"
    for entry in ("5", "null"):
        bundle.write_text('{"key": "' + "a" * 64 + '", "entry": ' + entry + "}\n")
        assert_reports(cli("cache", "import", str(bundle), "--cache-dir", str(tmp_path / "x")),
                       "not a codeclm cache bundle line")
    spec = write_spec(tmp_path, base_spec(seeds_file))
    run = scripted(spec, out="run").out
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["options"]["cache_dir"] = None
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert_reports(cli("optimize", str(spec), "encode", "--from", str(run)), "names no cache folder")


def test_export_notes_a_template_damaged_since_the_run(tmp_path, seeds_file, scripted):
    pytest.importorskip("pyarrow")
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    run = scripted(write_spec(tmp_path, data), out="run").out
    with (prompts / "improve.jinja").open("ab") as handle:
        handle.write(b"\xff\xfe")
    done = cli("export", str(run), str(tmp_path / "export"), "--no-cache-bundle")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "template improve.jinja changed since the run" in done.stdout + done.stderr


@pytest.mark.parametrize(("yaml_text", "kind"), [("description: {1: one, b: two}", "int"),
                                                 ("description: {true: one}", "bool"),
                                                 ("description: {on: one}", "bool"),
                                                 ("description: {~: one}", "null")])
def test_a_key_that_is_not_text_is_refused_at_its_line(tmp_path, seeds_file, yaml_text, kind):
    """`1:` as a key validated, then the run made every call and crashed writing its manifest (sort_keys
    met an int beside a str); in inputs, state or fields too."""
    path = write_spec(tmp_path, base_spec(seeds_file))
    path.write_text(path.read_text().replace("description:", "old_description:") + yaml_text + "\n")
    line = len(path.read_text().splitlines())
    error = spec_error(path, [])
    assert f"is not text: YAML reads it as {kind}" in error.message and error.line == line

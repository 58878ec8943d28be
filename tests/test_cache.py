"""The call cache: replay bit for bit, re-use after a parameter change, dedup, dry runs, bundles."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from codeclm.programs.artifacts.bundle import export_bundle, import_bundle
from codeclm.programs.engine.dryrun import dry_run
from codeclm.programs.engine.run import RunOptions
from codeclm.programs.errors import ReplayMiss
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.cache import CallCache
from codeclm.programs.models.hub import CallContext, ModelHub
from conftest import REPO, ScriptedBackend, base_spec, hand_written, write_spec

ARTIFACTS = ("dataset.jsonl", "instructions.jsonl", "metadata.jsonl", "pool.jsonl", "rubrics.jsonl")


class Unreachable(ScriptedBackend):
    async def complete(self, messages, params):
        raise AssertionError("replay must not contact a model")


def test_replay_is_byte_identical_with_no_model(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    scripted.backends = {role: Unreachable(b.name) for role, b in scripted.backends.items()}
    second = scripted(spec, out="replay", mode="replay")
    for name in ARTIFACTS:
        assert (first.out / name).read_bytes() == (second.out / name).read_bytes(), name
    assert second.manifest["totals"]["calls"] == 0
    assert second.manifest["totals"]["cache_hits"] == first.manifest["totals"]["calls"]


def test_replay_miss_names_stage_and_item(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    with pytest.raises(ReplayMiss) as caught:
        scripted(spec, mode="replay")
    assert caught.value.stage == "encode" and caught.value.item.startswith("s")
    assert "cache is empty" in str(caught.value)


def test_replay_miss_says_what_changed(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    with pytest.raises(ReplayMiss) as caught:
        scripted(spec, out="replay", mode="replay", overrides=["models.strong.max_tokens=65"],
                 recorded_run=first.out)
    assert "decoding parameters" in caught.value.reason and "65" in caught.value.reason
    with pytest.raises(ReplayMiss) as caught:
        scripted(spec, out="replay", mode="replay", overrides=["params.rubrics=3"], recorded_run=first.out)
    assert caught.value.stage == "rubrics" and "rendered prompt" in caught.value.reason
    assert "code changed" not in caught.value.reason


def test_replay_miss_of_a_call_the_run_made_says_its_answer_is_gone(tmp_path, seeds_file, scripted):
    """It compared the call with another of the same node and item (a judge's other order) and blamed the prompt."""
    import sqlite3

    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    with sqlite3.connect(scripted.cache_dir / "cache.db") as con:  # as `cache clear` of one entry would
        con.execute("DELETE FROM Cache WHERE rowid = (SELECT MAX(rowid) FROM Cache)")
    with pytest.raises(ReplayMiss) as caught:
        scripted(spec, out="replay", mode="replay", recorded_run=first.out)
    assert "the recorded run asked for this very call, but the cache holds no answer" in caught.value.reason


def test_replay_miss_after_a_code_change_says_so(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    manifest_path = first.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert len(manifest["code_sha256"]) == 64
    manifest["code_sha256"] = "0" * 64  # as if the run had been made by other code
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ReplayMiss) as caught:
        scripted(spec, out="replay", mode="replay", overrides=["params.rubrics=3"], recorded_run=first.out)
    assert "codeclm's code changed since that run" in caught.value.reason


def test_replay_miss_exits_3_from_the_cli(tmp_path, seeds_file):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    done = subprocess.run([sys.executable, "-m", "codeclm.cli", "run", str(spec), "--replay", "-q",
                           "--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "stage 'encode'" in done.stderr and "Traceback" not in done.stderr


def test_lower_threshold_needs_no_model_call(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    scripted(spec, out="theta3")
    before = scripted.calls()
    result = scripted(spec, out="theta2", overrides=["params.threshold=2"])
    assert scripted.calls() == before
    assert result.manifest["totals"]["calls"] == 0


def test_changed_improve_template_recalls_only_improve_and_after(tmp_path, seeds_file, scripted):
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    data = base_spec(seeds_file)
    data["prompts"] = str(prompts)
    spec = write_spec(tmp_path, data)
    scripted(spec, out="first")
    improve = prompts / "improve.jinja"
    improve.write_text(improve.read_text().replace("Answer with the improved instruction only.",
                                                   "Answer with the new instruction only."))
    result = scripted(spec, out="second")
    calls = result.manifest["calls"]
    for stage in ("encode", "decode", "rubrics"):
        assert calls[f"{stage}/strong"]["calls"] == 0, stage
    assert calls["improve/strong"]["calls"] > 0


def test_identical_calls_in_flight_reach_the_model_once(tmp_path):
    spec = load_spec(write_spec(tmp_path, base_spec(tmp_path / "unused.jsonl")))
    backend = ScriptedBackend("scripted/strong", answer=lambda m: "hello", delay=0.05)
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend})
    messages = [{"role": "user", "content": "same question"}]
    params = {"temperature": 0.7, "max_tokens": 8}

    async def ask_five():
        return await asyncio.gather(*(hub.complete("strong", messages, params, CallContext("t", str(i)))
                                      for i in range(5)))

    entries = asyncio.run(ask_five())
    assert len(backend.calls) == 1
    assert {e["text"] for e in entries} == {"hello"}


def test_a_call_asked_again_in_a_run_is_shared_not_a_cache_hit(tmp_path):
    """A call that waited for an identical one in flight counted as a cache hit: a fresh run reported cache
    hits, and the calls behind its data (calls + cache hits) counted the one call twice. Each call counts
    once (a call made, or a cache hit the first time the run asks it); its repeats are `shared`, saving
    no dollars (the call's are counted already)."""
    data = base_spec(tmp_path / "unused.jsonl")
    data["models"]["strong"]["price"] = {"input_per_mtok": 1e6, "output_per_mtok": 0}  # $1 a prompt token
    spec = load_spec(write_spec(tmp_path, data))
    backend = ScriptedBackend("scripted/strong", answer=lambda m: "hello", delay=0.05)
    messages = [{"role": "user", "content": "same question"}]  # 2 prompt tokens: $2 a call
    params = {"temperature": 0.7, "max_tokens": 8}

    def asked(hub: ModelHub, times: int) -> dict:
        async def ask() -> None:
            await asyncio.gather(*(hub.complete("strong", messages, params, CallContext("t", str(i)))
                                   for i in range(times)))  # at once: all but the first wait for it
            await hub.complete("strong", messages, params, CallContext("t", "later"))  # once it is answered
        asyncio.run(ask())
        (row,) = hub.summary().values()
        return {key: row[key] for key in ("calls", "cache_hits", "shared", "cost_usd", "saved_usd")}

    live = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend})
    assert asked(live, 3) == {"calls": 1, "cache_hits": 0, "shared": 3, "cost_usd": 2.0, "saved_usd": 0.0}
    live.cache.flush()
    again = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend})  # the next run
    assert asked(again, 3) == {"calls": 0, "cache_hits": 1, "shared": 3, "cost_usd": 0.0, "saved_usd": 2.0}
    assert len(backend.calls) == 1


def test_a_failed_call_counts_a_failure_for_each_ask_as_its_replay_does(tmp_path):
    """Asks that waited for an identical call in flight which then failed counted nothing: the live run
    counted fewer failures than its replay, which fails every ask with the recorded error."""
    from codeclm.programs.errors import ModelCallError

    spec = load_spec(write_spec(tmp_path, base_spec(tmp_path / "unused.jsonl")))

    def refuse(messages):
        raise ModelCallError("scripted/strong: HTTP 400 bad request", retryable=False)

    messages, params = [{"role": "user", "content": "same question"}], {"temperature": 0.7, "max_tokens": 8}

    def failures(hub: ModelHub) -> int:
        async def ask() -> None:
            await asyncio.gather(*(hub.complete("strong", messages, params, CallContext("t", str(i)))
                                   for i in range(3)), return_exceptions=True)
            with pytest.raises(ModelCallError):
                await hub.complete("strong", messages, params, CallContext("t", "later"))
        asyncio.run(ask())
        (row,) = hub.summary().values()
        return row["failures"]

    backend = ScriptedBackend("scripted/strong", answer=refuse, delay=0.05)
    live = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend})
    assert failures(live) == 4 and len(backend.calls) == 1
    live.cache.flush()
    replay = ModelHub(spec.models, CallCache(tmp_path / "cache", mode="replay"), backends={"strong": backend})
    assert failures(replay) == 4 and len(backend.calls) == 1


def counted_writes(cache: CallCache) -> list[int]:
    """The size of each transaction the cache writes, from now on."""
    sizes: list[int] = []
    write = cache.store.set_many

    def counted(entries):
        entries = list(entries)
        sizes.append(len(entries))
        write(entries)

    cache.store.set_many = counted
    return sizes


def test_answers_are_written_in_batches_and_read_back_at_once(tmp_path):
    from codeclm.programs.models.cache import FLUSH_AFTER

    cache = CallCache(tmp_path / "cache")
    writes = counted_writes(cache)
    entry = {"text": "an answer", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    async def answers_back_together():
        for n in range(3):
            cache.put(f"key{n}", "m", entry)
        assert writes == [] and all(cache.get(f"key{n}")["text"] == "an answer" for n in range(3))
        await asyncio.sleep(FLUSH_AFTER * 3)
        assert writes == [3]

    asyncio.run(answers_back_together())
    cache.put("later", "m", entry)  # no event loop to wait on: written now
    assert writes == [3, 1]
    reader = CallCache(tmp_path / "cache", "replay")  # another connection sees them all, before close
    assert all(reader.get(k) is not None for k in ("key0", "key1", "key2", "later"))
    reader.close()
    cache.put("at close", "m", entry, strict=False)
    cache.close()
    assert writes == [3, 1, 1]


def test_a_batch_writes_the_rows_diskcache_writes_and_replaces_a_value_file(tmp_path):
    """The batch write is diskcache's row, read back by diskcache itself; an entry written again (a
    refresh) replaces the row, and the file a large value had is removed, as `Cache.set` does."""
    import diskcache

    entry = {"text": "a short answer", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    large = {**entry, "text": "x" * 100_000}  # past diskcache's 32 KiB: kept in a file of its own
    cache = CallCache(tmp_path / "cache")
    cache.put("short", "m", entry, strict=True)
    cache.put("large", "m", large, strict=True)
    cache.close()
    files = list((tmp_path / "cache").rglob("*.val"))
    assert len(files) == 1

    refresh = CallCache(tmp_path / "cache", "refresh")
    refresh.put("large", "m", entry)
    refresh.put("short", "m2", large)
    refresh.close()
    assert not files[0].exists() and len(list((tmp_path / "cache").rglob("*.val"))) == 1

    with diskcache.Cache(str(tmp_path / "cache")) as plain:  # diskcache's own reading and bookkeeping
        assert plain.get("large")["text"] == "a short answer" and plain.get("short")["text"] == "x" * 100_000
        assert len(plain) == 2 and plain.check() == []
    assert CallCache(tmp_path / "cache", "replay").stats()["per_model"] == {"m": (1, 0), "m2": (1, 0)}


def test_a_batch_that_cannot_be_written_leaves_no_value_file(tmp_path, monkeypatch):
    """A large answer's value file is made before its row; a write that fails (another writer holds
    the lock past the timeout) left the file behind with no row naming it."""
    import contextlib

    import diskcache

    cache = CallCache(tmp_path / "cache")

    @contextlib.contextmanager
    def locked(*args, **kwargs):
        raise diskcache.Timeout("database is locked")
        yield

    monkeypatch.setattr(cache.store.cache, "transact", locked)
    large = {"text": "x" * 100_000, "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    cache.put("large", "m", large)  # no event loop: written at once, and that fails (with a warning)
    assert cache.get("large") is None and not list((tmp_path / "cache").rglob("*.val"))


def test_calls_answered_together_are_written_together(tmp_path):
    spec = load_spec(write_spec(tmp_path, base_spec(tmp_path / "unused.jsonl")))
    backend = ScriptedBackend("scripted/strong", answer=lambda m: m[-1]["content"].upper(), delay=0.05)
    cache = CallCache(tmp_path / "cache")
    writes = counted_writes(cache)
    hub = ModelHub(spec.models, cache, backends={"strong": backend})

    async def ask_five():
        return await asyncio.gather(*(hub.complete("strong", [{"role": "user", "content": f"q{i}"}],
                                                   {"temperature": 0.7}, CallContext("t", str(i)))
                                      for i in range(5)))

    assert [e["text"] for e in asyncio.run(ask_five())] == [f"Q{i}" for i in range(5)]
    cache.close()  # the loop ended before the batch was due: closing writes it
    assert writes == [5]  # one transaction, not five


def test_sample_slots_keep_identical_pool_entries_distinct(tmp_path, scripted):
    """Two identical pool entries must not share one decode sample."""
    data = hand_written(base_spec(tmp_path / "unused.jsonl", pool_size=2),
                        [{"use_case": "code generation", "skills": ["python"]}])
    result = scripted(write_spec(tmp_path, data))
    assert result.manifest["calls"]["decode/strong"]["calls"] == 2


def test_dry_run_counts_bound_the_real_run(tmp_path, seeds_file, scripted):
    spec_path = write_spec(tmp_path, base_spec(seeds_file))

    def dry():
        spec = load_spec(spec_path)
        hub = ModelHub(spec.models, CallCache(scripted.cache_dir), backends=scripted.backends)
        return dry_run(spec, RunOptions(cache_dir=scripted.cache_dir), hub)

    before = dry()
    assert all(row["cached"] == 0 for row in before.values())
    assert before["encode/strong"]["upper_bound"] == 4
    assert scripted.calls() == 0
    real = scripted(spec_path).manifest["calls"]
    after = dry()
    for name, row in after.items():
        made = real.get(name, {}).get("calls", 0)
        assert made <= row["upper_bound"], name
        assert row["cached"] == made, name


def test_importing_a_bundle_twice_says_nothing_new_was_added(tmp_path, seeds_file, scripted):
    """The second import said "imported N calls" again, as if it had added them."""
    from click.testing import CliRunner
    from codeclm.cli import main

    first = scripted(write_spec(tmp_path, base_spec(seeds_file)), out="live")
    bundle = tmp_path / "b.jsonl.gz"
    count = export_bundle(first.out, bundle)
    args = ["cache", "import", str(bundle), "--cache-dir", str(tmp_path / "other")]
    once, twice = (CliRunner().invoke(main, args) for _ in range(2))
    assert once.exit_code == 0 and f"imported {count} calls: {count} new, 0 the cache held already" in once.output
    assert twice.exit_code == 0 and f"imported {count} calls: 0 new, {count} the cache held already" in twice.output


def test_export_import_bundle_replays_elsewhere(tmp_path, seeds_file, scripted):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")
    bundle = tmp_path / "bundle.jsonl.gz"
    exported = export_bundle(first.out, bundle)
    assert exported == first.manifest["totals"]["calls"]
    scripted.cache_dir = tmp_path / "colleague-cache"
    assert import_bundle(bundle, scripted.cache_dir) == (exported, exported)
    scripted.backends = {role: Unreachable(b.name) for role, b in scripted.backends.items()}
    second = scripted(spec, out="colleague", mode="replay")
    assert (first.out / "dataset.jsonl").read_bytes() == (second.out / "dataset.jsonl").read_bytes()


def test_cache_hits_skip_dspy_with_the_same_identity(tmp_path, seeds_file, scripted, monkeypatch):
    """The replay fast path must compute exactly the identity the DSPy path computed live."""
    import dspy

    spec = write_spec(tmp_path, base_spec(seeds_file))
    first = scripted(spec, out="live")

    async def no_dspy(self, **kwargs):
        raise AssertionError("a cached call went through dspy.Predict")

    monkeypatch.setattr(dspy.Predict, "acall", no_dspy)
    second = scripted(spec, out="replay", mode="replay")
    assert (first.out / "dataset.jsonl").read_bytes() == (second.out / "dataset.jsonl").read_bytes()


def test_requests_per_minute_spaces_calls(tmp_path):
    import time

    data = base_spec(tmp_path / "unused.jsonl")
    data["models"]["strong"]["rpm"] = 600  # one call every 0.1 s
    spec = load_spec(write_spec(tmp_path, data))
    backend = ScriptedBackend("scripted/strong", answer=lambda m: "ok")
    hub = ModelHub(spec.models, CallCache(tmp_path / "cache"), backends={"strong": backend})

    async def ask(n):
        return await asyncio.gather(*(hub.complete("strong", [{"role": "user", "content": f"q{i}"}],
                                                   {"temperature": 0.7}, CallContext("t", str(i)))
                                      for i in range(n)))

    started = time.monotonic()
    asyncio.run(ask(5))
    assert time.monotonic() - started >= 0.39
    assert len(backend.calls) == 5


def test_call_keys_are_the_sha256_of_the_identity_as_sorted_json():
    """Keys are composed from the parts' JSON; they must stay what caches already hold."""
    import hashlib

    from codeclm.programs.models.cache import CallIdentity

    def reference(model, messages, params, slot):
        identity = {"model": model, "messages": [[m["role"], m["content"]] for m in messages],
                    "params": sorted(params.items()), "slot": slot}
        text = json.dumps(identity, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    cases = [
        ("hosted_vllm/strong", [{"role": "user", "content": "Write a haiku."}], {"temperature": 0.7}, 0),
        ("openai/gpt-4o", [{"role": "system", "content": "Ünïcødé \"quotes\" \\ and\nlines \ud800"},
                           {"role": "user", "content": "日本語 🎉"}],
         {"max_tokens": 512, "top_p": 0.95, "response_format": {"type": "json_object", "b": [1, 2.5, None]}}, 3),
        ("m", [], {}, 12),
    ]
    for model, messages, params, slot in cases:
        identity = CallIdentity.of(model, messages, params, slot)
        assert identity.key == reference(model, messages, params, slot)
    # pinned: the key this call had before keys were composed (caches on disk hold such keys)
    assert CallIdentity.of(*cases[0]).key == "f5d947ab2f1344b8a39ae507a251c55af389f9d2b5e0675cfb544e31c7051746"
    # equal parameters json writes apart, one after another (the key's text after the messages is remembered)
    for params in ({"t": 1}, {"t": 1.0}, {"t": True}, {"t": 0.0}, {"t": -0.0}, {"t": 1}, {"t": -0.0}, {"t": [1]}):
        for slot in (1, True, 1, 1.0):
            assert CallIdentity.of("m", [], params, slot).key == reference("m", [], params, slot)


def test_message_strings_are_encoded_as_json_encodes_them():
    """The key's message strings go through orjson: its text must be json's for every code point."""
    from codeclm.programs.models.cache import _string_json

    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert _string_json(every) == json.dumps(every, ensure_ascii=False)
    for text in ("", "\x00\x1f\x7f", "\ud800 lone", "a\udfffb"):  # lone surrogates: json's own encoding
        assert _string_json(text) == json.dumps(text, ensure_ascii=False)
    for other in ([{"type": "text", "text": "x"}], 2**70, None, 1.5):  # not a str: json's own, keys sorted
        assert _string_json(other) == json.dumps(other, ensure_ascii=False, sort_keys=True)


def test_a_run_on_a_callers_hub_leaves_every_answer_on_disk(tmp_path, seeds_file, scripted, monkeypatch):
    """The caller may never close its cache: the last batch is written when the run ends."""
    from codeclm.programs.engine.run import run_spec
    from codeclm.programs.models import cache as cache_module

    monkeypatch.setattr(cache_module, "FLUSH_AFTER", 60.0)  # no batch falls due during the run
    spec = load_spec(write_spec(tmp_path, base_spec(seeds_file)))
    cache = CallCache(tmp_path / "cache")
    run_spec(spec, RunOptions(out=tmp_path / "run"), ModelHub(spec.models, cache, backends=scripted.backends))
    reader = CallCache(tmp_path / "cache", "replay")
    assert len(reader.store) == scripted.calls() > 0  # every call made is there, the cache still open
    reader.close()
    cache.close()


def test_a_full_disk_is_not_called_a_damaged_cache():
    """SQLite says 'database or disk is full': the message said the cache was damaged and to move it aside."""
    import sqlite3

    from codeclm.programs.models.cache import _damaged_db

    message = str(_damaged_db(Path("/x/cache.db"), sqlite3.OperationalError("database or disk is full")))
    assert "the disk is full" in message and "damaged" not in message and "free space" in message


def test_a_refresh_runs_failed_call_replaces_the_answer_so_its_replay_fails_it_too(tmp_path, seeds_file, scripted):
    """A call that failed in a --refresh run left the earlier run's answer in place, and a replay of the
    refresh run served that answer: not the run it replayed."""
    from codeclm.programs.errors import ModelCallError

    spec = write_spec(tmp_path, base_spec(seeds_file))
    scripted(spec, out="first")
    answer = scripted.backends["strong"].answer

    def failing(messages):
        if "Use case" in messages[-1]["content"] or "use case" in messages[-1]["content"]:
            raise ModelCallError("scripted/strong: HTTP 500 down", retryable=False)
        return answer(messages)

    scripted.backends["strong"].answer = failing
    refreshed = scripted(spec, out="refresh", mode="refresh")
    assert (refreshed.out / "failures.jsonl").read_text().count("HTTP 500 down")
    replayed = scripted(spec, out="replay", mode="replay", recorded_run=refreshed.out)
    for name in ("dataset.jsonl", "failures.jsonl"):
        assert (replayed.out / name).read_bytes() == (refreshed.out / name).read_bytes(), name

"""Cost before spending: the dry run's estimate against what a run used, and a budget that stops a
run cleanly and resumes from the cache (issue 11, part 3)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.errors import EXIT_BUDGET, SpecErrors
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.models.budget import Budget, BudgetTracker, Limits
from codeclm.programs.models.pricing import cost_of, model_price
from conftest import base_spec, write_spec

PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}  # $0.001 / $0.002 a token: runs cost dollars


def fake_spec(tmp_path, seeds_file, server, **extra):
    data = base_spec(seeds_file, max_iterations=2)
    data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url, "max_tokens": 64,
                             **extra.get("model", {})} for role in ("strong", "target")}
    if "budget" in extra:
        data["budget"] = extra["budget"]
    return str(write_spec(tmp_path, data, extra.get("name", "spec.yaml")))


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_dry_run_estimate_is_within_2x_of_the_tokens_a_run_used(tmp_path, seeds_file):
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        spec = fake_spec(tmp_path, seeds_file, server, model={"price": PRICE})
        cache = tmp_path / "cache"
        dry = invoke("run", spec, "--dry-run", "--json", "--cache-dir", cache)
        assert dry.exit_code == 0, dry.output
        before = server.completions
        ran = invoke("run", spec, "-q", "--no-report", "--out", tmp_path / "run", "--cache-dir", cache)
        assert ran.exit_code == 0, ran.output
    assert before == 0  # the estimate made no call
    estimate = json.loads(dry.output)
    totals = json.loads((tmp_path / "run" / "manifest.json").read_text())["totals"]
    estimated = estimate["total"]["input_tokens"] + estimate["total"]["output_tokens"]
    used = totals["prompt_tokens"] + totals["completion_tokens"]
    assert used / 2 <= estimated <= used * 2, (estimated, used)
    assert estimate["total"]["calls_upper_bound"] >= totals["calls"]
    assert used * 0.001 / 2 <= estimate["total"]["usd"] <= estimate["total"]["usd_max"]
    assert abs(totals["cost_usd"] - (totals["prompt_tokens"] * 0.001 + totals["completion_tokens"] * 0.002)) < 1e-6
    rows = {f"{r['node']}/{r['role']}": r for r in estimate["rows"]}
    assert rows["encode/strong"]["input_from"] == "4 prompts"  # the seeds' real prompts
    assert rows["judge/strong"]["input_from"] == "sample inputs"  # not reached by the walk on an empty cache
    assert rows["judge/strong"]["price_from"] == "spec price"



def test_the_dry_run_compares_the_estimate_with_the_budget(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["models"]["strong"] = {"model": "openai/gpt-4o-mini", "max_tokens": 64}
    data["budget"] = {"usd": 0.000001, "per_model": {"strong": {"tokens": 10**9}}}
    shown = invoke("run", write_spec(tmp_path, data), "--dry-run", "--cache-dir", tmp_path / "cache")
    assert shown.exit_code == 0, shown.output
    assert "budget: $0.0000 (estimate $" in shown.output and "a run would likely stop at it (exit 4)" in shown.output
    data["budget"] = {"tokens": 10**9}
    shown = invoke("run", write_spec(tmp_path, data), "--dry-run", "--cache-dir", tmp_path / "cache")
    assert "budget: 1,000,000,000 tokens (estimate" in shown.output and ": fits" in shown.output
    as_json = invoke("run", write_spec(tmp_path, data), "--json")
    assert as_json.exit_code == 2 and "--json prints the dry run's estimate" in as_json.output
    ray = invoke("run", write_spec(tmp_path, data), "--executor", "ray")
    assert ray.exit_code == 2 and "not yet on Ray" in ray.output


def test_dry_run_text_says_where_prices_come_from(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["models"]["strong"] = {"model": "openai/gpt-4o-mini", "max_tokens": 64}
    data["models"]["target"] = {"model": "openai/no-such-model-anywhere", "max_tokens": 32}
    shown = invoke("run", write_spec(tmp_path, data), "--dry-run", "--cache-dir", tmp_path / "cache")
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line for line in shown.output.splitlines() if line.strip()}
    assert "LiteLLM cost map" in lines["encode/strong"] and "$" in lines["encode/strong"]
    assert "no price" in lines["answer_target/target"]
    assert "no price for openai/no-such-model-anywhere" in shown.output
    assert "tiktoken cl100k_base" in shown.output or "characters / 4" in shown.output
    local = invoke("run", write_spec(tmp_path, base_spec(seeds_file), "local.yaml"), "--dry-run",
                   "--cache-dir", tmp_path / "cache")
    assert "$0 (self)" in local.output and "self-hosted: $0" in local.output


def test_a_budget_stops_the_run_writes_the_data_so_far_and_resumes(tmp_path, seeds_file):
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        full_spec = fake_spec(tmp_path, seeds_file, server, model={"price": PRICE}, name="full.yaml")
        full = invoke("run", full_spec, "-q", "--no-report", "--out", tmp_path / "full", "--cache-dir",
                      tmp_path / "full-cache")
        assert full.exit_code == 0, full.output
        all_calls = server.completions
        full_cost = json.loads((tmp_path / "full" / "manifest.json").read_text())["totals"]["cost_usd"]

        # One call at a time: which records finish before the budget stops the run then does not hang on the
        # machine's scheduling (on a loaded 2-core CI machine, concurrent calls sometimes left no finished row).
        spec = fake_spec(tmp_path, seeds_file, server, model={"price": PRICE, "concurrency": 1},
                         budget={"usd": round(full_cost / 3, 2)})
        cache, out = tmp_path / "cache", tmp_path / "run"
        before = server.completions
        stopped = invoke("run", spec, "-q", "--no-report", "--out", out, "--cache-dir", cache)
        first_calls = server.completions - before
        assert stopped.exit_code == EXIT_BUDGET, stopped.output
        assert "stopped: budget reached (budget.usd" in stopped.output and "--budget-usd" in stopped.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["stopped"] == "budget"
        budget = manifest["budget"]
        assert budget["limits"] == {"usd": round(full_cost / 3, 2)}
        assert budget["spent"]["usd"] >= budget["limits"]["usd"] and budget["reached"].startswith("budget.usd")
        assert budget["spent"]["usd"] == pytest.approx(manifest["totals"]["cost_usd"])
        assert 0 < first_calls < all_calls and manifest["totals"]["calls"] == first_calls
        failures = (out / "failures.jsonl").read_text()
        assert "not called: budget reached" in failures  # the records the budget cut short, and why
        assert (out / "metadata.jsonl").is_file()  # the data so far
        assert (out / "dataset.jsonl").read_text().count("\n") >= 1, "no finished row to export"
        inspected = invoke("inspect", out)
        assert inspected.exit_code == 0 and "stopped: budget reached (budget.usd" in inspected.output
        page = invoke("report", out, "--out", tmp_path / "stopped.html")
        assert page.exit_code == 0 and "stopped: budget reached" in (tmp_path / "stopped.html").read_text()
        if importlib.util.find_spec("pyarrow"):  # the export extra
            exported = invoke("export", out, tmp_path / "export", "--no-cache-bundle")
            assert exported.exit_code == 0 and "stopped by its budget" in exported.output
        replayed = invoke("replay", out, "--out", tmp_path / "replayed", "--cache-dir", cache)
        assert replayed.exit_code == 3 and "budget stopped it before this call was made" in replayed.output, \
            replayed.output  # it blamed "the sample slot (identical metadata entries)"

        before = server.completions
        resumed = invoke("run", spec, "-q", "--no-report", "--out", out, "--cache-dir", cache, "--budget-usd", 1000)
        second_calls = server.completions - before
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stopped" not in manifest and manifest["budget"]["limits"] == {"usd": 1000.0}
    assert manifest["totals"]["cache_hits"] >= first_calls  # what the first run bought is free now
    assert first_calls + second_calls == all_calls  # only the missing calls were made
    assert (out / "dataset.jsonl").read_bytes() == (tmp_path / "full" / "dataset.jsonl").read_bytes()


def test_a_token_budget_per_model_stops_the_run(tmp_path, seeds_file, scripted):
    data = base_spec(seeds_file)
    data["budget"] = {"per_model": {"target": {"tokens": 1}}}
    result = scripted(write_spec(tmp_path, data), concurrency=1)
    assert result.manifest["stopped"] == "budget"
    assert result.manifest["calls"]["answer_target/target"]["calls"] == 1  # no target call started after the first
    assert result.manifest["budget"]["reached"].startswith("budget.per_model.target.tokens 1:")
    assert result.manifest["budget"]["calls_not_made"] > 0
    again = scripted(write_spec(tmp_path, data), overrides=["budget.per_model.target.tokens=1000000"])
    assert "stopped" not in again.manifest and again.counts.get("kept", 0) > 0


@pytest.mark.parametrize(("budget", "message"), [
    ("{usd: -1}", "budget.usd must be a number of dollars above 0"),
    ("{tokens: 1.5}", "budget.tokens must be a whole number of tokens"),
    ("{dollars: 5}", "unknown key 'dollars' in budget"),
    ("{per_model: {nobody: {usd: 1}}}", "budget.per_model names 'nobody'"),
    ("{}", "budget sets no limit"),
    ("5", "budget must be a mapping"),
])
def test_a_broken_budget_is_refused_at_load_with_its_line(tmp_path, seeds_file, budget, message):
    spec = write_spec(tmp_path, base_spec(seeds_file))
    spec.write_text(spec.read_text() + f"budget: {budget}\n")
    line = len(spec.read_text().splitlines())
    with pytest.raises(SpecErrors) as caught:
        load_spec(spec)
    assert message in str(caught.value) and f"spec.yaml:{line}" in str(caught.value)
    shown = invoke("validate", spec)
    assert shown.exit_code == 2 and message in shown.output and "fix:" in shown.output


def test_a_dollar_budget_needs_a_price_for_every_model(tmp_path, seeds_file):
    data = base_spec(seeds_file)
    data["models"]["strong"] = {"model": "openai/no-such-model-anywhere"}
    data["budget"] = {"usd": 5}
    with pytest.raises(SpecErrors, match="cannot count model 'strong'.*\n  fix: .*models.strong.price"):
        load_spec(write_spec(tmp_path, data))
    data["models"]["strong"]["price"] = {"input_per_mtok": 0.15, "output_per_mtok": 0.6}
    assert load_spec(write_spec(tmp_path, data)).budget.total.usd == 5.0
    data["models"]["strong"]["price"] = {"input_per_mtok": "cheap"}
    with pytest.raises(SpecErrors, match="input_per_mtok must be a non-negative number"):
        load_spec(write_spec(tmp_path, data))
    bad = invoke("run", write_spec(tmp_path, base_spec(seeds_file)), "--budget-usd", "0")
    assert bad.exit_code == 2
    for nan in (".nan", ".inf"):  # a NaN price spent "$nan", never reached the budget, and put NaN in the manifest
        data["models"]["strong"]["price"] = {"input_per_mtok": 1, "output_per_mtok": nan}
        spec = write_spec(tmp_path, data)
        spec.write_text(spec.read_text().replace(f"'{nan}'", nan))  # YAML's NaN and infinity, not the text
        with pytest.raises(SpecErrors, match="output_per_mtok must be a non-negative number of dollars, got"):
            load_spec(spec)


def test_a_small_or_large_budget_usd_is_read_as_a_number(tmp_path, seeds_file):
    """`--budget-usd 0.00005` was passed on as `budget.usd=5e-05`, which YAML reads as text: refused."""
    data = base_spec(seeds_file)
    data["models"]["strong"] = {"model": "openai/gpt-4o-mini", "max_tokens": 64}
    data["models"]["target"]["price"] = {"input_per_mtok": 0, "output_per_mtok": 0}
    for usd, shown in (("0.00005", "budget: $0.0001"), ("1e16", "budget: $10,000,000,000,000,000.0000")):
        done = invoke("run", write_spec(tmp_path, data), "--dry-run", "--budget-usd", usd,
                      "--cache-dir", tmp_path / "cache")
        assert done.exit_code == 0 and shown in done.output, done.output


def test_prices_and_the_tracker():
    assert model_price("local", None) == ((0.0, 0.0), "self-hosted: $0")
    assert model_price("hosted_vllm/x", {"input_per_mtok": 2}) == ((2e-6, 0.0), "spec price")
    assert model_price("openai/no-such-model-anywhere") == (None, "no price")
    assert model_price("openai/gpt-4o-mini")[1] == "LiteLLM cost map"
    assert cost_of("hosted_vllm/x", 1000, 500, {"input_per_mtok": 1, "output_per_mtok": 2}) == pytest.approx(0.002)
    tracker = BudgetTracker(Budget(Limits(usd=1.0), {"strong": Limits(tokens=100)}))
    tracker.charge("target", 500, 0.5)
    assert tracker.reached is None and tracker.refuse("strong") is None
    tracker.charge("strong", 100, 0.1)
    assert tracker.reached == "budget.per_model.strong.tokens 100: 100 tokens spent"
    assert tracker.refuse("target").startswith("not called: budget reached")
    assert tracker.report()["calls_not_made"] == 1 and tracker.report()["spent"]["usd"] == pytest.approx(0.6)


def _stop_message(result, capsys) -> str:
    """What the CLI says of a run its budget stopped (it exits 4)."""
    with pytest.raises(SystemExit) as stopped:
        cli._budget_stop(result)
    assert stopped.value.code == EXIT_BUDGET
    return capsys.readouterr().err


def test_a_refresh_run_stopped_by_its_budget_says_to_resume_without_refresh(tmp_path, seeds_file, scripted, capsys):
    """Rerunning with --refresh, as the stop advised, made every call again instead of resuming."""
    data = base_spec(seeds_file)
    data["budget"] = {"tokens": 50}
    refreshed = _stop_message(scripted(write_spec(tmp_path, data), mode="refresh", concurrency=1), capsys)
    assert "Rerun without --refresh and with a higher budget" in refreshed
    live = _stop_message(scripted(write_spec(tmp_path, data), out="live", concurrency=1), capsys)
    assert "Rerun with a higher budget" in live and "--refresh" not in live


def test_a_per_model_budget_stop_says_to_raise_that_limit_and_shows_its_spend(tmp_path, seeds_file, scripted, capsys):
    """It said to raise --budget-usd, --budget-tokens or budget.usd, none of which had stopped the run."""
    data = base_spec(seeds_file)
    data["budget"] = {"tokens": 10**9, "per_model": {"target": {"tokens": 1}}}
    result = scripted(write_spec(tmp_path, data), concurrency=1)
    assert result.manifest["budget"]["reached_limit"] == "budget.per_model.target.tokens"
    said = _stop_message(result, capsys)
    target = result.manifest["budget"]["spent"]["per_model"]["target"]
    assert f"(target: {target['tokens']:,} tokens, $0.0000)" in said
    assert "(--set budget.per_model.target.tokens=...) to resume" in said and "--budget-tokens" not in said


def test_a_budget_stop_names_the_mix_it_kept_from_starting(tmp_path, seeds_file, scripted, capsys):
    """The seed's one call spent the budget, then the augment mix did not start: the stop said '0 calls not
    started' and sent the user to an empty failures.jsonl."""
    seeds_file.write_text(seeds_file.read_text().splitlines()[0] + "\n")
    data = base_spec(seeds_file)
    data["budget"] = {"tokens": 1}
    result = scripted(write_spec(tmp_path, data), concurrency=1)
    assert result.manifest["budget"]["nodes_not_started"] == ["augment"]
    assert result.manifest["budget"]["calls_not_made"] == 0 and not (result.out / "failures.jsonl").read_text()
    said = _stop_message(result, capsys)
    assert "0 calls not started; nodes not started: augment and those after them (a mix or dedup" in said
    assert "failures.jsonl" not in said
    seeds_file.write_text(seeds_file.read_text() + json.dumps({"id": "s1", "instruction": "Say hello."}) + "\n")
    scripted.cache_dir = tmp_path / "empty-cache"  # a second seed: its call is refused, its record cut short
    said = _stop_message(scripted(write_spec(tmp_path, data), out="two", concurrency=1), capsys)
    assert "1 calls not started" in said and "the 1 record(s) the budget cut short are in failures.jsonl" in said


def test_the_dry_run_after_a_finished_run_has_nothing_to_call(tmp_path, seeds_file, scripted):
    """It showed the graph's upper bound less the cached calls (a loop counted at its max) as calls to make."""
    from codeclm.programs.engine.estimate import estimate
    from codeclm.programs.engine.run import RunOptions
    from codeclm.programs.models.cache import CallCache
    from codeclm.programs.models.hub import ModelHub

    spec = write_spec(tmp_path, base_spec(seeds_file))

    def dry() -> dict:
        loaded = load_spec(spec)
        hub = ModelHub(loaded.models, CallCache(scripted.cache_dir), backends=scripted.backends)
        return estimate(loaded, RunOptions(cache_dir=scripted.cache_dir), hub).as_dict()["total"]

    empty = dry()
    assert empty["cached"] == 0 and empty["to_call"] == empty["calls_upper_bound"]
    scripted(spec)
    total = dry()
    assert total["calls_upper_bound"] > total["cached"] == scripted.calls()  # the loop stopped before its max
    assert total["to_call"] == 0 and total["input_tokens"] == total["output_tokens"] == 0

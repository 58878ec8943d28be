"""Keys come from the environment only: a credential anywhere else in a model's settings is
refused at load (exit 2, file:line, the fix), and no key value reaches any file a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from codeclm.cli import main
from codeclm.programs.errors import EXIT_USAGE, SpecErrors
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.redact import MASK, credential_keys, redact, redact_text, url_credentials
from conftest import ScriptedBackend, base_spec, write_spec
from fake_openai_server import answer_text

KEY = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"


def spec_with(tmp_path: Path, seeds_file: Path, **strong: object) -> Path:
    data = base_spec(seeds_file)
    data["models"]["strong"].update(strong)
    return write_spec(tmp_path, data)


def validate(spec: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", str(spec)])
    return result.exit_code, result.output


def line_of(spec: Path, text: str) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize(("extra", "where"), [
    ({"api_key": KEY}, "api_key"),
    ({"API_KEY": "plain-words-but-a-key"}, "API_KEY"),
    ({"Token": "abc"}, "Token"),
    ({"client_secret": "abc"}, "client_secret"),
    ({"password": "hunter2"}, "password"),
    ({"headers": {"Authorization": "Bearer abcdefghijklmnop"}}, "Authorization"),
    ({"extra_headers": {"x-api-key": "abc"}}, "x-api-key"),
    ({"metadata": {"deep": [{"access_token": "abc"}]}}, "access_token"),
    ({"stop": [KEY]}, "sk-proj-"),  # a value shaped like a key, whatever its name: its own line
], ids=["api_key", "upper-case", "token", "client-secret", "password", "bearer-header", "x-api-key", "nested",
        "key-shaped-value"])
def test_a_key_in_extra_is_refused_at_load(tmp_path: Path, seeds_file: Path, extra: dict, where: str) -> None:
    spec = spec_with(tmp_path, seeds_file, extra=extra)
    code, output = validate(spec)
    assert code == EXIT_USAGE, output
    assert "Traceback" not in output
    assert f"{spec}:{line_of(spec, where)}:" in output  # file:line of the offending key
    assert "api_key_env" in output and "never go in a spec" in output
    assert KEY not in output and "hunter2" not in output and "abcdefghijklmnop" not in output


def test_ordinary_decoding_parameters_in_extra_pass(tmp_path: Path, seeds_file: Path) -> None:
    extra = {"max_tokens": 10, "max_completion_tokens": 10, "stop_token_ids": [2], "top_k": 40,
             "prompt_cache_key": "run-1", "skip_special_tokens": True, "logit_bias": {"50256": -100}}
    spec = load_spec(spec_with(tmp_path, seeds_file, extra=extra))
    assert spec.models["strong"].extra == extra


@pytest.mark.parametrize("api_base", [
    "https://user:secretpass@example.com/v1",
    "https://secretpass@example.com/v1",
    "https://example.com/v1?api_key=secretpass",
    "https://example.com/v1?key=secretpass",
], ids=["user-password", "user-only", "query-api-key", "query-key"])
def test_credentials_in_api_base_are_refused(tmp_path: Path, seeds_file: Path, api_base: str) -> None:
    """Refused rather than stripped: stripping would send a request the user did not write, and the
    key would stay in a spec that gets shared; the fix is api_key_env."""
    spec = spec_with(tmp_path, seeds_file, model="hosted_vllm/m", api_base=api_base)
    code, output = validate(spec)
    assert code == EXIT_USAGE, output
    assert f"{spec}:{line_of(spec, 'api_base')}:" in output and "api_key_env" in output
    assert "secretpass" not in output


def test_a_key_set_from_the_command_line_is_refused_too(tmp_path: Path, seeds_file: Path) -> None:
    spec = spec_with(tmp_path, seeds_file)
    with pytest.raises(SpecErrors) as failure:
        load_spec(spec, [f"models.strong.extra.api_key={KEY}"])
    assert failure.value.exit_code == EXIT_USAGE and KEY not in str(failure.value)


def test_api_key_env_must_name_a_variable(tmp_path: Path, seeds_file: Path) -> None:
    code, output = validate(spec_with(tmp_path, seeds_file, api_key_env=KEY))
    assert code == EXIT_USAGE and "api_key_env names the environment variable" in output
    assert KEY not in output


def test_no_key_value_reaches_any_file_of_a_run(tmp_path: Path, seeds_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Models that echo the key (and a key-shaped string in a seed and in the spec): every file under
    the run folder, the manifest included, holds the mask, never the values."""
    from codeclm.programs.engine.run import RunOptions, run_spec
    from codeclm.programs.models.cache import CallCache
    from codeclm.programs.models.hub import ModelHub

    env_key = "my-own-gateway-key-0123456789"  # no provider shape: masked because api_key_env names it
    monkeypatch.setenv("GATEWAY_CREDS_VAR", env_key)
    other = "AIza" + "B" * 35  # a Google-shaped key in a seed
    seeds_file.write_text(seeds_file.read_text() + json.dumps({"id": "leak", "instruction": f"Use {other} now"}) + "\n")
    data = base_spec(seeds_file)
    data["models"]["strong"]["api_key_env"] = "GATEWAY_CREDS_VAR"
    data["description"] = f"a spec that mentions {KEY}"
    spec = load_spec(write_spec(tmp_path, data))

    def leaky(name: str):
        return ScriptedBackend(name, lambda messages: f"{answer_text(messages, name)} {env_key} {KEY}")

    backends = {"strong": leaky("scripted/strong"), "target": leaky("scripted/target")}
    cache = CallCache(tmp_path / "cache", "live")
    hub = ModelHub(spec.models, cache, backends=backends)
    hub.backoff_base = 0.01
    try:
        result = run_spec(spec, RunOptions(out=tmp_path / "run", cache_dir=tmp_path / "cache"), hub)
    finally:
        cache.close()
    files = [p for p in result.out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"dataset.jsonl", "instructions.jsonl", "metadata.jsonl", "manifest.json"}
    assert (result.out / "dataset.jsonl").read_text(), "the run keeps some pairs"
    for path in files:
        text = path.read_text()
        for secret in (env_key, KEY, other):
            assert secret not in text, f"{secret} in {path.name}"
    assert MASK in (result.out / "dataset.jsonl").read_text() and MASK in (result.out / "manifest.json").read_text()
    json.loads((result.out / "manifest.json").read_text())
    for line in (result.out / "instructions.jsonl").read_text().splitlines():
        json.loads(line)  # masking keeps every line JSON


def test_redaction_helpers() -> None:
    assert redact_text(json.dumps({"a": f"x {KEY} y"})) == json.dumps({"a": f"x {MASK} y"})
    assert redact({"u": "https://bob:pw123@h/v1", "h": "Bearer abcdefghijklmnop", "n": 3}) == \
        {"u": f"https://{MASK}@h/v1", "h": f"Bearer {MASK}", "n": 3}
    ordinary = "risk-assessment of the task-list, mail me at a@b.c, Action: add a SWOT analysis"
    assert redact_text(ordinary) == ordinary
    assert url_credentials("http://127.0.0.1:8000/v1") is None
    assert credential_keys({"max_tokens": 5, "keys_per_entry": 2}) == []
    assert yaml.safe_dump(redact({"k": KEY})) == f"k: '{MASK}'\n"

"""Keys come from the environment only: a credential anywhere else in a model's settings is
refused at load (exit 2, file:line, the fix), and no key value reaches any file a run writes."""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from codeclm.cli import main
from codeclm.programs.errors import EXIT_USAGE, SpecErrors
from codeclm.programs.lang.spec import load_spec
from codeclm.programs.redact import (
    KEY_PATTERNS,
    MASK,
    _forms,
    _mask,
    credential_keys,
    redact,
    redact_text,
    url_credentials,
)
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


# -- masking is the plain algorithm, only faster ----------------------------------------------

def reference_mask(text: str, forms: tuple[str, ...], skip: int | None = None) -> str:
    """What `_mask` must give: each secret's forms replaced, then each pattern of KEY_PATTERNS, in
    order, over the whole text (`skip`: without that row, to show the corpus would notice)."""
    for form in forms:
        text = text.replace(form, MASK)
    for row, (_, pattern) in enumerate(KEY_PATTERNS):
        if row != skip:
            text = re.sub(pattern, MASK, text)
    return text


def key_shapes(rng: random.Random) -> list[str]:
    """One of each shape of KEY_PATTERNS, and near misses (a character short, a wrong letter, no
    word boundary, lower case)."""
    def run(chars: str, n: int) -> str:
        return "".join(rng.choice(chars) for _ in range(n))
    alnum, upper = string.ascii_letters + string.digits, string.ascii_uppercase + string.digits
    n = rng.choice((-1, 0, 0, 1, 9))  # -1: one short of the shortest key
    shapes = [
        "sk-" + rng.choice(("", "proj-", "ant-", "or-")) + run(alnum + "_-", 16 + n), "task-" + run(alnum, 20),
        "AIza" + run(alnum + "_-", 35 + min(n, 0)), "AIzb" + run(alnum, 35),
        "gh" + rng.choice("pousrx") + "_" + run(alnum, 30 + n), "github_pat_" + run(alnum + "_", 30 + n),
        "hf_" + run(alnum, 30 + n), "gsk_" + run(alnum, 20 + n), "r8_" + run(alnum, 30 + n),
        "xox" + rng.choice("abposrz") + "-" + run(alnum + "-", 10 + n),
        rng.choice(("AKIA", "ASIA", "AKIB", "akia")) + run(upper, 16 + min(n, 1)),
        rng.choice(("Bearer ", "bearer ", "BEARER ", "clearer ", "Bearer  ")) + run(alnum + "._~+/-", 12 + n)
        + rng.choice(("", "=", "==")),
        rng.choice(("https://", "http://", "ftp:/", "")) + rng.choice(("bob", "a.b", "u-1")) + rng.choice((":", ""))
        + rng.choice(("pw123", "p@ss", "x y")) + rng.choice(("@", "@@", "")) + "host.example/v1",
        "mail a@b.c", "@decorator", "://",
    ]
    rng.shuffle(shapes)
    return shapes[:rng.randint(0, 4)]


def corpus_text(rng: random.Random, secrets: tuple[str, ...]) -> str:
    words = ("the answer is clear", "refund", "order", "A customer", "Bearer", "risk-free", "é", "日本",
             "max_tokens", "hosted_vllm/strong", "a" * 64, f"{rng.getrandbits(256):064x}")
    json_bits = ('{"', '": "', '", "', '"}', "[", "]", ", ", ": ", "\\n", '\\"', "\n", " ", "", "\t", "/")
    pieces = [rng.choice(words) for _ in range(rng.randint(0, 12))] + key_shapes(rng) + key_shapes(rng)
    pieces += [rng.choice(secrets) for _ in range(rng.randint(0, 2))] if secrets else []
    rng.shuffle(pieces)
    text = "".join(piece + rng.choice(json_bits) for piece in pieces)
    return json.dumps({"text": text}, ensure_ascii=False) if rng.random() < 0.5 else text


def test_masking_gives_what_the_plain_algorithm_gives() -> None:
    """Over random JSON-ish text with every key shape (valid and near misses) and secrets with
    characters JSON escapes: `_mask` equals the reference; and every row of KEY_PATTERNS masks
    something the others leave, so a row left out would be noticed."""
    rng = random.Random(20260522)
    secret_sets = [(), ("my-own-gateway-key-0123456789",),
                   ('quo"te\\back-slash-secret', "sk-also-a-provider-key-12345678")]
    noticed = set()
    for i in range(3000):
        forms = _forms(secret_sets[i % len(secret_sets)])
        text = corpus_text(rng, secret_sets[i % len(secret_sets)])
        expected = reference_mask(text, forms)
        assert _mask(text, forms) == expected, text
        noticed |= {row for row in range(len(KEY_PATTERNS)) if reference_mask(text, forms, skip=row) != expected}
    assert noticed == set(range(len(KEY_PATTERNS)))


def test_redact_text_masks_registered_secrets_like_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = 'a "quoted" secret\\with-a-backslash'
    monkeypatch.setenv("SOME_SERVICE_TOKEN", secret)
    rng = random.Random(7)
    for _ in range(300):
        text = corpus_text(rng, (secret,))
        assert redact_text(text) == reference_mask(text, _forms((secret,)))
    assert redact_text(json.dumps({"k": secret})) == json.dumps({"k": MASK})


def test_a_secret_variable_replacing_another_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """As many variables as before, one of them new: its value is still found."""
    monkeypatch.setenv("FIRST_API_KEY", "first-secret-value-1234")
    assert "[redacted]" in redact_text("has first-secret-value-1234")
    monkeypatch.delenv("FIRST_API_KEY")
    monkeypatch.setenv("SECOND_API_KEY", "second-secret-value-5678")
    assert redact_text("has second-secret-value-5678") == f"has {MASK}"

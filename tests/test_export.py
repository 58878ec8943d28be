"""`codeclm export`: the folder `datasets.load_dataset` takes as is, its card, its pipeline/ folder (a replay from
it alone), the folders it refuses, and the push to the Hub (huggingface_hub mocked: no network here)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from codeclm import cli
from codeclm.programs.artifacts.export import MARKER, PARQUET, ExportOptions, pipeline_files, render_card, size_category
from conftest import REPO, SEEDS, ScriptedRun, base_spec, write_spec

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

datasets = pytest.importorskip("datasets")
huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A finished run over HTTP against the fake OpenAI-compatible server, and its cache."""
    from fake_openai_server import FakeOpenAIServer

    tmp = tmp_path_factory.mktemp("export-run")
    seeds = tmp / "seeds[v1].jsonl"  # brackets: an upload's allow patterns must match the name literally
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": s}) + "\n" for i, s in enumerate(SEEDS)))
    with FakeOpenAIServer() as server:
        url = server.url
        data = base_spec(seeds)
        data["description"] = "Tiny test data."
        data["models"] = {role: {"model": f"hosted_vllm/{role}", "api_base": server.url, "temperature": 0.5}
                          for role in ("strong", "target")}
        spec = write_spec(tmp, data)
        ran = CliRunner().invoke(cli.main, ["run", str(spec), "-q", "--out", str(tmp / "run"),
                                            "--cache-dir", str(tmp / "cache")])
    assert ran.exit_code == 0, ran.output
    return {"run": tmp / "run", "cache": tmp / "cache", "url": url}


def export(*args: object):
    return CliRunner().invoke(cli.main, ["export", *map(str, args)])


def card(dest: Path) -> tuple[dict, str]:
    text = (dest / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_load_dataset_reads_the_export_as_the_run_wrote_it(run, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    dest = tmp_path / "export"
    done = export(run["run"], dest, "--license", "apache-2.0")
    assert done.exit_code == 0, done.output
    assert done.output.startswith("exported ")
    loaded = datasets.load_dataset(str(dest), cache_dir=str(tmp_path / "hf-cache"))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    lines = (run["run"] / "dataset.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows and train.num_rows == len(rows)  # the parquet file only: the JSONL copy beside it is not read twice
    assert train.column_names == ["messages", "provenance"]
    for got, want in zip(train, rows, strict=True):
        assert got["messages"] == want["messages"]
        assert json.loads(got["provenance"]) == want["provenance"]
    assert (dest / "data" / "train.jsonl").read_bytes() == (run["run"] / "dataset.jsonl").read_bytes()
    assert (dest / "report.html").is_file() and "report.html" in json.loads((dest / MARKER).read_text())["files"]


def test_the_card_header_follows_the_hub_conventions_and_the_body_says_how_it_was_made(run, tmp_path):
    dest = tmp_path / "export"
    done = export(run["run"], dest, "--license", "cc-by-4.0", "--language", "en", "--language", "fr",
                  "--pretty-name", "Tiny: a test")
    assert done.exit_code == 0, done.output
    header, body = card(dest)
    assert header["license"] == "cc-by-4.0" and header["language"] == ["en", "fr"]
    assert {"synthetic", "codeclm"} <= set(header["tags"])
    assert header["task_categories"] == ["text-generation"] and header["size_categories"] == ["n<1K"]
    assert header["pretty_name"] == "Tiny: a test"
    (config,) = header["configs"]
    assert config["config_name"] == "default"
    assert config["data_files"] == [{"split": "train", "path": PARQUET}] and (dest / PARQUET).is_file()
    assert "Tiny test data." in body and "CodecLM" in body
    for section in ("## How it was made", "## Models", "## Counts", "## Use it", "## Replay or rerun it"):
        assert section in body
    assert "| strong | `hosted_vllm/strong` | temperature 0.5 |" in body
    manifest = json.loads((run["run"] / "manifest.json").read_text())
    target = manifest["calls"]["answer_target/target"]
    assert f"| target | `hosted_vllm/target` | temperature 0.5 | answer_target " \
           f"({target['calls'] + target['cache_hits']}) |" in body
    kept = manifest["counts"]["instructions"].get("kept", 0)
    assert "| seeds | 4 |" in body and f"| kept (rows here) | {kept} |" in body and "| failed | " in body
    assert "SFTTrainer" in body and "field_messages: messages" in body and '"formatting": "sharegpt"' in body
    assert "codeclm cache import pipeline/calls.jsonl.gz" in body
    assert run["url"] not in body  # no endpoint in the card
    assert "## Quality" in body and "distinct_1" in body


def test_size_categories_follow_the_hub_buckets():
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 99_999, 100_000, 1_000_000)] == \
        ["n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


def test_the_pipeline_folder_replays_the_run_offline(run, tmp_path):
    """Anyone with the export alone: import its bundle, replay its spec, get the same dataset byte for byte."""
    dest = tmp_path / "export"
    assert export(run["run"], dest).exit_code == 0
    spec = yaml.safe_load((dest / "pipeline" / "spec.yaml").read_text())
    assert spec["prompts"] == "prompts" and "cache" not in spec
    assert spec["nodes"]["seeds"]["path"] == "seeds/seeds[v1].jsonl"
    assert sorted(p.name for p in (dest / "pipeline" / "prompts").iterdir()) == \
        sorted(json.loads((run["run"] / "manifest.json").read_text())["templates"])
    # the run's manifest, naming no place of the machine that ran it (--push-to-hub published them)
    recorded, shipped = (json.loads(path.read_text()) for path in (run["run"] / "manifest.json",
                                                                     dest / "pipeline" / "manifest.json"))
    for local in (recorded["spec"]["path"], recorded["options"]["cache_dir"], str(Path.home()), "/tmp/"):
        assert local not in json.dumps(shipped), local
    report = (dest / "report.html").read_text()  # the export's report names the run folder by its name alone
    assert str(Path(run["run"]).resolve()) not in report and f"run folder {Path(run['run']).name}" in report
    assert shipped["spec"]["path"] == "spec.yaml" and shipped["spec"]["resolved"] == spec
    assert yaml.safe_load(shipped["spec"]["resolved_yaml"]) == spec
    assert shipped["templates"] == recorded["templates"] and shipped["calls"] == recorded["calls"]
    cache = str(tmp_path / "elsewhere-cache")
    invoke = CliRunner().invoke
    imported = invoke(cli.main, ["cache", "import", str(dest / "pipeline" / "calls.jsonl.gz"), "--cache-dir", cache])
    assert imported.exit_code == 0, imported.output
    replayed = invoke(cli.main, ["run", str(dest / "pipeline" / "spec.yaml"), "--replay", "-q", "--cache-dir", cache,
                                 "--out", str(tmp_path / "replayed")])
    assert replayed.exit_code == 0, replayed.output
    assert (tmp_path / "replayed" / "dataset.jsonl").read_bytes() == (dest / "data" / "train.jsonl").read_bytes()


def test_a_foreign_folder_is_refused_untouched(run, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "README.md").write_text("my notes")
    refused = export(run["run"], dest)
    assert refused.exit_code == 2, refused.output
    assert "not a codeclm export" in refused.output and "fix:" in refused.output
    assert sorted(p.name for p in dest.iterdir()) == ["README.md"]
    assert (dest / "README.md").read_text() == "my notes"
    as_file = tmp_path / "a-file"
    as_file.write_text("x")
    assert export(run["run"], as_file).exit_code == 2 and as_file.read_text() == "x"
    assert export(run["run"], run["run"]).exit_code == 2  # the run folder itself


def test_a_reexport_rewrites_its_own_files_only(run, tmp_path):
    dest = tmp_path / "export"
    assert export(run["run"], dest).exit_code == 0
    assert (dest / "pipeline" / "calls.jsonl.gz").is_file()
    (dest / "notes.txt").write_text("kept")
    again = export(run["run"], dest, "--no-cache-bundle", "--license", "mit")
    assert again.exit_code == 0, again.output
    assert not (dest / "pipeline" / "calls.jsonl.gz").exists()  # its own file, no longer exported
    assert (dest / "notes.txt").read_text() == "kept"
    assert card(dest)[0]["license"] == "mit"
    assert "notes.txt" not in json.loads((dest / MARKER).read_text())["files"]
    other = tmp_path / "other-run"  # an export of another run folder is not this run's to rewrite
    other.mkdir()
    for name in ("manifest.json", "dataset.jsonl"):
        (other / name).write_bytes((run["run"] / name).read_bytes())
    refused = export(other, dest)
    assert refused.exit_code == 2 and "another run" in refused.output
    assert (dest / "notes.txt").read_text() == "kept"


def test_bad_inputs_exit_2(run, tmp_path, monkeypatch):
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    assert export(not_a_run, tmp_path / "a").exit_code == 2
    assert export(run["run"], tmp_path / "b", "--license", "Apache 2").exit_code == 2
    assert export(run["run"], tmp_path / "c", "--push-to-hub", "not a repo").exit_code == 2
    assert export(run["run"], tmp_path / "e", "--private").exit_code == 2  # --private without a push
    empty = tmp_path / "empty-run"  # a run that kept nothing has nothing to ship
    empty.mkdir()
    (empty / "manifest.json").write_bytes((run["run"] / "manifest.json").read_bytes())
    (empty / "dataset.jsonl").write_text("")
    nothing = export(empty, tmp_path / "f")
    assert nothing.exit_code == 1 and "kept no rows" in nothing.output
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the export extra were not installed
    missing = export(run["run"], tmp_path / "d")
    assert missing.exit_code == 2 and "pip install 'codeclm[export]'" in missing.output
    assert not any((tmp_path / name).exists() for name in "abcdef")


class FakeHfApi:
    """Records what `codeclm export --push-to-hub` asks of the Hub."""

    made: list[tuple] = []
    uploads: list[dict] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.made.append((repo_id, self.token, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):  # the files huggingface_hub would send: those an allow pattern matches
        folder = Path(kwargs["folder_path"])
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        sent = sorted(n for n in names if any(fnmatch(n, pattern) for pattern in kwargs["allow_patterns"]))
        FakeHfApi.uploads.append({**kwargs, "sent": sent})


def test_push_uploads_exactly_the_export(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.made, FakeHfApi.uploads = [], []
    dest = tmp_path / "export"
    assert export(run["run"], dest).exit_code == 0
    (dest / "private-notes.txt").write_text("not for the Hub")
    pushed = export(run["run"], dest, "--push-to-hub", "alice/tiny-codeclm", "--private")
    assert pushed.exit_code == 0, pushed.output
    assert "pushed to https://huggingface.co/datasets/alice/tiny-codeclm" in pushed.output
    ((repo, token, made),) = FakeHfApi.made
    assert repo == "alice/tiny-codeclm" and token == "hf_" + "x" * 34
    assert made["repo_type"] == "dataset" and made["private"] is True and made["exist_ok"] is True
    (upload,) = FakeHfApi.uploads
    assert upload["repo_id"] == "alice/tiny-codeclm" and upload["repo_type"] == "dataset"
    assert Path(upload["folder_path"]) == dest
    files = json.loads((dest / MARKER).read_text())["files"]
    assert sorted(files) == upload["sent"]
    assert {"README.md", PARQUET, "data/train.jsonl", "pipeline/spec.yaml", "pipeline/manifest.json",
            "pipeline/seeds/seeds[v1].jsonl"} <= set(files)
    assert "private-notes.txt" not in files and MARKER not in files
    assert 'load_dataset("alice/tiny-codeclm"' in card(dest)[1]  # the card names the repo it is pushed to


def test_push_without_a_token_says_how_to_log_in_before_any_work(run, tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.made, FakeHfApi.uploads = [], []
    refused = export(run["run"], tmp_path / "export", "--push-to-hub", "alice/tiny")
    assert refused.exit_code == 2, refused.output
    assert "hf auth login" in refused.output and "HF_TOKEN" in refused.output
    assert not (tmp_path / "export").exists() and not FakeHfApi.made


def test_a_failed_push_leaves_the_folder_and_says_so(run, tmp_path, monkeypatch):
    class Down(FakeHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_TOKEN", "hf_" + "y" * 34)
    monkeypatch.setattr(huggingface_hub, "HfApi", Down)
    failed = export(run["run"], tmp_path / "export", "--push-to-hub", "alice/tiny")
    assert failed.exit_code == 1 and "no route to host" in failed.output and "run the same command" in failed.output
    assert (tmp_path / "export" / PARQUET).is_file()


def test_the_shipped_spec_names_local_copies_of_what_the_run_read(tmp_path):
    """Paths relative to the spec, a --seeds file, `program:` files: copied, and the spec rewritten to name the
    copies; `cache:` dropped; --limit carried into the card's replay and rerun commands."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "encode.jinja").write_text('{% include "part.jinja" %}')
    (tmp_path / "prompts" / "part.jinja").write_text("hi")
    (tmp_path / "other.jsonl").write_text('{"instruction": "a"}\n{"instruction": "b"}\n{"instruction": "c"}\n')
    (tmp_path / "specs" / "encode.json").write_text("{}")
    manifest = {"spec": {"name": "t", "path": str(tmp_path / "specs" / "t.yaml"), "resolved": {
        "name": "t", "prompts": "../prompts", "cache": "~/somewhere",
        "nodes": {"seeds": {"type": "source", "path": "../missing.jsonl"},
                  "encode": {"type": "llm", "for_each": "seeds", "model": "strong", "template": "encode.jinja",
                             "program": "encode.json"}},
        "models": {"strong": {"model": "openai/gpt-4o-mini", "api_key_env": "OPENAI_API_KEY",
                              "api_base": "https://api.example/v1"}}}},
        "templates": {"encode.jinja": "0" * 64},
        "options": {"seeds": str(tmp_path / "other.jsonl"), "limit": 2}}
    spec, files, notes = pipeline_files(manifest)
    assert spec["prompts"] == "prompts" and "cache" not in spec
    assert spec["nodes"]["seeds"]["path"] == "seeds/other.jsonl"
    assert spec["nodes"]["encode"]["program"] == "programs/encode.json"
    assert files == {"prompts/encode.jinja": tmp_path / "prompts" / "encode.jinja",
                     "prompts/part.jinja": tmp_path / "prompts" / "part.jinja",
                     "seeds/other.jsonl": tmp_path / "other.jsonl",
                     "programs/encode.json": tmp_path / "specs" / "encode.json"}
    assert any("encode.jinja changed since the run" in note for note in notes)
    (tmp_path / "prompts" / "encode.jinja").write_bytes(b'{% include "part.jinja" %}\r\nbye\r\n')  # Windows lines
    manifest["templates"]["encode.jinja"] = hashlib.sha256(b'{% include "part.jinja" %}\nbye\n').hexdigest()
    assert not pipeline_files(manifest)[2], "a template with \\r\\n lines was called changed (hashed as bytes)"
    pipeline = tmp_path / "export" / "pipeline"
    for name, source in files.items():
        (pipeline / name).parent.mkdir(parents=True, exist_ok=True)
        (pipeline / name).write_bytes(source.read_bytes())
    text = render_card(tmp_path, pipeline, manifest, spec, [{"messages": []}], {"messages": "x"}, ExportOptions(),
                       None, None)
    assert "| seeds | 2 |" in text  # the copy, read as the run read it, to --limit
    assert "--replay --out replayed --limit 2" in text and "--out rerun --limit 2" in text
    assert "api.example" not in text and "OPENAI_API_KEY" not in text and "## Quality" not in text
    assert "Caution" not in text  # encode.jinja is as the run rendered it (its \r\n lines read as \n)
    manifest["templates"]["encode.jinja"] = "0" * 64  # as if edited after the run
    text = render_card(tmp_path, pipeline, manifest, spec, [{"messages": []}], {"messages": "x"}, ExportOptions(),
                       None, None)
    assert "**Caution:** `encode.jinja` changed after the run" in text  # the card said "bit for bit" regardless


def test_the_card_gives_a_loop_its_bodys_calls():
    """The card said `improve: no model call` of critique-rewrite's loop, which makes nearly all of them."""
    import yaml
    from codeclm.programs.artifacts.export import _graph

    lines = _graph(yaml.safe_load((REPO / "specs" / "critique_rewrite.yaml").read_text()))
    improve = next(line for line in lines if line.startswith("- **improve**"))
    assert "no model call" not in improve and "rewrite (`llm`, model role `writer`)" in improve
    assert next(line for line in lines if line.startswith("- **seeds**")).endswith("no model call")


def test_a_no_report_rerun_removes_its_stale_report_and_export_ships_a_fresh_one(run, tmp_path):
    """The trial's repro: a rerun with --no-report kept the first run's report.html (its counts, not the
    dataset's now), and export shipped it. Now the rerun removes it (codeclm's own file), and export makes
    the report from the run it ships, whatever report.html lies in the run folder."""
    from codeclm.programs.artifacts.store import is_codeclm_report

    folder = tmp_path / "run"
    shutil.copytree(run["run"], folder)
    assert is_codeclm_report(folder / "report.html")
    spec = run["run"].parent / "spec.yaml"
    again = CliRunner().invoke(cli.main, ["run", str(spec), "-q", "--no-report", "--out", str(folder),
                                          "--cache-dir", str(run["cache"])])
    assert again.exit_code == 0, again.output
    assert not (folder / "report.html").exists() and (folder / "manifest.json").is_file()
    stale = (run["run"] / "report.html").read_text(encoding="utf-8").replace("<h1>", "<h1>STALE-REPORT ", 1)
    (folder / "report.html").write_text(stale, encoding="utf-8")  # e.g. left by an older codeclm
    done = export(folder, tmp_path / "export", "--no-cache-bundle")
    assert done.exit_code == 0, done.output
    shipped = (tmp_path / "export" / "report.html").read_text(encoding="utf-8")
    assert is_codeclm_report(tmp_path / "export" / "report.html") and "STALE-REPORT" not in shipped


@pytest.mark.parametrize("name", ["ablation_metadata", "ablation_rubrics", "no_seed", "self_instruct", "alpagasus"])
def test_the_card_tells_each_spec_its_own_method(name, tmp_path):
    """The card told every graph with CodecLM's templates that Self-Rubrics and Contrastive Filtering
    made it (the ablations have neither, no_seed has no seeds), and the other specs nothing at all."""
    from codeclm.programs.artifacts.export import _card_how_made

    spec = yaml.safe_load((REPO / "specs" / f"{name}.yaml").read_text())
    manifest = {"spec": spec, "calls": {}, "counts": {"instructions": {}}}
    text = "\n".join(_card_how_made(spec, manifest, tmp_path, 0))
    assert " ".join(spec["description"].split()) in " ".join(text.split())
    if name.startswith("ablation"):
        assert "No Contrastive Filtering" in text or "no Contrastive Filtering" in text
        assert "Contrastive Filtering keeps" not in text


def test_the_cards_quality_table_leaves_out_what_the_run_has_no_data_for():
    from codeclm.programs.artifacts.export import _card_quality

    metrics = {"distinct_1": 0.5, "coverage": None,
               "judge": {"judged_both_orders": 0, "position_bias": None, "order_agreement": None}}
    table = "\n".join(_card_quality(metrics))
    assert "| distinct_1 | 0.5 |" in table and "coverage" not in table.split("| --- |")[1] and "judge." not in table
    judged = {"judge": {"judged_both_orders": 3, "order_agreement": 1.0, "position_bias": None}}
    table = "\n".join(_card_quality(judged))
    assert "| judge.judged_both_orders | 3 |" in table and "position_bias" not in table



def test_the_card_says_what_the_shipped_manifest_holds():
    """The card said pipeline/manifest.json holds "time per stage and model"; it holds the run's wall time only."""
    from codeclm.programs.artifacts.export import _card_replay

    text = "\n".join(_card_replay({"calls": {}, "wall_seconds": 1.0}, {}, None, []))
    assert "time per stage" not in text and "per node and model" in text and "wall time" in text


def test_a_license_id_the_hub_may_not_know_is_written_with_a_warning(run, tmp_path):
    """`--license mit-ish` went into the card's header without a word; `--language english` was refused."""
    done = export(run["run"], tmp_path / "export", "--license", "mit-ish", "--no-cache-bundle")
    assert done.exit_code == 0, done.output
    assert card(tmp_path / "export")[0]["license"] == "mit-ish"
    assert "note: --license mit-ish is not one of the Hub's license ids" in done.output
    assert "did you mean mit?" in done.output and "`other`" in done.output
    for license_id in ("cc-by-nc-sa-4.0", "ofl-1.1", "etalab-2.0"):  # the last two were missing: "closest" to others
        known = export(run["run"], tmp_path / license_id, "--license", license_id, "--no-cache-bundle")
        assert known.exit_code == 0 and "note: --license" not in known.output, known.output
    assert "written with a warning" in " ".join(CliRunner().invoke(cli.main, ["export", "--help"]).output.split())


def test_the_card_counts_one_conversation_in_the_singular():
    from codeclm.programs.artifacts.export import _card_structure

    assert "1 chat conversation (`messages`)" in "\n".join(_card_structure("x", {}, 1, {}, False))
    assert "2 chat conversations" in "\n".join(_card_structure("x", {}, 2, {}, False))


def test_the_card_of_a_rerun_from_the_cache_counts_the_calls_behind_the_data(run, tmp_path):
    """A rerun into the same folder, all from the cache, made the card say 0 calls, 0 tokens and 0.0 s."""
    rerun = tmp_path / "run"
    shutil.copytree(run["run"], rerun)
    first = json.loads((rerun / "manifest.json").read_text())["totals"]
    again = CliRunner().invoke(cli.main, ["run", str(run["run"].parent / "spec.yaml"), "-q", "--no-report",
                                          "--out", str(rerun), "--cache-dir", str(run["cache"])])
    assert again.exit_code == 0, again.output
    assert json.loads((rerun / "manifest.json").read_text())["totals"]["calls"] == 0  # this run made none
    dest = tmp_path / "export"
    assert export(rerun, dest).exit_code == 0
    body = card(dest)[1]
    behind = first["calls"] + first["cache_hits"]
    assert f"| model calls behind the data | {behind} (every call served from the cache in this run) |" in body
    assert "| tokens in / out | 0 / 0 |" not in body and "not recorded: this run took every call" in body
    assert "| wall time of this run |" in body and "not what the data took" in body


def test_a_fresh_run_that_repeats_calls_takes_nothing_from_the_cache(tmp_path, scripted: ScriptedRun):
    """Duplicate seeds on an empty cache: the repeated calls (each waiting for the identical one in flight)
    counted as cache hits, so the card said calls "came from the cache", counted them twice behind the
    data, and called the wall time not what the data took."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "instruction": s}) + "\n"
                             for i, s in enumerate(SEEDS[:2] * 2)))  # s2, s3 repeat s0, s1
    spec = write_spec(tmp_path, base_spec(seeds))
    totals = scripted(spec).manifest["totals"]
    made = scripted.calls()
    assert (totals["calls"], totals["cache_hits"], totals["shared"]) == (made, 0, 2)  # the 2 repeated encodings
    assert export(tmp_path / "run", tmp_path / "export").exit_code == 0
    body = card(tmp_path / "export")[1]
    assert f"| model calls behind the data | {made} (asked {made + 2} times: identical calls were answered once) |" \
        in body
    assert "from the cache" not in body.split("## Use it")[0] and "| wall time | " in body
    replay = scripted(spec, out="replay", mode="replay").manifest["totals"]  # each call once from the cache
    assert (replay["calls"], replay["cache_hits"], replay["shared"]) == (0, made, 2)


def test_the_cards_cost_says_which_figures_are_this_runs_alone():
    from codeclm.programs.artifacts.export import _cost

    live = {"totals": {"calls": 5, "cache_hits": 0, "prompt_tokens": 50, "completion_tokens": 7}, "wall_seconds": 2}
    assert _cost(live) == ["| model calls behind the data | 5 |", "| tokens in / out | 50 / 7 |",
                           "| wall time | 2.0 s |"]
    resumed = {"totals": {"calls": 3, "cache_hits": 1, "prompt_tokens": 30, "completion_tokens": 4,
                          "cost_usd": 0.03, "saved_usd": 0.01}, "wall_seconds": 1.5}
    assert _cost(resumed) == [
        "| model calls behind the data | 4 (1 call served from the cache in this run) |",
        "| tokens in / out, of the 3 calls made in this run | 30 / 4 |",
        "| dollars the calls cost | 0.0400 (0.0100 of it saved by the cache in this run) |",
        "| wall time of this run | 1.5 s (not what the data took: 1 call came from the cache) |"]
    old = {"totals": {"calls": 5, "cache_hits": 0}}  # a manifest from before `shared`: read as none
    assert _cost(old) == _cost({"totals": {**old["totals"], "shared": 0}})
    assert _cost(old)[0] == "| model calls behind the data | 5 |"
    both = {"totals": {"calls": 3, "cache_hits": 1, "shared": 2}}
    assert _cost(both)[0] == ("| model calls behind the data | 4 (1 call served from the cache in this run; asked 6 "
                              "times: identical calls were answered once) |")


def test_the_cards_models_give_a_nodes_own_decoding_where_it_differs_from_its_roles():
    """The card said the judge of codeclm.yaml ran at its role's temperature 0.7; the node sets 0.0."""
    from codeclm.programs.artifacts.export import _models

    spec = yaml.safe_load((REPO / "specs" / "codeclm.yaml").read_text())
    spec["models"]["strong"]["model"] = "hosted_vllm/strong"
    manifest = {"calls": {"judge/strong": {"calls": 700, "cache_hits": 22}, "encode/strong": {"calls": 20}}}
    table = "\n".join(_models(spec, manifest))
    assert "| strong | `hosted_vllm/strong` | temperature 0.7, max_tokens 2048 | encode (20), judge (722; " \
           "temperature 0.0) |" in table
    demo = yaml.safe_load((REPO / "specs" / "demo.yaml").read_text())
    manifest = {"calls": {"judge/strong": {"calls": 4}, "answer_strong/strong": {"calls": 2}}}
    table = "\n".join(_models(demo, manifest))
    assert "answer_strong (2)" in table and "judge (4; temperature 1.0, max_tokens 12)" in table


def test_the_cards_counts_add_up_to_the_records_of_a_filter_spec(tmp_path):
    """An AlpaGasus run's card said `instructions 3 | kept 3 | filtered out 7` where 10 pairs were rated:
    it counted the statuses of the filter's output alone."""
    from codeclm.programs.artifacts.export import _counts

    spec = yaml.safe_load((REPO / "specs" / "alpagasus.yaml").read_text())
    manifest = {"spec": {"resolved": spec}, "calls": {}, "counts": {
        "instructions": {"kept": 3}, "stages": {"pairs": {"done": 10, "failed": 0}, "rate": {"done": 10, "failed": 0},
                                                "keep": {"done": 10, "failed": 0, "removed": 7}}}}
    table = "\n".join(_counts(tmp_path, manifest, spec, 3))
    assert "| records (all outcomes below) | 10 |" in table and "| instructions |" not in table
    assert "| kept (rows here) | 3 |" in table and "| filtered out | 7 |" in table


def test_a_spec_that_calls_no_model_exports_and_its_pipeline_replays(tmp_path, monkeypatch):
    """A spec of sources alone (pairs of one's own, put in the chat format): the card showed an empty table of
    models, and pipeline/spec.yaml named a prompts folder the export did not ship, so its replay was refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conv.yaml").write_text(
        "name: conv\nnodes:\n  pairs:\n    type: source\n    records: [{instruction: Say hi., response: Hi!}]\n"
        "outputs:\n  dataset:\n    from: pairs\n    fields:\n      messages:\n"
        "        - {role: \"'user'\", content: pairs.instruction}\n"
        "        - {role: \"'assistant'\", content: pairs.response}\n")
    invoke = CliRunner().invoke
    assert invoke(cli.main, ["run", "conv.yaml", "-q", "--no-report", "--out", "run"]).exit_code == 0
    assert export("run", "export").exit_code == 0
    _, body = card(tmp_path / "export")
    assert "## Models\n\nNone: no node of the spec calls a model; the rows come from its sources.\n" in body
    assert "| role | model |" not in body
    replayed = invoke(cli.main, ["run", "export/pipeline/spec.yaml", "--replay", "-q", "--no-report", "--out", "again"])
    assert replayed.exit_code == 0, replayed.output
    shipped = (tmp_path / "export" / "data" / "train.jsonl").read_bytes()
    assert (tmp_path / "again" / "dataset.jsonl").read_bytes() == shipped

"""Load a YAML spec into typed objects and validate it before anything runs.

A spec declares the models by role, where the seeds (or hand-written metadata) come
from, the method's parameters, the stages with their wiring, and the per-instruction
refine loop. Every problem is reported with the file, the line and the fix.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError, SpecErrors
from .yaml_lines import Path_, has_surrogate, load_value, load_with_lines

# What each stage kind reads and produces. The runner holds one implementation per kind;
# the spec decides which stages exist and how they are wired.
STAGE_KINDS: dict[str, dict[str, Any]] = {
    "encode": {"llm": True, "reads": {"seeds"}, "makes": "metadata"},
    "augment": {"llm": False, "reads": {"metadata"}, "makes": "metadata"},
    "rubrics": {"llm": True, "reads": {"metadata"}, "makes": "rubrics"},
    "decode": {"llm": True, "reads": {"metadata"}, "makes": "instructions"},
    "respond": {"llm": True, "reads": set(), "makes": "answer"},
    "judge": {"llm": True, "reads": set(), "makes": "scores"},
    "improve": {"llm": True, "reads": set(), "makes": "instruction"},
}
SOURCES = {"seeds": "seeds", "metadata": "metadata"}  # built-in inputs and what they provide
DECISION_RULES = ("contrastive", "keep")
MODEL_KEYS = {"model", "api_base", "api_key_env", "temperature", "max_tokens", "top_p", "concurrency",
              "rpm", "timeout", "retries", "n_ctx", "extra"}
PARAM_DEFAULTS: dict[str, Any] = {
    "pool_size": 200,  # metadata entries after Augment (paper: 200)
    "skills_per_entry": [1, 3],  # inclusive range of skills per augmented entry (paper: open; encoder caps at 3)
    "dataset_size": 2000,  # instructions decoded in total (paper: 2,000 pairs)
    "instructions_per_entry": None,  # overrides dataset_size / pool_size when set
    "rubrics": 4,  # rubrics (and actions) per metadata entry (paper: 4)
    "max_iterations": 4,  # basic instruction counts as the first (paper: 4)
    "threshold": 3.0,  # theta on the score scale (paper: 3 on 1-10)
    "score_scale": [1, 10],
    "both_orders": True,  # judge each pair in both orders and average (paper: yes)
    "unparsable_score": "fail",  # fail: the item is a recorded failure | tie: scored as a gap of 0
    "keep_limit": None,  # cap the dataset at this many pairs (stable order); None keeps all
}


@dataclass
class ModelSpec:
    role: str
    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = 0.7
    max_tokens: int = 2048
    top_p: float | None = None
    concurrency: int = 8
    rpm: float | None = None
    timeout: float = 120.0
    retries: int = 5
    n_ctx: int = 2048
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.model == "local" or self.model.startswith("local/")


@dataclass
class StageSpec:
    name: str
    kind: str
    model: str | None = None
    template: str | None = None
    input: str | None = None
    answers: list[str] = field(default_factory=list)  # judge: [strong side, target side]
    actions: str | None = None  # improve: the rubrics stage whose actions it samples
    temperature: float | None = None  # per-stage override of the model's temperature
    max_tokens: int | None = None
    program: Path | None = None  # a DSPy-optimized state (module.save) with tuned instructions and demos


@dataclass
class RefineSpec:
    """The per-instruction loop: respond, judge, decide, improve, at most max_iterations times."""

    instructions: str
    respond: list[str]
    judge: str | None
    decide: str
    improve: str | None
    keep_answer: str | None = None


@dataclass
class SeedsSpec:
    path: Path
    field: str = "instruction"
    id_field: str | None = "id"


@dataclass
class Spec:
    path: Path
    name: str
    seed: int
    prompts_dir: Path
    cache_dir: Path | None
    models: dict[str, ModelSpec]
    seeds: SeedsSpec | None
    metadata: list[dict[str, Any]] | None
    params: dict[str, Any]
    stages: dict[str, StageSpec]
    refine: RefineSpec | None
    raw: dict[str, Any]  # the spec as loaded, overrides applied (recorded in the manifest)

    def stages_of(self, kind: str) -> list[StageSpec]:
        return [s for s in self.stages.values() if s.kind == kind]


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read, override (`key.sub=value`), and validate a spec. Raises SpecError(s)."""
    path = Path(path)
    data, lines = load_with_lines(path)
    if not isinstance(data, dict):
        raise SpecError(str(path), "a spec must be a YAML mapping", line=1,
                        hint="start from specs/demo.yaml")
    data = apply_overrides(data, overrides or [], str(path))
    return _Validator(path, data, lines).build()


def apply_overrides(data: dict[str, Any], overrides: list[str], file: str) -> dict[str, Any]:
    """Apply `--set a.b.c=value` overrides; values are parsed as YAML (numbers, lists, null),
    with the checks a spec file gets (no duplicate keys, no alias bombs, Unicode text)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw_value = item.partition("=")
        if not sep or not key:
            raise SpecError(file, f"--set {item!r} is not key=value", hint="e.g. --set params.threshold=2")
        parts = key.split(".")
        if has_surrogate(item) or not all(part.strip() for part in parts):
            what = "is not valid text" if has_surrogate(item) else "has an empty key part"
            raise SpecError(file, f"--set {item!r} {what}", hint="e.g. --set params.threshold=2")
        value = load_value(raw_value, file, f"--set {key}")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(file, f"--set {key}: '{where}' is a {type(node[part]).__name__}, not a mapping",
                                hint=f"set '{where}' itself, e.g. --set {where}=VALUE")
            node = node[part]
        node[parts[-1]] = value
    return data


class _Validator:
    """Collects every problem in a spec, then raises them together."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[Path_, int]):
        self.path, self.data, self.lines = path, data, lines
        self.errors: list[SpecError] = []

    # -- reporting -------------------------------------------------------------------------

    def error(self, where: Path_, message: str, hint: str | None = None) -> None:
        line = None
        for cut in range(len(where), -1, -1):  # nearest enclosing key that has a line
            line = self.lines.get(where[:cut])
            if line:
                break
        self.errors.append(SpecError(str(self.path), message, line=line, hint=hint))

    def check_keys(self, where: Path_, mapping: dict[str, Any], allowed: set[str]) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
                self.error((*where, key), f"unknown key '{key}' in {'.'.join(map(str, where)) or 'spec'}", hint)

    def mapping(self, where: Path_, value: Any, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"{what} must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def relative(self, value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate).resolve()

    # -- sections --------------------------------------------------------------------------

    def build(self) -> Spec:
        data = self.data
        self.check_keys((), data, {"name", "seed", "prompts", "cache", "models", "seeds", "metadata",
                                   "params", "stages", "refine", "description"})
        models = self.models(self.mapping(("models",), data.get("models"), "models"))
        params = self.params(self.mapping(("params",), data.get("params"), "params"))
        stages = self.stages(self.mapping(("stages",), data.get("stages"), "stages"), models)
        seeds = self.seeds(data.get("seeds"))
        metadata = self.metadata(data.get("metadata"))
        prompts_dir = self.relative(str(data.get("prompts", "../prompts")))
        if not prompts_dir.is_dir():
            self.error(("prompts",), f"prompts folder {prompts_dir} does not exist",
                       "set 'prompts:' to the folder of templates, relative to the spec")
        refine = self.refine(data.get("refine"), stages, params)
        self.wiring(stages, seeds, metadata)
        if not isinstance(data.get("seed", 0), int):
            self.error(("seed",), "seed must be an integer")
        name = str(data.get("name", self.path.stem))
        if name.strip() in ("", ".") or ".." in name or "/" in name or "\\" in name or not name.isprintable():
            self.error(("name",), f"name must be a plain name (it names the run folder runs/NAME), got {name!r}",
                       "a name is not a path: no '/', '\\' or '..'; pass --out DIR to write elsewhere")
        if self.errors:
            raise SpecErrors(self.errors)
        spec = Spec(
            path=self.path, name=str(data.get("name", self.path.stem)), seed=int(data.get("seed", 0)),
            prompts_dir=prompts_dir,
            cache_dir=self.relative(str(data["cache"])) if data.get("cache") else None,
            models=models, seeds=seeds, metadata=metadata, params=params, stages=stages,
            refine=refine, raw=data,
        )
        self.templates(spec)
        if self.errors:
            raise SpecErrors(self.errors)
        return spec

    def models(self, raw: dict[str, Any]) -> dict[str, ModelSpec]:
        models = {}
        if not raw:
            self.error(("models",), "no models declared", "declare at least `models: {strong: {model: local}}`")
        for role, conf in raw.items():
            where = ("models", role)
            if isinstance(conf, str):
                conf = {"model": conf}
            conf = self.mapping(where, conf, f"model '{role}'")
            self.check_keys(where, conf, MODEL_KEYS | {"api_key"})  # api_key gets its own message below
            if "api_key" in conf:
                self.error((*where, "api_key"), "API keys never go in a spec",
                           "export the key in the environment; name the variable with api_key_env")
            self.credentials(where, conf)
            model = conf.get("model")
            if not isinstance(model, str) or not model:
                self.error(where, f"model '{role}' needs a 'model' string",
                           "e.g. local, openai/gpt-4o-mini, gemini/gemini-1.5-pro, hosted_vllm/NAME")
                continue
            if model.startswith("hosted_vllm/") and not conf.get("api_base"):
                self.error(where, f"model '{role}' ({model}) needs api_base",
                           "e.g. api_base: http://127.0.0.1:8000/v1")
            try:
                spec = ModelSpec(role=role, **{k: v for k, v in conf.items() if k in MODEL_KEYS})
            except TypeError as exc:
                self.error(where, f"bad model settings: {exc}")
                continue
            for key in ("temperature", "max_tokens", "concurrency", "timeout", "retries"):
                value = getattr(spec, key)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    self.error((*where, key), f"{key} must be a non-negative number, got {value!r}")
            if isinstance(spec.concurrency, int) and spec.concurrency < 1:
                self.error((*where, "concurrency"), "concurrency must be at least 1")
            models[role] = spec
        return models

    def credentials(self, where: Path_, conf: dict[str, Any]) -> None:
        """Keys come from the environment only: refuse one in `extra:` (any key named like a
        credential, any value shaped like a key, however deep) or in api_base (user:password@,
        a key in the query). Refused, not stripped: stripping would change what the server gets,
        and the key would stay in a file that gets shared. Messages never repeat the value."""
        from .redact import credential_keys, register_key_env, url_credentials

        fix = "export the key in the environment and name its variable with api_key_env (sent as a Bearer token)"
        for path, why in credential_keys(conf.get("extra"), (*where, "extra")):
            self.error(path, f"{'.'.join(map(str, path))}: {why}; API keys never go in a spec", fix)
        problem = url_credentials(conf.get("api_base"))
        if problem:
            self.error((*where, "api_base"), f"{'.'.join(map(str, where))}.api_base: {problem}; "
                       "API keys never go in a spec", fix + ", and keep api_base to scheme://host:port/path")
        env = conf.get("api_key_env")
        if env is not None and not (isinstance(env, str) and env.isidentifier() and env.isascii()):
            self.error((*where, "api_key_env"), "api_key_env names the environment variable holding the key "
                       "(it is not the key itself)", "e.g. api_key_env: OPENAI_API_KEY")
        else:
            register_key_env(env)  # its value is masked in everything codeclm writes

    def params(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.check_keys(("params",), raw, set(PARAM_DEFAULTS))
        params = {**PARAM_DEFAULTS, **{k: v for k, v in raw.items() if k in PARAM_DEFAULTS}}

        def positive_int(key: str, allow_none: bool = False) -> None:
            value = params[key]
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.error(("params", key), f"{key} must be a positive integer, got {value!r}")

        for key in ("pool_size", "dataset_size", "rubrics", "max_iterations"):
            positive_int(key)
        positive_int("instructions_per_entry", allow_none=True)
        positive_int("keep_limit", allow_none=True)
        skills = params["skills_per_entry"]
        if isinstance(skills, int):
            params["skills_per_entry"] = skills = [skills, skills]
        if not (isinstance(skills, list) and len(skills) == 2 and all(isinstance(s, int) for s in skills)
                and 1 <= skills[0] <= skills[1]):
            self.error(("params", "skills_per_entry"), f"skills_per_entry must be [min, max], got {skills!r}",
                       "e.g. [1, 3]")
        scale = params["score_scale"]
        if not (isinstance(scale, list) and len(scale) == 2 and all(_number(v) for v in scale)
                and scale[0] < scale[1]):
            self.error(("params", "score_scale"), f"score_scale must be [low, high], got {scale!r}")
        if not isinstance(params["threshold"], (int, float)) or params["threshold"] < 0:
            self.error(("params", "threshold"), "threshold must be a non-negative number")
        if params["unparsable_score"] not in ("fail", "tie"):
            self.error(("params", "unparsable_score"), "unparsable_score must be 'fail' or 'tie'")
        if not isinstance(params["both_orders"], bool):
            self.error(("params", "both_orders"), "both_orders must be true or false")
        return params

    def stages(self, raw: dict[str, Any], models: dict[str, ModelSpec]) -> dict[str, StageSpec]:
        stages = {}
        if not raw:
            self.error(("stages",), "no stages declared", "copy the stages of specs/codeclm.yaml")
        allowed = {"kind", "model", "template", "input", "answers", "actions", "temperature", "max_tokens",
                   "program"}
        for name, conf in raw.items():
            where = ("stages", name)
            conf = self.mapping(where, conf, f"stage '{name}'")
            self.check_keys(where, conf, allowed)
            if not self.stage_types(where, conf):
                continue
            kind = conf.get("kind")
            if kind not in STAGE_KINDS:
                self.error((*where, "kind"), f"stage '{name}' has unknown kind {kind!r}",
                           f"allowed kinds: {', '.join(STAGE_KINDS)}")
                continue
            if name in SOURCES:
                self.error(where, f"'{name}' is a built-in input and cannot name a stage")
            stage = StageSpec(name=name, kind=kind,
                              **{k: v for k, v in conf.items() if k in allowed - {"kind", "program"}})
            if conf.get("program"):
                stage.program = self.relative(str(conf["program"]))
                if not stage.program.is_file():
                    self.error((*where, "program"), f"optimized program {stage.program} not found",
                               "make one with codeclm optimize SPEC STAGE, or drop 'program:'")
            if STAGE_KINDS[kind]["llm"]:
                if stage.model not in models:
                    self.error((*where, "model"), f"stage '{name}' uses model {stage.model!r}, which is not declared",
                               f"declared models: {', '.join(models) or 'none'}")
                if not stage.template:
                    self.error(where, f"stage '{name}' needs a template", f"e.g. template: {kind}.jinja")
            stages[name] = stage
        return stages

    def stage_types(self, where: Path_, conf: dict[str, Any]) -> bool:
        """Each stage field has the type it needs; False (with errors) when one does not."""
        ok = True
        expected = {"kind": (str, "a kind name"), "model": (str, "a model role"), "template": (str, "a file name"),
                    "input": (str, "a stage or built-in input"), "actions": (str, "a rubrics stage"),
                    "program": (str, "a file path")}
        for key, (kind, what) in expected.items():
            if key in conf and not isinstance(conf[key], kind):
                self.error((*where, key), f"{key} must be {what}, got {conf[key]!r}")
                ok = False
        answers = conf.get("answers", [])
        if not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            self.error((*where, "answers"), f"answers must be a list of two respond stages, got {answers!r}")
            ok = False
        if "temperature" in conf and not _number(conf["temperature"], 0, 2):
            self.error((*where, "temperature"), f"temperature must be from 0 to 2, got {conf['temperature']!r}")
            ok = False
        if "max_tokens" in conf and not (_number(conf["max_tokens"], 1) and isinstance(conf["max_tokens"], int)):
            self.error((*where, "max_tokens"), f"max_tokens must be a positive integer, got {conf['max_tokens']!r}")
            ok = False
        return ok

    def wiring(self, stages: dict[str, StageSpec], seeds: SeedsSpec | None, metadata: Any) -> None:
        provided = {"seeds": seeds is not None, "metadata": metadata is not None}
        for stage in stages.values():
            where = ("stages", stage.name)
            reads = STAGE_KINDS[stage.kind]["reads"]
            if not reads:
                continue
            source = stage.input
            if source in SOURCES:
                if not provided[source]:
                    self.error((*where, "input"), f"stage '{stage.name}' reads '{source}', which the spec lacks",
                               f"add a top-level '{source}:' section")
                    continue
                makes = SOURCES[source]
            elif source in stages:
                makes = STAGE_KINDS[stages[source].kind]["makes"]
            else:
                self.error((*where, "input"), f"stage '{stage.name}' has input {source!r}, which is not a stage",
                           f"one of: {', '.join([*SOURCES, *stages])}")
                continue
            if makes not in reads:
                self.error((*where, "input"), f"stage '{stage.name}' ({stage.kind}) reads {'/'.join(reads)}, "
                           f"but '{source}' makes {makes}")
        for stage in stages.values():
            if stage.kind == "judge" and (len(stage.answers) != 2
                                          or any(stages.get(a, StageSpec("", "")).kind != "respond"
                                                 for a in stage.answers)):
                self.error(("stages", stage.name, "answers"), f"judge '{stage.name}' needs answers: [strong, target]",
                           "two respond stages: the strong model's first")
            if stage.kind == "improve" and (stage.actions not in stages or stages[stage.actions].kind != "rubrics"):
                self.error(("stages", stage.name, "actions"), f"improve '{stage.name}' needs actions: <rubrics stage>")

    def seeds(self, raw: Any) -> SeedsSpec | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            raw = {"path": raw}
        raw = self.mapping(("seeds",), raw, "seeds")
        self.check_keys(("seeds",), raw, {"path", "field", "id_field"})
        if "path" not in raw:
            self.error(("seeds",), "seeds needs a path", "e.g. seeds: {path: ../seeds/example.jsonl}")
            return None
        for key in ("field", "id_field"):
            if key in raw and raw[key] is not None and not isinstance(raw[key], str):
                self.error(("seeds", key), f"seeds.{key} must be a field name, got {raw[key]!r}")
        return SeedsSpec(path=self.relative(str(raw["path"])), field=raw.get("field", "instruction"),
                         id_field=raw.get("id_field", "id"))

    def metadata(self, raw: Any) -> list[dict[str, Any]] | None:
        if raw is None:
            return None
        if not isinstance(raw, list) or not raw:
            self.error(("metadata",), "metadata must be a non-empty list of {use_case, skills}")
            return None
        entries = []
        for index, entry in enumerate(raw):
            where = ("metadata", index)
            if not isinstance(entry, dict) or not isinstance(entry.get("use_case"), str):
                self.error(where, "each metadata entry needs a use_case string and a skills list",
                           "e.g. - {use_case: code generation, skills: [python, debugging]}")
                continue
            skills = entry.get("skills", [])
            if not isinstance(skills, (str, list)):
                self.error((*where, "skills"), f"skills must be a list or a comma-separated string, got {skills!r}")
                continue
            skills = [s.strip() for s in skills.split(",")] if isinstance(skills, str) else skills
            entries.append({"use_case": entry["use_case"], "skills": [str(s) for s in skills if str(s).strip()]})
        return entries

    def refine(self, raw: Any, stages: dict[str, StageSpec], params: dict[str, Any]) -> RefineSpec | None:
        if raw is None:
            return None
        where = ("refine",)
        raw = self.mapping(where, raw, "refine")
        self.check_keys(where, raw, {"instructions", "respond", "judge", "decide", "improve", "keep_answer"})

        def stage_ref(key: str, kind: str, required: bool) -> str | None:
            name = raw.get(key)
            if name is None:
                if required:
                    self.error(where, f"refine needs '{key}' (a {kind} stage)")
                return None
            if not isinstance(name, str):
                self.error((*where, key), f"refine.{key} must name a {kind} stage, got {name!r}")
                return None
            if name not in stages or stages[name].kind != kind:
                options = [s.name for s in stages.values() if s.kind == kind]
                self.error((*where, key), f"refine.{key} must name a {kind} stage, got {name!r}",
                           f"{kind} stages: {', '.join(options) or 'none'}")
            return name

        instructions = stage_ref("instructions", "decode", True)
        respond = raw.get("respond") or []
        respond = [respond] if isinstance(respond, str) else respond
        if not (isinstance(respond, list) and all(isinstance(n, str) for n in respond)):
            self.error((*where, "respond"), f"refine.respond must list respond stages, got {respond!r}")
            respond = []
        for name in respond:
            if name not in stages or stages[name].kind != "respond":
                self.error((*where, "respond"), f"refine.respond lists {name!r}, which is not a respond stage")
        decide = raw.get("decide", "contrastive")
        if decide not in DECISION_RULES:
            self.error((*where, "decide"), f"unknown decision rule {decide!r}", f"one of: {', '.join(DECISION_RULES)}")
        judge = stage_ref("judge", "judge", decide == "contrastive")
        improve = stage_ref("improve", "improve", False)
        keep_answer = raw.get("keep_answer")
        if decide == "keep" and keep_answer not in respond:
            self.error((*where, "keep_answer"), "decide: keep needs keep_answer, one of the refine.respond stages")
        if judge and judge in stages and not set(stages[judge].answers) <= set(respond):
            self.error((*where, "respond"), f"judge '{judge}' compares {stages[judge].answers}; list both in respond")
        if improve is None and params["max_iterations"] > 1:
            self.error(("params", "max_iterations"), "max_iterations > 1 needs refine.improve",
                       "add an improve stage, or set params.max_iterations: 1")
        if improve and improve in stages and instructions in stages:
            rubric_stage = stages.get(stages[improve].actions or "")
            if rubric_stage and rubric_stage.input != stages[instructions].input:
                self.error(("stages", improve, "actions"), "improve's rubrics must be made for the same metadata "
                           f"that '{instructions}' decodes (input '{stages[instructions].input}')")
        return RefineSpec(instructions=instructions or "", respond=respond, judge=judge, decide=decide,
                          improve=improve, keep_answer=keep_answer)

    def templates(self, spec: Spec) -> None:
        from .templates import TemplateMissing, TemplateStore  # jinja import kept off the CLI's fast path

        store = TemplateStore(spec.prompts_dir)
        for stage in spec.stages.values():
            if stage.template:
                try:
                    store.get(stage.template)
                except TemplateMissing as exc:  # the spec's line is where to fix it
                    self.error(("stages", stage.name, "template"), f"stage '{stage.name}': {exc.message}", exc.hint)
                except SpecError as exc:  # a broken template: its own file and line
                    self.errors.append(exc)


def _number(value: Any, low: float | None = None, high: float | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (low is None or value >= low) and (high is None or value <= high)

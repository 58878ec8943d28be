"""Load a YAML spec into typed objects and check it before anything runs.

A spec has a name, a seed, the models by role, free parameters, the nodes of its graph and
the outputs it writes. The node language itself lives in `programs/lang/`: this module reads
the top-level sections and hands `nodes:` and `outputs:` to it. Every problem is collected
and reported together, each with the file, the line and the fix.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yarl

from ..errors import CODECLM_README, SPEC_REFERENCE, SpecError, SpecErrors
from ..models.budget import check_budget, check_price
from .yaml_lines import Path_, has_surrogate, load_value, load_with_lines

if TYPE_CHECKING:
    from .nodes import LLMNode

TOP_KEYS = {"name", "seed", "prompts", "cache", "models", "params", "nodes", "outputs", "description", "budget",
            "optimize", "executor"}
EXECUTORS = ("local", "ray")  # `executor:`, and `codeclm run --executor`, which wins
MODEL_KEYS = {"model", "api_base", "api_key_env", "temperature", "max_tokens", "top_p", "concurrency",
              "rpm", "timeout", "retries", "n_ctx", "extra", "price"}


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
    price: dict[str, float] | None = None  # {input_per_mtok, output_per_mtok}: wins over LiteLLM's cost map
    line: int | None = None  # its line in the spec: for what a run finds wrong with it

    @property
    def is_local(self) -> bool:
        return self.model == "local" or self.model.startswith("local/")


@dataclass
class Spec:
    path: Path
    name: str
    seed: int
    prompts_dir: Path
    cache_dir: Path | None
    models: dict[str, ModelSpec]
    params: dict[str, Any]
    graph: Any  # programs.lang.graph.Graph: the checked nodes and outputs
    raw: dict[str, Any]  # the spec as loaded, overrides applied (recorded in the manifest)
    budget: Any = None  # programs.models.budget.Budget: what a run may spend on new calls, or None
    executor: str = "local"  # local | ray (programs/engine/ray_executor.py)
    optimize: dict[str, Any] = field(default_factory=dict)  # node -> programs.tuning.config.NodeTuning
    # Sources whose file is not there, each located at its `path:`: an error for `validate` and for a
    # run that reads them, not for one whose --seeds FILE replaces the file (check_source_files).
    missing_files: list[SpecError] = field(default_factory=list)

    def model_node(self, name: str) -> LLMNode:
        """The llm or judge node `name` (`render`, `optimize`), or a SpecError listing the ones there are."""
        from .nodes import LLMNode  # with the rest of the language, below

        node = self.graph.every.get(name)
        if not isinstance(node, LLMNode):
            names = [n.name for n in self.graph.model_nodes()]
            problem = (f"'{name}' is a {node.type} node, which sends no prompt: only an llm or judge node does"
                       if node is not None else f"no llm node named '{name}'")
            raise SpecError(str(self.path), problem,
                            hint=self.graph.rounds_hint(name) or (f"llm nodes: {', '.join(names)}" if names else
                                                                 "this spec has none: optimize tunes the prompt of "
                                                                 "a node that calls a model"))
        return node


# Providers a `model:` names without LiteLLM being asked: codeclm's own and the most used of
# LiteLLM's (the rest are checked against LiteLLM's list, whose import takes seconds).
KNOWN_PROVIDERS = {"local", "openai", "hosted_vllm", "ollama", "llamacpp", "gemini", "anthropic", "vertex_ai",
                   "azure", "bedrock", "mistral", "groq", "together_ai", "openrouter", "deepseek", "cohere",
                   "fireworks_ai", "huggingface", "xai", "perplexity", "cerebras", "deepinfra", "ollama_chat"}


def _provider_problem(model: str) -> str | None:
    """Why `model` (PROVIDER/NAME, or local) names no provider codeclm or LiteLLM serves; else None.
    A typo here (`gpt4`, `locall`, `hosted_vlm/x`) used to validate and then fail every call."""
    provider, slash, name = model.partition("/")
    if model == "local" or (slash and name and provider in KNOWN_PROVIDERS):
        return None
    if slash and not name:
        return f"'{model}' names no model after the provider (PROVIDER/NAME)"
    if not slash:
        guess = difflib.get_close_matches(model, ["local"], n=1, cutoff=0.75)
        return f"'{model}' names no provider: write PROVIDER/NAME" + \
            (" (did you mean 'local'?)" if guess else f" (e.g. openai/{model})" if model.startswith("gpt") else "")
    import litellm  # only for a provider outside KNOWN_PROVIDERS

    providers = {str(getattr(p, "value", p)) for p in litellm.provider_list}
    if provider in providers:
        return None
    guess = difflib.get_close_matches(provider, sorted(KNOWN_PROVIDERS | providers), n=1)
    return f"unknown provider '{provider}' in '{model}'" + (f" (did you mean '{guess[0]}/{name}'?)" if guess else "")


def _url_problem(url: Any) -> str | None:
    """Why an api_base is not a server's URL (http or https, a host, a valid port); else None."""
    if not isinstance(url, str):
        return f"must be a URL, got {type(url).__name__}"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    try:
        yarl.URL(url.strip())  # as the backend will send to it: a host that IDNA cannot encode fails only here
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    return None


def _distinct(errors: list[SpecError], copies: dict[str, str]) -> list[SpecError]:
    """Each problem once. The copies of a rounds body node (generate_1, generate_2, ...: `copies` maps
    each to its body node) share its line, as an output's fields do for each node it reads: the same
    message at the same line, but for a copy's round number, says nothing new."""

    def folded(text: str | None) -> str:
        return re.sub(r"\b\w+_\d+\b", lambda m: f"{copies[m[0]]}_N" if m[0] in copies else m[0], text or "")

    seen: set[tuple[Any, ...]] = set()
    distinct = []
    for error in errors:
        key = (error.file, error.line, folded(error.message), folded(error.hint))
        if key not in seen:
            seen.add(key)
            distinct.append(error)
    return distinct


def load_spec(path: str | Path, overrides: list[str] | None = None, named_roles: Iterable[str] | None = None) -> Spec:
    """Read, override (`key.sub=value`), and check a spec. Raises SpecError(s).

    `named_roles`: the roles the command itself reads by name (evaluate's --candidate, ...). Given,
    a `--set models.ROLE...` for a role the file does not declare must be read by a node, the spec
    or the command: else it is a typo whose settings nothing would use. None: no such check."""
    path = Path(path)
    data, lines = load_with_lines(path)
    if not isinstance(data, dict):
        raise SpecError(str(path), "a spec must be a YAML mapping", line=1,
                        hint="start from the shipped spec `demo` (`codeclm init DIR` copies it)")
    declared = set(data["models"]) if isinstance(data.get("models"), dict) else set()
    data = apply_overrides(data, overrides or [], str(path))
    checker = Checker(path, data, lines, [item.partition("=")[0] for item in overrides or []])
    if named_roles is not None:
        checker.new_roles = NewRoles(declared, set(named_roles))
    return checker.build()


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
        value = load_value(raw_value, f"--set {key}")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if depth == 1 and parts[0] == "nodes" and node.get(part) is None:
                _refuse_body_node(node, part, parts, raw_value, file)
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(file, f"--set {key}: '{where}' is a {type(node[part]).__name__}, not a mapping",
                                hint=f"set '{where}' itself, e.g. --set {where}=VALUE")
            node = node[part]
        node[parts[-1]] = value
    return data


def _refuse_body_node(nodes: dict[str, Any], name: str, parts: list[str], raw_value: str, file: str) -> None:
    """`--set nodes.X.KEY=...` where X is not a top-level node but in a loop's (or rounds') body: say
    where it is, rather than make a new node X that then `needs a type`."""
    for owner, conf in nodes.items():
        body = conf.get("body") if isinstance(conf, dict) else None
        if isinstance(body, dict) and name in body:
            path = ".".join(["nodes", str(owner), "body", name, *parts[2:]])
            raise SpecError(file, f"--set {'.'.join(parts)}: node '{name}' is in the body of '{owner}'",
                            hint=f"--set {path}={raw_value}")


@dataclass
class NewRoles:
    """What a `--set models.ROLE...` may add: the roles the spec file declares, and those a command names."""

    declared: set[str]
    named: set[str]


def _text_number(value: Any) -> str | None:
    """The fix for a number YAML read as text: YAML 1.1 takes an exponent only with its sign (1.0e400 is text)."""
    if not isinstance(value, str) or "e" not in value.lower():
        return None
    try:
        float(value)
    except ValueError:
        return None
    return "YAML reads this as text: write the exponent with its sign (1.0e+2), or the number in full"


class Checker:
    """Collects every problem in a spec, each located by its YAML key path, then raises them together."""

    def __init__(self, path: Path, data: dict[str, Any], lines: dict[Path_, int], set_keys: list[str] | None = None):
        self.path, self.data, self.lines = path, data, lines
        self.errors: list[SpecError] = []
        self.copies: dict[str, str] = {}  # a rounds copy's name -> its body node's (rounds.py fills it)
        # key path -> the `--set KEY` that set it: the key only, since a value given on the command line
        # may be a credential (refused, never echoed)
        self.overridden = {tuple(key.split(".")): key for key in set_keys or []}
        self.unreadable_expressions = 0  # expressions that did not compile: what they read is unknown
        self.new_roles: NewRoles | None = None  # set by load_spec when the command checks --set roles
        self.missing_files: list[SpecError] = []  # sources whose file is not there (Spec.missing_files)

    # -- reporting -------------------------------------------------------------------------

    def error(self, where: Path_, message: str, hint: str | None = None) -> None:
        self.errors.append(self.located(where, message, hint))

    def located(self, where: Path_, message: str, hint: str | None = None) -> SpecError:
        """The error at the key `where`: its line, or the `--set` that gave it."""
        for cut in range(len(where), 0, -1):  # at or under a key a --set gave: the command line's error
            item = self.overridden.get(tuple(map(str, where[:cut])))
            if item is not None:
                return SpecError(f"--set {item}", message, hint=hint)
        named = tuple(map(str, where))
        if named not in self.lines:  # a key only a --set made (models.writr by models.writr.model=...)
            made = [item for keys, item in self.overridden.items() if keys[:len(named)] == named]
            if made:
                return SpecError(f"--set {made[0]}", message, hint=hint)
        line = None
        for cut in range(len(where), -1, -1):  # nearest enclosing key that has a line
            line = self.lines.get(where[:cut]) or self.lines.get(_as_indices(where[:cut]))
            if line:
                break
        return SpecError(str(self.path), message, line=line, hint=hint)

    def check_keys(self, where: Path_, mapping: dict[str, Any], allowed: set[str], what: str | None = None) -> None:
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
                self.error((*where, key), f"unknown key '{key}' in {what or '.'.join(map(str, where)) or 'spec'}",
                           hint)

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

    def raise_errors(self) -> None:
        if self.errors:
            raise SpecErrors(_distinct(self.errors, self.copies))

    # -- sections --------------------------------------------------------------------------

    def build(self) -> Spec:
        from .graph import build_graph  # the node language; Jinja stays off the CLI's fast path

        data = self.data
        self.check_keys((), data, TOP_KEYS)
        if "stages" in data or "refine" in data:
            self.error(("stages",) if "stages" in data else ("refine",),
                       "'stages:' and 'refine:' are the old CodecLM-only format",
                       f"write the graph under 'nodes:', as the shipped spec `codeclm` does; see {SPEC_REFERENCE}")
        calls_models = _calls_models(data.get("nodes"))
        models = self.models(self.mapping(("models",), data.get("models"), "models"), calls_models)
        params = self.mapping(("params",), data.get("params"), "params")
        for path, value in _non_finite(params, ("params",)):  # `.nan`: every comparison with it is false
            self.error(path, f"{'.'.join(map(str, path))} must be a finite number, got {value!r}: a filter or "
                       "case comparing with NaN is always false, and no count or scale is infinite",
                       "write a number, e.g. 3 or 0.5")
        prompts_dir = self.relative(str(data.get("prompts", "../prompts")))
        if not prompts_dir.is_dir() and (calls_models or "prompts" in data):
            # without the key, say so: the user named no folder, and a spec saved alone has no ../prompts
            default = "" if "prompts" in data else " (the default, ../prompts, relative to the spec)"
            self.error(("prompts",), f"prompts folder {prompts_dir} does not exist{default}",
                       "set 'prompts:' to the folder of templates, relative to the spec")
        if data.get("executor", "local") not in EXECUTORS:
            self.error(("executor",), f"executor must be one of {', '.join(EXECUTORS)}, got {data['executor']!r}")
        if not isinstance(data.get("seed", 0), int) or isinstance(data.get("seed", 0), bool):
            self.error(("seed",), "seed must be an integer")
        for key, what in (("description", "free text"), ("cache", "a folder"), ("prompts", "a folder")):
            if data.get(key) is not None and not isinstance(data[key], str):  # `cache: [1]` made a folder "[1]"
                self.error((key,), f"{key} must be text ({what}), got {data[key]!r}"[:200])
        name = self.name()
        if name.strip() in ("", ".") or ".." in name or "/" in name or "\\" in name or not name.isprintable():
            self.error(("name",), f"name must be a plain name (it names the run folder runs/NAME), got {name!r}",
                       "a name is not a path: no '/', '\\' or '..'; pass --out DIR to write elsewhere")
        elif len(name.encode("utf-8", "replace")) > 200:  # runs/NAME-eval-ROLE must stay a file name (255 bytes)
            self.error(("name",), f"name is {len(name.encode('utf-8', 'replace'))} bytes long: it names the run "
                       "folder runs/NAME, and a file name holds 255 bytes", "shorten it to 200 bytes or less")
        if not prompts_dir.is_dir() and calls_models:
            self.raise_errors()
        graph = build_graph(self, models, params, prompts_dir)
        budget = check_budget(self, data.get("budget"), models)
        from ..tuning.config import check_optimize

        optimize = check_optimize(self, data.get("optimize"), graph, models)
        self.unread_set_roles(graph, optimize, budget)
        self.raise_errors()
        return Spec(path=self.path, name=name, seed=int(data.get("seed", 0)),
                    prompts_dir=prompts_dir,
                    cache_dir=self.relative(str(data["cache"])) if data.get("cache") else None,
                    models=models, params=params, graph=graph, raw=data, budget=budget,
                    optimize=optimize, executor=str(data.get("executor", "local")),
                    missing_files=self.missing_files)

    def unread_set_roles(self, graph: Any, optimize: dict[str, Any], budget: Any) -> None:
        """A `--set models.stong.model=...` (a typo of `strong`) made a new role nothing reads, and every
        node still went to the spec's model (maybe a paid one): refuse a role the file does not declare
        unless a node, the spec's optimize:/budget: or the command reads it."""
        if self.new_roles is None:
            return
        read = {node.model for node in graph.model_nodes()} | self.new_roles.named
        read |= {m.settings.get("model") for tuning in optimize.values() for m in tuning.metrics.values()}
        read |= set(budget.per_model) if budget is not None else set()
        declared = sorted(self.new_roles.declared)
        reported: set[str] = set()
        for parts, key in self.overridden.items():
            role = parts[1] if len(parts) > 1 and parts[0] == "models" else None
            if role is None or role in self.new_roles.declared or role in read or role in reported:
                continue
            reported.add(role)
            close = difflib.get_close_matches(role, declared, n=1)
            # what else was said of this role's settings (it "needs a 'model' string") follows from the typo
            self.errors[:] = [e for e in self.errors if not str(e.file).startswith(f"--set models.{role}.")]
            self.errors.append(SpecError(
                f"--set {key}", f"model role '{role}' is not in {self.path.name}, and no node reads it",
                hint=(f"did you mean '{close[0]}'? " if close else "")
                + f"the spec's roles: {', '.join(declared) or 'none'}"
                f"; a new role needs a node to read it, e.g. --set nodes.NODE.model={role}"))

    def name(self) -> str:
        """The spec's name: the file's stem when `name:` is absent. `name:` left empty is YAML's null,
        and a number is not text: taken as they were, they named the run folder runs/None."""
        name = self.data.get("name", self.path.stem)
        if isinstance(name, str):
            return name
        self.error(("name",), "name is empty" if name is None else f"name must be text, got {name!r}",
                   "give the run a name, e.g. name: demo (quote one that YAML reads otherwise: name: '2024'), "
                   "or delete the line to use the file's name")
        return self.path.stem

    def models(self, raw: dict[str, Any], needed: bool) -> dict[str, ModelSpec]:
        models = {}
        if not raw and needed:
            self.error(("models",), "no models declared", "declare at least `models: {strong: {model: local}}`")
        for role, conf in raw.items():
            spec = self.model(role, conf)
            if spec is not None:
                models[role] = spec
        return models

    def model(self, role: Any, conf: Any) -> ModelSpec | None:
        """One role's model, checked; None when it cannot be built (the errors say why)."""
        from .nodes import path_like  # with the rest of the language, below

        where = ("models", role)
        if path_like(str(role)):
            self.error(where, f"model role {str(role)!r} is not a plain name",
                       "name roles like variables: letters, digits and _ (e.g. strong)")
            return None
        conf = self.mapping(where, {"model": conf} if isinstance(conf, str) else conf, f"model '{role}'")
        self.check_keys(where, conf, MODEL_KEYS | {"api_key"})  # api_key gets its own message below
        if "api_key" in conf:
            self.error((*where, "api_key"), "API keys never go in a spec",
                       "export the key in the environment; name the variable with api_key_env")
        self.credentials(where, conf)
        if not check_price(self, (*where, "price"), conf.get("price")):
            conf = {k: v for k, v in conf.items() if k != "price"}
        model = conf.get("model")
        if not isinstance(model, str) or not model:
            self.error(where, f"model '{role}' needs a 'model' string",
                       "e.g. local, openai/gpt-4o-mini, gemini/gemini-1.5-pro, hosted_vllm/NAME")
            return None
        self.endpoint(where, role, model, conf)
        try:
            spec = ModelSpec(role=role, **{k: v for k, v in conf.items() if k in MODEL_KEYS})
        except TypeError as exc:
            self.error(where, f"bad model settings: {exc}")
            return None
        self.model_numbers(where, spec)
        if not isinstance(spec.extra, dict):
            self.error((*where, "extra"), f"extra must be a mapping of decoding parameters, got {spec.extra!r}",
                       "e.g. extra: {presence_penalty: 0.5}")
            spec.extra = {}
        for path, value in _non_finite(spec.extra, (*where, "extra")):
            self.error(path, f"{'.'.join(map(str, path[len(where):]))} must be a finite number, got {value!r}: "
                       "a request cannot carry it as JSON", "give a number, or leave the key out")
        spec.line = self.lines.get(where)
        return spec

    def endpoint(self, where: Path_, role: Any, model: str, conf: dict[str, Any]) -> None:
        """The provider prefix is one codeclm knows, and a server's api_base is there and a URL."""
        if (problem := _provider_problem(model)) is not None:
            self.error((*where, "model"), f"model '{role}': {problem}",
                       "local (the embedded model), openai/gpt-4o-mini, hosted_vllm/NAME with api_base, "
                       f"ollama/NAME, gemini/..., anthropic/... (Models in {CODECLM_README})")
        elif model.startswith("hosted_vllm/") and not conf.get("api_base"):
            self.error(where, f"model '{role}' ({model}) needs api_base", "e.g. api_base: http://127.0.0.1:8000/v1")
        elif conf.get("api_base") is not None and (problem := _url_problem(conf["api_base"])):
            self.error((*where, "api_base"), f"api_base {problem}", "e.g. api_base: http://127.0.0.1:8000/v1")

    def model_numbers(self, where: Path_, spec: ModelSpec) -> None:
        """Decoding and serving numbers in range, one message per setting."""
        reported = set()
        for key in ("temperature", "max_tokens", "concurrency", "timeout", "retries"):
            value = getattr(spec, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
                self.error((*where, key), f"{key} must be a non-negative number, got {value!r}", _text_number(value))
                reported.add(key)
        # no model writes or reads a million tokens at once; more only made the dry run's estimate
        # build that much text (an OverflowError past the index size)
        # concurrency: asyncio.Semaphore(0.0) let no call through, and the run waited forever at 0 calls
        for key, whole, low, high in (("max_tokens", True, 1, 1_000_000), ("retries", True, 0, 100),
                                      ("concurrency", True, 1, None),
                                      ("n_ctx", True, 1, 1_000_000), ("timeout", False, 0, None),
                                      ("top_p", False, 0, 1), ("rpm", False, 0, None)):
            value = getattr(spec, key)
            if (value is None and key in ("top_p", "rpm")) or key in reported:
                continue
            number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
            if not number or not (low <= value < math.inf) or (high is not None and value > high) \
                    or (key in ("timeout", "rpm") and value == 0):
                span = f"from {low} to {high}" if high is not None else \
                    f"{'above' if key in ('timeout', 'rpm') else 'at least'} {low}"
                self.error((*where, key), f"{key} must be {'a whole number' if whole else 'a number'} {span}, "
                           f"got {value!r}")

    def credentials(self, where: Path_, conf: dict[str, Any]) -> None:
        """Keys come from the environment only: refuse one in `extra:` (any key named like a
        credential, any value shaped like a key, however deep) or in api_base (user:password@,
        a key in the query). Refused, not stripped: stripping would change what the server gets,
        and the key would stay in a file that gets shared. Messages never repeat the value."""
        from ..redact import credential_keys, register_key_env, url_credentials

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


def _as_indices(where: Path_) -> Path_:
    """`where` with its number parts as list indices: an expression's key (`cases.2.when`) names a list
    item by its number, which the spec's lines key as an int (a mapping key "2" stays text, found first)."""
    return tuple(int(part) if isinstance(part, str) and part.isdecimal() and part.isascii() else part
                 for part in where)


def _non_finite(value: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], float]]:
    """(path, value) for each NaN or infinity in a value (a model's `extra:`, params), however deep."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _non_finite(item, (*path, key))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _non_finite(item, (*path, index))]
    return []


def _calls_models(nodes: Any) -> bool:
    """Whether a spec's nodes call models (an llm or judge node, or anything with a template, loop
    bodies too). A spec that only reads, mixes, filters and dedups records needs no models: and no
    prompts folder. Nodes this cannot read are taken to call models (their own errors say why)."""
    if isinstance(nodes, list):
        return any(_calls_models(item) for item in nodes)
    if not isinstance(nodes, dict):
        return nodes is not None and not isinstance(nodes, (str, int, float, bool))
    if nodes.get("type") in ("llm", "judge") or "template" in nodes or "model" in nodes:
        return True
    return any(_calls_models(value) for key, value in nodes.items()
               if isinstance(value, (dict, list)) and key != "records")  # a source's inline records are data

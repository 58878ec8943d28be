"""Jinja templates that render a stage's chat messages, in a sandbox.

A template emits messages with call blocks, so text from seeds or models is never
split or re-parsed as markup:

    {% call message("user") %}Hello {{ name }}{% endcall %}

The optimizable instructions live in `{% block instructions %}`: the block's text is
the default, and a stage renders `{{ instructions }}` when DSPy changed them.
"""

from __future__ import annotations

import difflib
import re
import sys
from functools import cached_property, lru_cache, partial
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.runtime import Macro
from jinja2.utils import missing, object_type_repr

from ..errors import SpecError
from .expressions import RANGED, Sandbox
from .yaml_lines import decode_utf8

ROLES = ("system", "user", "assistant")


class TemplateMissing(SpecError):
    """A stage names a template the prompts folder does not hold."""


class TemplateStore:
    """Loads templates from one folder and reports problems with file and line."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.env = _environment(str(self.folder))

    def get(self, name: str) -> StageTemplate:
        return _load(self, name)

    def path_of(self, name: str) -> Path:
        return self.folder / name


# What a plain dict answers as attributes: any other name is one of its keys, or undefined.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _TemplateSandbox(Sandbox):
    """The expressions' sandbox, with direct paths for what every template does: `message(...)`, a
    call of its own macro, and `value.name` on a plain dict (a demo, an example)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Jinja's getattr tries the attribute first: on a dict, each read raised and caught an
        AttributeError (most of the read's cost) before it read the key, as this does at once."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # Jinja's own signature
        """`message` as the expressions' sandbox calls codeclm's own callables; a template's macro as
        Jinja's Context.call does (eval context first): a Macro is Jinja's and always safe to call,
        and the checks of a foreign callable on the way were most of the call's cost."""
        kind = type(__obj)
        if kind is _Messages or kind is Macro:
            kwargs.pop("_block_vars", None)  # what Jinja's Context.call drops before calling
            kwargs.pop("_loop_vars", None)
            if kind is _Messages:
                return __obj(*args, **kwargs)
            try:
                return __obj(__context.eval_ctx, *args, **kwargs)
            except StopIteration:
                return __context.environment.undefined(
                    "value was undefined because a callable raised a StopIteration exception")
        return super().call(__context, __obj, *args, **kwargs)


@lru_cache(maxsize=64)
def _environment(folder: str) -> Sandbox:
    """One sandbox per prompts folder, shared by every store of it: a template is compiled once per
    process (Jinja's cache recompiles it when its file changes), not once per node and per check."""
    return _TemplateSandbox(
        loader=jinja2.FileSystemLoader(folder),
        undefined=_Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


@lru_cache(maxsize=256)
def _load(store: TemplateStore, name: str) -> StageTemplate:
    try:
        return StageTemplate(name, store.env.get_template(name), store.path_of(name))
    except jinja2.TemplateNotFound:
        raise TemplateMissing(str(store.path_of(name)), f"template '{name}' not found in {store.folder}",
                              hint=f"templates in {store.folder}: {_templates_in(store.folder)}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise SpecError(exc.filename or str(store.path_of(name)), f"template syntax error: {exc.message}",
                        line=exc.lineno, hint=_syntax_hint(exc.message or "", store.env)) from None
    except UnicodeDecodeError:  # a template that is not UTF-8: the same located error as a spec's
        decode_utf8(store.path_of(name).read_bytes(), str(store.path_of(name)))
        raise
    except (RecursionError, SyntaxError, MemoryError):  # thousands of nested {% if %}, 200 terms of `+`
        raise SpecError(str(store.path_of(name)), "template too long or nested too deeply to compile",
                        hint="a prompt needs a few levels of {% if %} and {% for %}, not thousands") from None


class StageTemplate:
    """One compiled template: renders messages and knows its default instructions."""

    def __init__(self, name: str, template: jinja2.Template, path: Path):
        self.name, self.template, self.path = name, template, path
        self.source = path.read_text(encoding="utf-8")
        # Only a template that can call range (itself, or a template it pulls in) counts its ranges per
        # render: the shipped ones do not, and counting costs every render of theirs nothing then.
        self.counts_ranges = any(word in self.source for word in ("range", "include", "import", "extends"))

    def __deepcopy__(self, memo: dict[int, Any]) -> StageTemplate:
        return self  # compiled and never changed; DSPy deep-copies modules that hold one

    @cached_property
    def variables(self) -> set[str]:
        """The names the template reads (its inputs, and the names every template is given)."""
        return meta.find_undeclared_variables(self.template.environment.parse(self.source))

    @property
    def default_instructions(self) -> str:
        block = self.template.blocks.get("instructions")
        if block is None:
            return ""
        try:
            return "".join(block(self.template.new_context({}))).strip()
        except Exception as exc:  # noqa: BLE001 - the block is fixed text: any error in it is the template's
            raise SpecError(str(self.path), f"the instructions block does not render on its own: "
                            f"{type(exc).__name__}: {exc}", line=_block_line(self.template, exc),
                            hint="keep {% block instructions %} plain text (it is the default the optimizer tunes)") \
                from None

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Render to chat messages. Variables are data: their text is never evaluated as Jinja."""
        messages = _Messages(self.path)
        template = self.template
        ranged = RANGED.set([0]) if self.counts_ranges else None  # counted together: expressions.bounded_range
        try:
            # Template.render's own steps, with the context's variables copied once, here, not three times
            # (ours, render's dict(), new_context's dict(globals, **vars)): shared=True takes this dict as the
            # context's parent as it is, and it holds what that parent would, the globals overlaid by the vars.
            context = template.new_context({**template.globals, **variables, "message": messages}, shared=True)
            try:
                template.environment.concat(template.root_render_func(context))
            except Exception:  # noqa: BLE001 - re-raised by Jinja with the template's lines in its traceback
                template.environment.handle_exception()
        except jinja2.UndefinedError as exc:
            line = _template_line(exc)
            raise SpecError(str(self.path), f"template uses an undefined variable: {exc.message}", line=line,
                            hint=self._undefined_hint(exc, variables, line)) from None
        except jinja2.TemplateNotFound as exc:  # an {% include %} or {% import %} of a file not there
            raise SpecError(str(self.path), f"template failed to render: it includes '{exc.name}', which is not in "
                            f"{self.path.parent}", line=_template_line(exc),
                            hint=f"templates there: {_templates_in(self.path.parent)}") from None
        except jinja2.TemplateError as exc:
            raise SpecError(str(self.path), f"template failed to render: {exc}", line=_template_line(exc)) from None
        except SpecError:
            raise
        except Exception as exc:  # noqa: BLE001 - 1/0, int('x'), ...: the template's error, with its line
            raise SpecError(str(self.path), f"template failed to render: {type(exc).__name__}: {exc}",
                            line=_template_line(exc)) from None
        finally:
            if ranged is not None:
                RANGED.reset(ranged)
        if not messages.made:
            raise SpecError(str(self.path), "template rendered no messages",
                            hint='wrap the prompt in {% call message("user") %}...{% endcall %}')
        return messages.made

    def _undefined_hint(self, exc: jinja2.UndefinedError, variables: dict[str, Any], line: int | None) -> str:
        """The fix of an undefined name: the variables given; or, for a field a value lacks
        (`demo.answer`), which variable lacks it and the fields it has, which the variables don't say."""
        if not isinstance(exc, _UndefinedUse) or exc.owner is missing:
            return f"variables given: {', '.join(sorted(variables))}"
        lines = self.source.splitlines()
        owner = _owner_of(exc.name, lines[line - 1]) if line and line <= len(lines) else None
        what = f"{owner or 'the value'} has no field {exc.name!r}"
        if not isinstance(exc.owner, dict):
            return f"{what}: it is {object_type_repr(exc.owner)}"
        fields = ", ".join(sorted(map(str, exc.owner))[:30]) or "none"
        if any(exc.owner is demo for demo in variables.get("demos") or ()):  # a demo: the node's inputs, outputs
            return (f"{what}; a demo holds the node's inputs and outputs by name: {fields}; read one of these, "
                    f"or name an output {exc.name!r} (outputs: [...])")
        return f"{what}; its fields: {fields}"


class _UndefinedUse(jinja2.UndefinedError):
    """Jinja's undefined error, keeping the value that lacks the name (Jinja's keeps only a message)."""

    def __init__(self, message: str | None = None, owner: Any = missing, name: Any = None):
        super().__init__(message)
        self.owner, self.name = owner, name


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined whose error is an _UndefinedUse, for the hint."""

    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None,
                 exc: Any = jinja2.UndefinedError):
        if exc is jinja2.UndefinedError:
            exc = partial(_UndefinedUse, owner=obj, name=name)
        super().__init__(hint, obj, name, exc)


def _templates_in(folder: Path) -> str:
    """The templates a folder holds, for a hint ("none" for none)."""
    return ", ".join(sorted(p.name for p in folder.glob("*.jinja"))) or "none"


def _syntax_hint(message: str, env: jinja2.Environment) -> str:
    """The fix of a template syntax error: the filter or test meant, for an unknown one; else the tags."""
    unknown = re.match(r"No (filter|test) named '([^']+)'", message)
    if unknown:
        kind, name = unknown.groups()
        known = env.filters if kind == "filter" else env.tests
        close = difflib.get_close_matches(name, sorted(known), n=1)
        return f"did you mean '{close[0]}'?" if close else f"{kind}s: {', '.join(sorted(known))}"
    return "check the {% %} and {{ }} tags on this line"


def _owner_of(name: Any, line: str) -> str | None:
    """The variable read as `VAR.name` or `VAR['name']` on a template line, or None."""
    field = re.escape(str(name))
    match = re.search(rf"([A-Za-z_]\w*)\s*(?:\.\s*{field}\b|\[\s*['\"]?{field}['\"]?\s*\])", line)
    return match.group(1) if match else None


class _Messages:
    """A template's `message(role)` call block: each call adds the block's text as one chat message.
    The sandbox calls it directly (`trusted_call`): it is codeclm's own, and Jinja's checks of a
    callable were a fifth of a small template's render."""

    trusted_call = True
    __slots__ = ("path", "made")

    def __init__(self, path: Path):
        self.path, self.made = path, []

    def __call__(self, role: str, caller: Any) -> str:
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), list(ROLES), n=1)
            raise SpecError(str(self.path), f"message role {role!r} is not one of {ROLES}", line=_calling_line(),
                            hint=(f"did you mean '{close[0]}'? " if close else "")
                            + f"write {{% call message(\"{close[0] if close else ROLES[0]}\") %}}...{{% endcall %}}")
        # A call block's body that takes nothing and escapes nothing is called directly: Jinja's
        # Macro.__call__ would only sort its (no) arguments and return the body's text, at a third
        # of the cost of the whole `message(...)` call.
        if type(caller) is Macro and not (caller._argument_count or caller.caller or caller.catch_kwargs
                                          or caller.catch_varargs or caller._default_autoescape):
            content = caller._func().strip()
        else:
            content = caller().strip()
        if content:
            self.made.append({"role": role, "content": content})
        return ""


def _calling_line() -> int | None:
    """The template line of the template code calling now (as Jinja's debug rewriting finds it)."""
    frame = sys._getframe(1)
    while frame is not None:
        template = frame.f_globals.get("__jinja_template__")
        if template is not None:
            return template.get_corresponding_lineno(frame.f_lineno)
        frame = frame.f_back
    return None


def _block_line(template: jinja2.Template, exc: BaseException) -> int | None:
    """The template line of an error raised in a block called directly (Jinja has not rewritten it)."""
    line = _template_line(exc)
    return template.get_corresponding_lineno(line) if line else None


def _template_line(exc: BaseException) -> int | None:
    """The template line of a render error, read from the traceback Jinja rewrites."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(".jinja"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line

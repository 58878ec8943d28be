"""Expressions: the YAML values that compute (conditions, counts, fields, messages).

An expression is Jinja expression syntax without braces (`judge.gap > params.threshold`),
compiled once in Jinja's immutable sandbox with strict undefined, and evaluated to a native
value. It is never Python `eval`. Before anything runs, `Expression.references()` lists the
names it reads (`judge.gap` -> ("judge", "gap")) so the graph can check every reference, and
`check_sandbox` refuses what reaches for Python internals or mutates data.
"""

from __future__ import annotations

import contextvars
import functools
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2
import orjson
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from .rouge import rouge_l, words

# What the ranges of one template render have made so far ([items]), or None outside a render.
RANGED: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("ranged", default=None)


def bounded_range(*args: int) -> range:
    """Jinja's sandboxed `range` (at most 100,000 items), and within one template render at most MAX_MADE
    items over all its ranges: `range(100000)` inside `range(100000)` looped for hours."""
    made = safe_range(*args)
    ranged = RANGED.get()
    if ranged is not None:
        ranged[0] += len(made)
        if ranged[0] > MAX_MADE:
            raise SecurityError(f"the template's ranges make more than {MAX_MADE:,} items in all (nested loops?)")
    return made


# Functions every expression may call, besides Jinja's own filters and tests. `range` is Jinja's
# sandboxed one, capped as in templates: Python's made `range(10**9) | list` a MemoryError.
HELPERS: dict[str, Any] = {
    "ceil": math.ceil, "floor": math.floor, "min": min, "max": max, "len": len, "abs": abs, "round": round,
    "sum": sum, "sorted": sorted, "range": bounded_range, "words": words,
    "rouge_l": rouge_l,
}
_MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault", "popitem", "sort",
             "reverse", "add", "discard"}
_FORMATTERS = {"format", "format_map"}  # a format string can read attributes: "{0.__class__}"
# Filters whose string arguments name attributes (or, for map, a filter and its arguments).
_ATTRIBUTE_FILTERS = {"attr", "map", "selectattr", "rejectattr", "sort", "groupby", "sum", "unique", "min", "max"}


MAX_MADE = 1_000_000  # items a `*` may repeat into, or digits a `**` may make: a prompt, not a memory bomb


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with each template's globals as one plain dict. Jinja copies the
    globals into every render's context, and copying its default ChainMap costs four times more
    (most of a small expression's evaluation). Globals are set up before anything compiles and never
    change after, so the snapshot is safe.

    `*` and `**` are checked before they compute (Jinja caps `range` alone): `"x" * 10**10` took
    all the memory of the machine, and `10 ** 10**9` would compute for hours. What `*` repeats is
    counted whole (`[text] * n` repeats the text n times once joined). Each computed value is
    checked after (`checked_size`), so what a loop's state grows to step by step stays bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.globals["range"] = bounded_range
        for name, size in _FILTER_SIZES.items():  # filters that can make text far larger than their input
            self.filters[name] = _bounded(f"|{name}", self.filters[name], size)

    def make_globals(self, d: Any) -> Any:
        return {**self.globals, **(d or {})}

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # Jinja's own signature
        """A str method that can make text far larger than its input (`x.center(10**9)`) is checked first.
        codeclm's own callables (a class with `trusted_call`: a template's `message`) are called directly."""
        if getattr(type(__obj), "trusted_call", False):
            kwargs.pop("_block_vars", None)  # what Jinja's Context.call drops before calling
            kwargs.pop("_loop_vars", None)
            return __obj(*args, **kwargs)
        size = _STR_METHOD_SIZES.get(getattr(__obj, "__name__", "")) if isinstance(
            getattr(__obj, "__self__", None), str) else None
        if size is not None:
            _refuse_past_limit(f".{__obj.__name__}()", _estimate(size, __obj.__self__, *args, **kwargs))
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`x.name`. Jinja's sandbox tries the attribute first and the item after; where no object of
        the type can have that attribute (a record's view, a dict's field), the item is read directly,
        without the AttributeError each such read raised and caught first (most of a small
        expression's evaluation). What it returns is the same either way."""
        if not _attribute_free(type(obj), attribute):
            return super().getattr(obj, attribute)
        try:
            return obj[attribute]
        except (TypeError, LookupError):
            return self.undefined(obj=obj, name=attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                        and (size := made_size(seq)) * times > MAX_MADE:
                    raise SecurityError(f"repeating a value of {size:,} items {times:,} times makes more than "
                                        f"{MAX_MADE:,}")
        elif isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 \
                and right * math.log10(abs(left)) > MAX_MADE:
            raise SecurityError(f"{left} ** {right} has more than {MAX_MADE:,} digits")
        return super().call_binop(context, operator, left, right)


def _width(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else len(str(value))


def _replaced_size(text: str, old: Any, new: Any, count: Any = None) -> int:
    times = text.count(str(old)) if str(old) else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(text) + times * (len(str(new)) - len(str(old)))


def _joined_size(separator: Any, items: Any) -> int:
    return made_size(items) + len(str(separator)) * len(items) if isinstance(items, (list, tuple)) else 0


def _batched_size(items: Any, count: Any, fill_with: Any) -> int:
    size, count = made_size(items), _width(count)
    if fill_with is None or count < 1:
        return size
    # The last batch is filled up to count items, each the filler again (`'x' * 500` counted 500 times).
    return size + count * (1 + made_size(fill_with)) + len(items) // count + 1


def _sliced_size(items: Any, slices: Any, fill_with: Any) -> int:
    """`slice` makes `slices` lists and pads each short one with the filler once."""
    width = _width(slices)
    return made_size(items) + width * (1 + (made_size(fill_with) if fill_with is not None else 0))


def _formatted_size(text: Any, *args: Any, **kwargs: Any) -> int:
    """`"%10s" | format(x)`: the text, its arguments, and every width or precision it asks for."""
    text = str(text)
    widths = sum(int(n) for n in re.findall(r"%[#0 +\-]*(\d+)", text) + re.findall(r"%[#0 +\-\d]*\.(\d+)", text))
    stars = sum(abs(a) for a in args if isinstance(a, int)) if "*" in text else 0
    return len(text) + made_size([*args, *kwargs.values()]) + widths + stars


# (the filter's or method's own arguments) -> the size of what it would make, checked before it runs
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": lambda value, width=80, *_: max(len(str(value)), _width(width)),
    "indent": lambda text, width=4, *_, **__: len(str(text)) + _width(width) * (str(text).count("\n") + 1),
    "join": lambda _ctx, items, separator="", *_, **__: _joined_size(separator, items),
    "replace": lambda _ctx, text, old, new, count=None: _replaced_size(str(text), old, new, count),
    "format": _formatted_size,
    # `[1] | batch(10**9, 'x')` fills one batch up to 10**9 items; `[1] | slice(10**9)` makes 10**9 lists
    "batch": lambda items, count, fill_with=None: _batched_size(items, count, fill_with),
    "slice": lambda _ctx, items, slices, fill_with=None: _sliced_size(items, slices, fill_with),
}
_STR_METHOD_SIZES: dict[str, Callable[..., int]] = {
    **{name: (lambda text, width, *_: max(len(text), _width(width))) for name in ("center", "ljust", "rjust")},
    "zfill": lambda text, width: max(len(text), _width(width)),
    "expandtabs": lambda text, tabsize=8: len(text) + text.count("\t") * _width(tabsize),
    "replace": lambda text, old, new, count=-1: _replaced_size(text, old, new, count),
    "join": _joined_size,
}


def _estimate(size: Callable[..., int], *args: Any, **kwargs: Any) -> int:
    """The size a call would make; 0 where its arguments do not fit it (the call itself then says why)."""
    try:
        return size(*args, **kwargs)
    except (TypeError, ValueError):
        return 0


def _refuse_past_limit(what: str, size: int) -> None:
    if size > MAX_MADE:
        raise SecurityError(f"{what} would make {size:,} characters, more than {MAX_MADE:,}")


def _bounded(what: str, function: Callable[..., Any], size: Callable[..., int]) -> Callable[..., Any]:
    """`function` (a Jinja filter; its pass_context marks kept by wraps), refused where it would make more
    than MAX_MADE."""
    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _refuse_past_limit(what, _estimate(size, *args, **kwargs))
        return function(*args, **kwargs)

    return bounded


def made_size(value: Any, limit: int = MAX_MADE) -> int:
    """Characters and items in a value, lists and mappings inside it counted too; counting stops
    once past `limit`, so a large value costs no more than the limit to measure."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item)
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            stack += item
        else:
            total += 1
    return total


def checked_size(value: Any, source: str) -> Any:
    """A computed value, refused past MAX_MADE: a loop's `next: {s: "state.s ~ state.s"}` doubled its
    text each iteration until the machine ran out of memory. A SecurityError: the node or output
    fails on that record (recorded, with this message), and the run goes on."""
    if (isinstance(value, str) and len(value) > MAX_MADE) or \
            (isinstance(value, (list, tuple, dict, set, frozenset)) and not _surely_small(value)
             and made_size(value) > MAX_MADE):
        raise SecurityError(f"{source!r} made a value of more than {MAX_MADE:,} characters and items")
    return value


def _surely_small(value: Any) -> bool:
    """Whether a value's JSON text is at most MAX_MADE bytes, which bounds its `made_size` (a text's
    characters are at most its bytes; each item, key or number takes at least one byte, and a list's
    commas and brackets outnumber its items). Serialized in C, it costs a fraction of walking the
    value in Python, and most computed lists are small (a record's calls); what JSON cannot write
    (sets, large ints, other objects) is walked. The text is made whole before it is measured, so it
    relies on every filter that repeats a value (`*`, `batch`, `slice`) refusing past MAX_MADE first:
    what is left to repeat an input is the expression's own literal items."""
    try:
        return len(orjson.dumps(value)) <= MAX_MADE
    except orjson.JSONEncodeError:
        return False


class _Undefined(jinja2.StrictUndefined):
    """Jinja's strict undefined, whose message for a field a record lacks names the record's node
    and field (its object's `missing_field`) instead of the class codeclm keeps records in:
    "'codeclm.programs.engine.records._RecordView object' has no attribute 'label'"."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        describe = getattr(type(self._undefined_obj), "missing_field", None)
        if self._undefined_hint is None and describe is not None and isinstance(self._undefined_name, str):
            return describe(self._undefined_obj, self._undefined_name)
        return super()._undefined_message


_ENV = Sandbox(undefined=_Undefined)
_ENV.globals.update(HELPERS)


_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_CONSTANTS = {"true", "false", "none", "True", "False", "None"}
ABSENT = object()  # what `Expression.present` gives for a value that does not exist


class ExpressionError(ValueError):
    """An expression that does not compile, or reaches outside the sandbox (message says which)."""


@dataclass(frozen=True)
class Reference:
    """A name an expression reads: `judge.gap` is Reference("judge", "gap"); `state` alone has field None."""

    root: str
    field: str | None


class Expression:
    """One compiled expression; `source` is the YAML text, kept for messages and `graph`."""

    def __init__(self, source: str):
        self.source = source
        if not source.strip():  # `where: ""`: Jinja reads `( )` as an empty tuple, always false
            raise ExpressionError("an empty expression: write one, or quote a text as 'text'")
        try:
            tree = _ENV.parse(f"{{{{ ({source}) }}}}")
            check_sandbox(tree, f"expression {source!r}")
            self._references = _references(tree)
            # bare, as written: `1, 2` or `a) ~ (b` parse only inside the parentheses above, and are refused
            self._compiled = _ENV.compile_expression(source, undefined_to_none=False)
        except jinja2.TemplateSyntaxError as exc:
            raise ExpressionError(f"expression {source!r} does not parse: {exc.message}") from None
        except (RecursionError, SyntaxError, MemoryError):  # 500 nested parentheses; 200 terms of `+`
            raise ExpressionError(f"expression {source[:60]!r}... is too long or nested too deeply to "
                                  "compile") from None
        self.numeric_params = _numeric_params(tree)  # params this expression compares or computes with
        # Most expressions are a plain path (`augment.use_case`): read it directly, the way the
        # sandbox reads it (an item of a mapping), without a Jinja context per evaluation.
        path = source.strip()
        self._path = path.split(".") if _PATH.match(path) and path not in _CONSTANTS else None
        self._root, self._fields = (self._path[0], tuple(self._path[1:])) if self._path else ("", ())
        # A literal (`'kept'`, `3`, `true`) has one value: kept, not computed by a Jinja context each time.
        output = tree.body[0]
        literal = output.nodes[0] if isinstance(output, nodes.Output) and len(output.nodes) == 1 else None
        self._literal = (literal.value,) if isinstance(literal, nodes.Const) else None  # (value,): `none` is one too
        # A comparison or sum of paths (`judge.gap > params.threshold`, `state.actions + [action.value]`):
        # computed directly, as Jinja's code would: a Jinja context per evaluation cost three times as much.
        self._direct = _direct(literal) if literal is not None and self._path is None and self._literal is None \
            else None

    def references(self) -> list[Reference]:
        return self._references

    def roots(self) -> set[str]:
        return {ref.root for ref in self._references}

    def evaluate(self, scope: dict[str, Any]) -> Any:
        """The value in `scope`; raises jinja2.UndefinedError when a name or field has no value."""
        value = self.present(scope)
        if value is ABSENT:
            if self._path and len(self._path) > 1 and self._path[0] not in scope:
                return self._compiled(scope)  # raises Jinja's own error for the undefined name
            raise jinja2.UndefinedError(f"{self.source!r} has no value here")
        return value

    def present(self, scope: dict[str, Any]) -> Any:
        """As `evaluate`, but ABSENT, not an exception, when a plain path has no value (or names a
        node that did not run): outputs and loop traces leave such keys out, and meet many."""
        if self._path is not None:
            value = scope.get(self._root, ABSENT)
            if value is ABSENT and self._root not in _ENV.globals:
                return ABSENT  # Jinja would fail on an undefined name, or on any field of one
            for name in self._fields:
                if not _READ_BY_ITEM[type(value)]:  # ABSENT too: a bare object has no items
                    break
                try:
                    value = value[name]
                except (KeyError, TypeError):
                    value = ABSENT
            else:
                return value
        if self._literal is not None:
            return self._literal[0]
        if self._direct is not None:
            value = self._direct(scope)
            if value is not ABSENT:
                return checked_size(value, self.source)
        return checked_size(self._compiled(scope), self.source)  # not **scope: Jinja copies the mapping anyway

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@functools.cache  # per type and name: the types and names of a run's expressions and templates are few
def _attribute_free(kind: type, attribute: str) -> bool:
    """Whether `getattr(x, attribute)` surely fails for every x of this type: attributes looked up the
    generic way, no `__getattr__`, no instance dict, and no such name on the class (or its metaclass)."""
    return kind.__getattribute__ is object.__getattribute__ and not hasattr(kind, "__getattr__") \
        and not kind.__dictoffset__ and not hasattr(kind, attribute)


class _PerType(dict):
    """`memo[kind]`: `compute(kind)`, computed once per type. A dict's own item lookup costs half a
    functools.cache call (which makes and hashes a key tuple for every call), and a plain path reads
    one per field, some ten per served call."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[type], Any]):
        super().__init__()
        self.compute = compute

    def __missing__(self, kind: type) -> Any:
        self[kind] = found = self.compute(kind)
        return found


def _read_by_item(kind: type) -> bool:
    """Whether a plain path reads a field of a value of this type as an item, the way the sandbox does; a
    text, list or tuple has no named fields (`x.upper` is a method: Jinja reads it)."""
    return hasattr(kind, "__getitem__") and not issubclass(kind, (str, list, tuple))


# per type: a bound `__getitem__` made and dropped for every field read cost more than the read
_READ_BY_ITEM = _PerType(_read_by_item)


Direct = Callable[[dict[str, Any]], Any]
# Jinja writes these as Python's own operators (the sandbox intercepts only `*` and `**`)
_OPERATORS: dict[type[nodes.Node] | str, Callable[[Any, Any], Any]] = {
    nodes.Add: operator.add, nodes.Sub: operator.sub, "eq": operator.eq, "ne": operator.ne, "gt": operator.gt,
    "gteq": operator.ge, "lt": operator.lt, "lteq": operator.le, "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def _direct(node: nodes.Node) -> Direct | None:
    """A function of the scope computing `node` as the code Jinja compiles for it does, in the same order,
    or None for a node it does not cover: a name, a field, a scalar literal, a list, `-x`, `a + b`,
    `a - b` and one comparison, each of which Jinja compiles to the same plain Python. A name or field
    the scope lacks, or one the sandbox would read as an attribute, gives ABSENT at once: the compiled
    expression then computes the whole (the parts read before are only read, never changed)."""
    if isinstance(node, nodes.Const):
        value = node.value
        return (lambda scope: value) if isinstance(value, (str, int, float, type(None))) else None
    if isinstance(node, nodes.Name):
        # Jinja binds `self` itself at a template's root, and an expression's value is stored as `result`
        name = node.name
        return (lambda scope: scope.get(name, ABSENT)) if node.ctx == "load" and name not in ("self", "result") \
            else None
    if isinstance(node, nodes.Getattr):
        return _direct_field(node.attr, _direct(node.node))
    if isinstance(node, nodes.Neg):
        inner = _direct(node.node)
        return None if inner is None else lambda scope: ABSENT if (value := inner(scope)) is ABSENT else -value
    if isinstance(node, nodes.List):
        return _direct_list([_direct(item) for item in node.items])
    if isinstance(node, (nodes.Add, nodes.Sub)):
        return _direct_pair(_OPERATORS[type(node)], _direct(node.left), _direct(node.right))
    if isinstance(node, nodes.Compare) and len(node.ops) == 1 and node.ops[0].op in _OPERATORS:
        return _direct_pair(_OPERATORS[node.ops[0].op], _direct(node.expr), _direct(node.ops[0].expr))
    return None


def _direct_field(attribute: str, inner: Direct | None) -> Direct | None:
    """`x.attribute` as the sandbox's `getattr` reads it where no object of x's type has the attribute (an
    item); ABSENT where it would read an attribute, or has no such item (Jinja's undefined)."""
    if inner is None:
        return None
    item_read = _PerType(lambda kind: _attribute_free(kind, attribute))

    def field(scope: dict[str, Any]) -> Any:
        value = inner(scope)
        if value is ABSENT or not item_read[type(value)]:
            return ABSENT
        try:
            return value[attribute]
        except (TypeError, LookupError):
            return ABSENT

    return field


def _direct_pair(combine: Callable[[Any, Any], Any], left: Direct | None, right: Direct | None) -> Direct | None:
    """`combine(left, right)`, left computed first; ABSENT as soon as one is."""
    if left is None or right is None:
        return None
    first, second = left, right

    def combined(scope: dict[str, Any]) -> Any:
        if (a := first(scope)) is ABSENT or (b := second(scope)) is ABSENT:
            return ABSENT
        return combine(a, b)

    return combined


def _direct_list(items: list[Direct | None]) -> Direct | None:
    """A list of the items' values, computed in order; ABSENT as soon as one is."""
    if None in items:
        return None
    ready: list[Direct] = items  # type: ignore[assignment]

    def listed(scope: dict[str, Any]) -> Any:
        values = []
        for item in ready:
            if (value := item(scope)) is ABSENT:
                return ABSENT
            values.append(value)
        return values

    return listed


def compile_value(value: Any) -> Expression | Any:
    """A YAML value as the spec reference defines it: strings compute, everything else is literal.
    A literal string is quoted inside the YAML string: `"'answer_strong'"`."""
    return Expression(value) if isinstance(value, str) else value


def evaluate_value(value: Any, scope: dict[str, Any]) -> Any:
    """Evaluate an expression, or walk a literal list or mapping evaluating the expressions in it."""
    if isinstance(value, Expression):
        return value.evaluate(scope)
    if isinstance(value, list):
        return [evaluate_value(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: evaluate_value(v, scope) for k, v in value.items()}
    return value


def evaluate_present(tree: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a mapping of expressions (mappings inside it too), leaving out each key whose value
    does not exist (a node that did not run, a failure field of a record that did not fail), and a
    mapping left with no key at all."""
    result = {}
    for key, value in tree.items():
        try:
            if isinstance(value, dict):
                computed = evaluate_present(value, scope)
            else:
                computed = value.present(scope) if isinstance(value, Expression) else evaluate_value(value, scope)
        except jinja2.UndefinedError:
            continue
        if computed is ABSENT or isinstance(computed, jinja2.Undefined) or (computed == {} and value != {}):
            continue
        result[key] = computed
    return result


def compile_tree(value: Any) -> Any:
    """Compile every string inside a literal list or mapping (message lists, provenance fields)."""
    if isinstance(value, list):
        return [compile_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: compile_tree(v) for k, v in value.items()}
    return compile_value(value)


def tree_references(value: Any) -> list[Reference]:
    if isinstance(value, Expression):
        return value.references()
    if isinstance(value, list):
        return [r for v in value for r in tree_references(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in tree_references(v)]
    return []


def check_sandbox(tree: nodes.Node, what: str) -> None:
    """Refuse, before anything runs, what the sandbox would only stop at run time: names and
    attributes that start with `_` (`__class__`, `__globals__`), `mro`, also when a filter names
    them (`x|attr('__class__')`, `map(attribute=...)`), and calls of methods that mutate
    (`x.append(...)`, `d.update(...)`)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Call)):
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        if name is not None and (name.startswith("_") or name == "mro"):
            raise ExpressionError(f"{what} reaches for {name!r}, which the sandbox refuses")
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr in _MUTATORS:
            raise ExpressionError(f"{what} calls .{node.node.attr}(), which would change data; "
                                  "build a new value instead (e.g. `state.items + [x]`)")
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) and node.node.attr in _FORMATTERS:
            raise ExpressionError(f"{what} calls .{node.node.attr}(), whose format string can read attributes "
                                  "the sandbox refuses; join text with ~ instead (e.g. `'Q: ' ~ x`)")
    for node in tree.find_all(nodes.Filter):  # attr('__class__'), map(attribute='__class__')
        if node.name not in _ATTRIBUTE_FILTERS:
            continue
        args = [*node.args, *(k.value for k in node.kwargs)]
        if node.name == "attr" and not all(isinstance(a, nodes.Const) for a in args):
            raise ExpressionError(f"{what} reads an attribute named by a computed value (|attr), which the "
                                  "sandbox refuses")
        for arg in args:
            value = arg.value if isinstance(arg, nodes.Const) else None
            if isinstance(value, str) and any(p.startswith("_") or p == "mro" for p in value.split(".")):
                raise ExpressionError(f"{what} reaches for {value!r}, which the sandbox refuses")


_ORDERS = {"gt", "gteq", "lt", "lteq"}
_ARITHMETIC = (nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow, nodes.Neg, nodes.Pos)


def _numeric_params(tree: nodes.Node) -> set[str]:
    """`params.NAME` used directly as an operand of an ordering (`>`, `<=`) or of arithmetic other
    than `+` (which also joins text and lists): such a param must be a number."""
    operands: list[nodes.Node] = []
    for node in tree.find_all(nodes.Compare):
        if any(op.op in _ORDERS for op in node.ops):
            operands += [node.expr, *(op.expr for op in node.ops)]
    for node in tree.find_all(_ARITHMETIC):
        operands += [node.node] if isinstance(node, (nodes.Neg, nodes.Pos)) else [node.left, node.right]
    return {o.attr for o in operands if isinstance(o, nodes.Getattr) and isinstance(o.node, nodes.Name)
            and o.node.name == "params"}


def _references(tree: nodes.Node) -> list[Reference]:
    """Names read from the scope, with the first attribute read on each (`a.b.c` -> a.b)."""
    found: list[Reference] = []
    local = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    attributed: set[int] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.ctx == "load" and node.node.name not in local:
            found.append(Reference(node.node.name, node.attr))
            attributed.add(id(node.node))
    for node in tree.find_all(nodes.Name):
        if node.ctx == "load" and id(node) not in attributed and node.name not in local \
                and node.name not in HELPERS and node.name not in _ENV.globals:
            found.append(Reference(node.name, None))
    return found


def renamed(expression: Expression, names: dict[str, str], constants: dict[str, dict[str, Any]]) -> Expression:
    """The expression with node names replaced (`generate.instruction` -> `generate_2.instruction`)
    and each `ROOT.FIELD` of `constants` written as its literal (`round.index` -> `2`). How a rounds
    body becomes one copy per round: the copy's source is what `graph`, messages and the checks see.
    Done on Jinja's tokens, so text in quotes, attributes (`x.generate`), filters (`| first`), tests
    (`is defined`) and keyword arguments (`f(first=1)`) are never touched."""
    text = f"{{{{ {expression.source} }}}}"
    tokens = [(kind, value) for _, kind, value in _ENV.lexer.tokeniter(text, None)]
    significant = [i for i, (kind, _) in enumerate(tokens) if kind != "whitespace"]
    for position, i in enumerate(significant):
        kind, value = tokens[i]
        if kind != "name" or not _reads_a_variable([tokens[j] for j in significant], position):
            continue
        attribute = [tokens[j] for j in significant[position + 1:position + 3]]
        if value in constants and len(attribute) == 2 and attribute[0] == ("operator", ".") \
                and attribute[1][1] in constants[value]:
            literal = constants[value][attribute[1][1]]
            tokens[i] = (kind, str(literal).lower() if isinstance(literal, bool) else repr(literal))
            for j in significant[position + 1:position + 3]:
                tokens[j] = ("whitespace", "")
        elif value in names:
            tokens[i] = (kind, names[value])
    source = "".join(value for _, value in tokens)[3:-3]
    return expression if source == expression.source else Expression(source)


def _reads_a_variable(tokens: list[tuple[str, str]], position: int) -> bool:
    """Whether the name token at `position` (whitespace left out) reads a variable: not an attribute,
    a filter, a test or a keyword argument's name."""
    before = tokens[position - 1] if position else ("", "")
    after = tokens[position + 1] if position + 1 < len(tokens) else ("", "")
    is_test = before == ("name", "is") or (before == ("name", "not") and position > 1
                                           and tokens[position - 2] == ("name", "is"))
    return before not in (("operator", "."), ("operator", "|")) and not is_test and after != ("operator", "=")

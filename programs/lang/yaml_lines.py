"""YAML loading that remembers the line of every key, so errors can point at it.

Every spec goes through `load_with_lines` (and every `--set` value through `load_value`),
which refuse, as a located SpecError, what PyYAML would accept silently or choke on:

- a file that is not UTF-8 (the line and byte offset of the first bad byte);
- a key given twice in one mapping (both lines; PyYAML would keep the last one);
- anchors and aliases that add more than `MAX_NODES` nodes ("billion laughs"), or that
  refer to themselves: the check walks the composed node graph once, memoized, so it
  takes time and memory linear in the text, not in the expansion;
- text with a lone surrogate (a `"\\ud800"` escape), which is not Unicode text and would
  fail later when hashed, written or sent;
- nesting too deep for the parser.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

Path_ = tuple[str | int, ...]

MAX_NODES = 100_000  # nodes aliases may add to what is written: far above any real use, far below a bomb
MAX_SPEC_BYTES = 16 * 2**20
YAML_HINT = "check indentation, colons and quotes on this line and the one before"


def load_with_lines(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse a YAML file safely; return the data and a map from key path to 1-based line."""
    check_path_text(path, "spec file")
    if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block the read forever
        raise SpecError(str(path), "not a regular file (a pipe or a device): not a spec", hint="check the path")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)  # bounded: a device or a huge file is not a spec
    except OSError as exc:
        raise SpecError(str(path), f"cannot read file: {exc.strerror}", hint="check the path") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(str(path), f"larger than {MAX_SPEC_BYTES // 2**20} MiB: not a spec",
                        hint="check the path; put long data in a seeds file, not in the spec")
    text = decode_utf8(raw, str(path))
    node, data = _compose_and_construct(text, str(path))
    lines: dict[Path_, int] = {}
    if node is not None:
        _collect(node, (), lines)
    return data, lines


def load_value(text: str, what: str) -> Any:
    """The YAML value of a `--set KEY=VALUE` (`what`: "--set KEY"), with the same checks as a file;
    an error names the --set, not a line of the spec (the value is not in it)."""
    if not text.strip():  # `--set KEY=` (an unset shell variable, say): YAML's null, which then failed far away
        raise SpecError(what, "no value after '='", hint=f"give one: {what}=VALUE; for an empty text, {what}=\"''\"; "
                        f"for null, {what}=null")
    try:
        _, data = _compose_and_construct(text, what, at=tuple(what.removeprefix("--set ").split(".")))
    except SpecError as exc:
        raise SpecError(what, exc.message, hint="the value is read as YAML: quote it to make it text, e.g. "
                        f"{what}='\"{text}\"'" if "invalid YAML" in exc.message else exc.hint) from None
    return data


def decode_utf8(raw: bytes, file: str) -> str:
    """Strict UTF-8 (a leading BOM is dropped); a bad byte is a SpecError at its line and offset."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(file, f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                              f"(column {column})", line=line,
                        hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def has_surrogate(text: str) -> bool:
    """True if `text` holds a lone surrogate, which no UTF-8 file, request or hash can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_path_text(path: Path, what: str) -> None:
    """A path whose name holds bytes that are not UTF-8 cannot be recorded in a manifest or an
    artifact (JSON text): refuse it when it is read, not after the model calls."""
    if has_surrogate(str(path)):
        shown = os.fsencode(path).decode("utf-8", "replace")
        raise SpecError(shown, f"the {what}'s name is not valid UTF-8 (it could not be recorded in the run's files)",
                        hint="rename it, or copy it to a name in UTF-8")


class _Loader(yaml.SafeLoader):
    """SafeLoader; the composed graph is checked (duplicates, size, surrogates) before construction.
    A date-like value stays the text it is (a spec holds no dates, and every value must go into JSON)."""


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_str)
NOT_JSON_TAGS = {f"tag:yaml.org,2002:{name}": name for name in ("binary", "set", "omap", "pairs")}


def _compose_and_construct(text: str, file: str, what: str = "", at: Path_ = ()) -> tuple[yaml.Node | None, Any]:
    prefix = f"{what}: " if what else ""
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is not None:
            _Checker(file, prefix).check(node, at)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line, hint = (mark.line + 1 if mark else None), YAML_HINT
        if "flow" in str(getattr(exc, "context", "")) and problem.endswith(("got '?'", "got ':'")):
            hint = ("inside [...] or {...} a text holding ?, : or , is read as YAML syntax: quote it, "
                    'e.g. {question: "Why is the sky blue?"}')
        if isinstance(exc, yaml.reader.ReaderError):
            line = text.count("\n", 0, exc.position) + 1
            problem = f"control character U+{exc.character:04X} is not allowed in YAML"
            hint = "remove it, or write it as an escape (e.g. \\x07) inside double quotes"
        raise SpecError(file, f"{prefix}invalid YAML: {problem}", line=line, hint=hint) from None
    except RecursionError:
        raise SpecError(file, f"{prefix}YAML nested too deeply to read",
                        hint="flatten the structure: a spec needs a few levels, not hundreds") from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


MERGE_TAG = "tag:yaml.org,2002:merge"
INT_TAG = "tag:yaml.org,2002:int"
STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300  # int() refuses longer digit strings (a ValueError)


class _Checker:
    """One pass over the composed node graph, each node visited once (aliases share nodes)."""

    def __init__(self, file: str, prefix: str):
        self.file, self.prefix = file, prefix
        self.sizes: dict[int, int] = {}  # id(node) -> nodes it expands to
        self.open: set[int] = set()  # nodes being walked: meeting one again is a cycle
        self.limit = MAX_NODES

    def error(self, node: yaml.Node, message: str, hint: str) -> SpecError:
        return SpecError(self.file, self.prefix + message, line=node.start_mark.line + 1, hint=hint)

    def check(self, root: yaml.Node, at: Path_ = ()) -> None:
        """`at`: where the root sits in a spec (a --set value's key path), for the key rule."""
        self.limit = _written(root) + MAX_NODES  # what the text holds, plus at most MAX_NODES from aliases
        if self.size(root) > self.limit:
            raise self.error(root, f"anchors and aliases expand to more than {MAX_NODES:,} values beyond "
                                   "what is written", "write the values out, or use fewer nested aliases "
                                                      "(an alias bomb?)")
        self.check_keys(root, at, set())  # bounded: the size check above bounds the walk

    def check_keys(self, node: yaml.Node, at: Path_, seen: set[tuple[int, Path_]]) -> None:
        """Every key is text, except numbers inside a model's `extra:` (`logit_bias: {50256: -100}`), which
        JSON sends as text. `1:`, `true:` (YAML 1.1's `on:`, `yes:` too) or `~:` elsewhere read as a number,
        a bool or null, which every JSON file a run writes refused after all its calls were made."""
        if (id(node), at) in seen:
            return
        seen.add((id(node), at))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.check_keys(item, (*at, index), seen)
        if not isinstance(node, yaml.MappingNode):
            return
        numbers = "extra" in at[:-1] and all(k.tag == INT_TAG for k, _ in node.value)  # below extra's own keys
        for key, value in node.value:
            if key.tag not in (STR_TAG, MERGE_TAG) and not numbers:
                self.refuse_key(key)
            if node.flow_style and _glued(key, value):
                name, _, rest = key.value.partition(":")
                raise self.error(key, f"{key.value[:60]!r} is read as one key with no value: a colon needs a "
                                      "space after it", f"write {name}: {rest[:60]}")
            self.check_keys(value, (*at, str(key.value) if isinstance(key, yaml.ScalarNode) else "?"), seen)

    def refuse_key(self, key: yaml.Node) -> None:
        if not isinstance(key, yaml.ScalarNode):
            raise self.error(key, "a key is a list or a mapping, not text", "a key is a name: write it as text")
        kind = key.tag.rsplit(":", 1)[-1]
        raise self.error(key, f"the key {key.value[:60]!r} is not text: YAML reads it as {kind}",
                         f"quote it: '{key.value[:60]}': ...")

    def size(self, node: yaml.Node) -> int:
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in self.open:
            raise self.error(node, "an alias refers to the node that contains it (a recursive structure)",
                             "a spec is a tree: copy the values instead of referring back")
        if node.tag in NOT_JSON_TAGS:
            raise self.error(node, f"the YAML type !!{NOT_JSON_TAGS[node.tag]} has no place in a spec",
                             "write a plain mapping, list or string instead")
        self.open.add(id(node))
        total = 1
        if isinstance(node, yaml.ScalarNode):
            if has_surrogate(node.value):
                raise self.error(node, "text holds a lone surrogate (a \\ud800-\\udfff escape), not valid "
                                       "Unicode", "remove the escape, or write the character itself")
            if node.tag == INT_TAG and len(node.value) > MAX_INT_DIGITS:
                raise self.error(node, f"a number of {len(node.value):,} characters: more digits than Python "
                                       f"reads ({MAX_INT_DIGITS:,})", "quote it if it is text")
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        first = seen[key].start_mark.line + 1
                        merge = key_node.tag == MERGE_TAG
                        raise self.error(key_node, f"duplicate key '{key_node.value}' (first on line {first})",
                                         "merge several mappings with one key: <<: [*first, *second]" if merge
                                         else "a key may appear once per mapping: remove or rename one of them")
                    seen[key] = key_node
                total += self.size(key_node) + self.size(value_node)
                if total > self.limit:  # stop early: the rest cannot make it smaller
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += self.size(item)
                if total > self.limit:
                    break
        self.open.discard(id(node))
        self.sizes[id(node)] = total
        return total


_GLUED = re.compile(r"[A-Za-z_][\w.-]*:[^\s:/]")


def _glued(key: yaml.Node, value: yaml.Node) -> bool:
    """`{type:judge, judge:rate}`: in a flow mapping, a colon with no space after it is part of a plain
    key, which then has no value (two keys of null, which each section's checks blamed on what was
    missing: 'unknown type None')."""
    return (isinstance(key, yaml.ScalarNode) and key.style is None and key.tag == STR_TAG
            and isinstance(value, yaml.ScalarNode) and value.tag == NULL_TAG and value.value == ""
            and _GLUED.match(key.value) is not None)


def _written(root: yaml.Node) -> int:
    """The distinct nodes of the composed graph (each anchored node once, however often aliased)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return len(seen)


def _collect(node: yaml.Node, prefix: Path_, lines: dict[Path_, int]) -> None:
    lines[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            _collect(value_node, key, lines)
            lines[key] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect(item, (*prefix, index), lines)

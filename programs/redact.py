"""Secrets: where a spec may not hold one, and the last line of defence for everything written.

Keys come from the environment only (`api_key_env`). The spec check refuses a credential
anywhere else in a model's settings (`extra:`, userinfo or a key parameter in `api_base`);
`redact` then masks, in every artifact and the manifest, the values of the variables that hold
keys and anything shaped like a known provider key, in case one arrives some other way (a seed,
a model's answer, an override).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

MASK = "[redacted]"

# Parameter names that hold credentials (compared lower-case, without `-` and `_`).
_CREDENTIAL_NAMES = re.compile(r".*(?:key|token|secret|password|passwd|pwd|credentials?|authorization|auth|"
                               r"bearer|cookie)")
_NOT_CREDENTIALS = {"maxtokens", "tokens", "stoptoken", "stoptokens", "eostoken", "bostoken", "padtoken",
                    "sortkey", "cachekey", "promptcachekey"}

# Known shapes of provider keys and tokens, each with the literals one must contain: a pattern
# runs only on text that holds one of its literals, found by a few fast scans (`_finders`).
KEY_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sk-",), r"\bsk-(?:proj-|ant-|or-)?[A-Za-z0-9_-]{16,}"),  # OpenAI, Anthropic, OpenRouter, DeepSeek
    (("AIza",), r"\bAIza[0-9A-Za-z_-]{35}"),  # Google (Gemini)
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),  # GitHub
     r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"),
    (("hf_",), r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face
    (("gsk_",), r"\bgsk_[A-Za-z0-9]{20,}"),  # Groq
    (("r8_",), r"\br8_[A-Za-z0-9]{30,}"),  # Replicate
    (("xoxa-", "xoxb-", "xoxo-", "xoxp-", "xoxr-", "xoxs-"), r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    (("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    (("Bearer ", "bearer "), r"(?<=[Bb]earer )[A-Za-z0-9._~+/-]{12,}=*"),  # `Authorization: Bearer ...`
    # user:password@ in a URL; found by its `://`, not its `@`, which every loop item's id holds (`m0003@2`)
    (("://",), r"(?<=://)[^/\s:@\"']+:[^/\s@\"']+(?=@)"),
)
_COMPILED = tuple(re.compile(pattern) for _, pattern in KEY_PATTERNS)
_PATTERNS = re.compile("|".join(pattern for _, pattern in KEY_PATTERNS))


def _finders() -> tuple[tuple[str, str | re.Pattern[str], tuple[int, ...]], ...]:
    """(character, finder, rows): together they find which rows of KEY_PATTERNS have a literal in a text.

    One regex of all the literals costs ~7 ns a character: its alternatives start with letters
    common in prose, so the engine stops at every third character to try them. A regex that
    starts with one literal character is scanned for that character alone (~0.25 ns a
    character), and `character in text` (memchr) is nearly free. So each literal
    is looked for from its rarest character (the first that is not a lower-case letter, digit or
    space: the `-` of `sk-`, the `_` of `github_pat_`), the part before it checked by a look-behind,
    and the literals are grouped by that character: one scan for each such character the text
    holds. Each alternative ends in an empty group: the match's `lastindex` names its row (`rows[i]`).
    A group of one literal (`://`, `bearer `) has that literal as its finder, looked for by
    `literal in text`: str's own search skips ahead, for half a scan's instructions or less."""
    groups: dict[str, list[tuple[int, str, int]]] = {}  # character -> (row, literal, where it is in it)
    for row, (literals, _) in enumerate(KEY_PATTERNS):
        for literal in literals:
            at = next((i for i, c in enumerate(literal) if not (c.islower() or c.isdigit() or c == " ")), 0)
            groups.setdefault(literal[at], []).append((row, literal, at))
    return tuple((char, members[0][1] if len(members) == 1 else _finder(char, members),
                  (-1, *(row for row, _, _ in members))) for char, members in groups.items())


def _finder(char: str, members: list[tuple[int, str, int]]) -> re.Pattern[str]:
    """The regex of one character's literals. Where each has characters before it, a first look-behind
    at the last few they all have turns most occurrences away at once: the keys of every JSON line
    (`max_tokens`, `seed_ids`) put `_` in it dozens of times, and trying each literal's own
    look-behind at each of them cost three times the scan."""
    literals = "|".join((f"(?<={re.escape(literal[:at + 1])})" if at else "") + re.escape(literal[at + 1:]) + "()"
                        for _, literal, at in members)
    near = min(at for _, _, at in members)
    if not near:
        return re.compile(f"{re.escape(char)}(?:{literals})")
    tails = "|".join(sorted({re.escape(literal[at - near:at]) for _, literal, at in members}))
    return re.compile(f"{re.escape(char)}(?<=(?:{tails}){re.escape(char)})(?:{literals})")


_FINDERS = _finders()


def _rows_found(text: str) -> list[int]:
    """The rows of KEY_PATTERNS with a literal in `text`, in the table's order."""
    found: set[int] = set()
    for char, finder, rows in _FINDERS:
        if char not in text:
            continue
        if isinstance(finder, str):
            if finder in text:
                found.add(rows[1])
        else:
            found.update(rows[m.lastindex] for m in finder.finditer(text))  # type: ignore[index]
    return sorted(found) if found else []


# Variables whose values are secrets: those the spec names in api_key_env, and these shapes.
_SECRET_ENV = re.compile(r"(?:API_?KEY|_KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values ("1", "true") would mask ordinary text
_registered: set[str] = set()


def register_key_env(name: str | None) -> None:
    """A variable that holds a key (a model's `api_key_env`): its value is masked everywhere."""
    if name:
        _registered.add(name)


def env_secrets() -> tuple[str, ...]:
    """The current values of key-holding variables."""
    # os.environ's own mapping: its names unencoded, 15x cheaper to list (a line of every artifact asks)
    names = tuple(getattr(os.environ, "_data", os.environ))
    found = (os.environ.get(name, "") for name in _secret_names(names, frozenset(_registered)))
    return tuple(sorted({value for value in found if len(value.strip()) >= _MIN_SECRET}))


@lru_cache(maxsize=4)
def _secret_names(names: tuple[str | bytes, ...], registered: frozenset[str]) -> tuple[str, ...]:
    """Which variables hold keys; scanned again when variables come or go (keyed on their names: a
    count would miss one variable replaced by another)."""
    decoded = (name if isinstance(name, str) else os.fsdecode(name) for name in names)
    return tuple(sorted(registered | {name for name in decoded if _SECRET_ENV.search(name)}))


@lru_cache(maxsize=8)
def _forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret as is and as it appears inside a JSON string, longest first."""
    forms = {form for value in secrets for form in (value, json.dumps(value, ensure_ascii=False)[1:-1])}
    return tuple(sorted(forms, key=lambda v: (-len(v), v)))


def _mask(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    rows = _rows_found(text)  # once, before any mask: a mask never makes a literal appear, as
    # `[` and `]` are in none (none can straddle one) and "redacted" holds none
    for row in rows:  # in the table's order, as the patterns' matches can meet
        text = _COMPILED[row].sub(MASK, text)
    return text


def redact_text(text: str) -> str:
    """Mask every key-variable value and every key-shaped string in `text` (JSON text stays JSON)."""
    return _mask(text, _forms(env_secrets()))


def redact(value: Any) -> Any:
    """`redact_text` on every string (keys and values) of a JSON-like value."""
    forms = _forms(env_secrets())

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _mask(node, forms)
        if isinstance(node, dict):
            return {walk(k) if isinstance(k, str) else k: walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        return node

    return walk(value)


# -- the spec check --------------------------------------------------------------------------

def credential_keys(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, why) for each credential in a model's `extra:` settings, however deep: a key named
    like one (api_key, token, Authorization, ...) or a value shaped like a provider key."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = re.sub(r"[-_\s]", "", str(key)).lower()
            if name not in _NOT_CREDENTIALS and _CREDENTIAL_NAMES.fullmatch(name) and item not in (None, ""):
                found.append(((*path, key), f"'{key}' holds a credential"))
            else:
                found += credential_keys(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += credential_keys(item, (*path, index))
    elif isinstance(value, str) and _PATTERNS.search(value):
        found.append((path, "a value shaped like an API key or token"))
    return found


def url_credentials(url: Any) -> str | None:
    """Why `url` (an api_base) holds a credential: user:password@ or a key in its query (or
    fragment, which is never sent but would be written); else None."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        query = parse_qsl(parts.query, keep_blank_values=True) + parse_qsl(parts.fragment, keep_blank_values=True)
    except ValueError:
        return None
    if parts.username or parts.password:
        return "the URL holds credentials (user:password@)"
    for key, _ in query:
        name = re.sub(r"[-_\s]", "", key).lower()
        if name not in _NOT_CREDENTIALS and _CREDENTIAL_NAMES.fullmatch(name):
            return f"the URL's query holds a credential ('{key}=')"
    if _PATTERNS.search(url):
        return "the URL holds something shaped like an API key"
    return None


def safe_url(url: str | None) -> str:
    """`url` for messages: without userinfo or query."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return redact_text(url)

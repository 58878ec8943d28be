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

# Known shapes of provider keys and tokens, each with the literals one must contain (a cheap
# `in` test first keeps masking at a few microseconds per record).
KEY_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("sk-",), r"\bsk-(?:proj-|ant-|or-)?[A-Za-z0-9_-]{16,}"),  # OpenAI, Anthropic, OpenRouter, DeepSeek
    (("AIza",), r"\bAIza[0-9A-Za-z_-]{35}"),  # Google (Gemini)
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),  # GitHub
     r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"),
    (("hf_",), r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face
    (("gsk_",), r"\bgsk_[A-Za-z0-9]{20,}"),  # Groq
    (("r8_",), r"\br8_[A-Za-z0-9]{30,}"),  # Replicate
    (("xox",), r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
    (("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    (("earer ",), r"(?<=[Bb]earer )[A-Za-z0-9._~+/-]{12,}=*"),  # `Authorization: Bearer ...`
    (("@",), r"(?<=://)[^/\s:@\"']+:[^/\s@\"']+(?=@)"),  # user:password@ in a URL
)
_COMPILED = tuple((literals, re.compile(pattern)) for literals, pattern in KEY_PATTERNS)
_PATTERNS = re.compile("|".join(pattern for _, pattern in KEY_PATTERNS))
_LITERALS = re.compile("|".join(re.escape(literal) for literals, _ in KEY_PATTERNS for literal in literals))
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
    found = (os.environ.get(name, "") for name in _secret_names(len(os.environ), frozenset(_registered)))
    return tuple(sorted({value for value in found if len(value.strip()) >= _MIN_SECRET}))


@lru_cache(maxsize=4)
def _secret_names(size: int, registered: frozenset[str]) -> tuple[str, ...]:
    """Which variables hold keys; scanned again when variables come or go (`size`)."""
    return tuple(sorted(registered | {name for name in os.environ if _SECRET_ENV.search(name)}))


@lru_cache(maxsize=8)
def _forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret as is and as it appears inside a JSON string, longest first."""
    forms = {form for value in secrets for form in (value, json.dumps(value, ensure_ascii=False)[1:-1])}
    return tuple(sorted(forms, key=lambda v: (-len(v), v)))


def _mask(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    if not _LITERALS.search(text):
        return text
    for literals, pattern in _COMPILED:
        if any(literal in text for literal in literals):
            text = pattern.sub(MASK, text)
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

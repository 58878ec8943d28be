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

# Known shapes of provider keys and tokens.
KEY_PATTERNS = (
    r"\bsk-(?:proj-|ant-|or-)?[A-Za-z0-9_-]{16,}",  # OpenAI, Anthropic, OpenRouter, DeepSeek, ...
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google (Gemini)
    r"\bgh[pousr]_[A-Za-z0-9]{30,}", r"\bgithub_pat_[A-Za-z0-9_]{30,}",  # GitHub
    r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"\bgsk_[A-Za-z0-9]{20,}",  # Groq
    r"\br8_[A-Za-z0-9]{30,}",  # Replicate
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"(?<=[Bb]earer )[A-Za-z0-9._~+/-]{12,}=*",  # `Authorization: Bearer ...`
    r"(?<=://)[^/\s:@\"']+:[^/\s@\"']+(?=@)",  # user:password@ in a URL
)
_PATTERNS = re.compile("|".join(KEY_PATTERNS))
# Variables whose values are secrets: those the spec names in api_key_env, and these shapes.
_SECRET_ENV = re.compile(r"(?:API_?KEY|_KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values ("1", "true") would mask ordinary text
_registered: set[str] = set()


def register_key_env(name: str | None) -> None:
    """A variable that holds a key (a model's `api_key_env`): its value is masked everywhere."""
    if name:
        _registered.add(name)


def env_secrets() -> tuple[str, ...]:
    """The current values of key-holding variables, longest first."""
    found = {value for name, value in os.environ.items()
             if (name in _registered or _SECRET_ENV.search(name)) and len(value.strip()) >= _MIN_SECRET}
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


@lru_cache(maxsize=8)
def _matcher(secrets: tuple[str, ...]) -> re.Pattern[str]:
    forms = []
    for value in secrets:  # the value as is, and as it appears inside a JSON string
        forms += [re.escape(value), re.escape(json.dumps(value, ensure_ascii=False)[1:-1])]
    return re.compile("|".join([*dict.fromkeys(forms), _PATTERNS.pattern]))


def redact_text(text: str) -> str:
    """Mask every key-variable value and every key-shaped string in `text` (JSON text stays JSON)."""
    return _matcher(env_secrets()).sub(MASK, text)


def redact(value: Any) -> Any:
    """`redact_text` on every string (keys and values) of a JSON-like value."""
    matcher = _matcher(env_secrets())

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return matcher.sub(MASK, node)
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
    """Why `url` (an api_base) holds a credential: user:password@ or a key in its query; else None."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        query = parse_qsl(parts.query, keep_blank_values=True)
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

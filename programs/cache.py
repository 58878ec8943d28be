"""Content-addressed disk cache of raw model completions (diskcache).

A call is identified by its model, rendered messages, decoding parameters and sample
slot; never by api_key or api_base, so the same call through another endpoint is the
same entry. The cache holds raw text: parsing happens after it, so a fixed parser or a
changed downstream parameter re-uses every call upstream of the change.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

MODES = ("live", "replay", "refresh")  # read+write | read only, a miss is an error | write only


def default_cache_dir() -> Path:
    """`$CODECLM_CACHE_DIR`, else the user cache folder: shared across runs and specs."""
    env = os.environ.get("CODECLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codeclm"


@dataclass(frozen=True)
class CallIdentity:
    """What makes two calls the same call."""

    model: str
    messages: tuple[tuple[str, str], ...]
    params: tuple[tuple[str, Any], ...]
    slot: int = 0

    @classmethod
    def of(cls, model: str, messages: list[dict[str, str]], params: dict[str, Any], slot: int = 0) -> CallIdentity:
        return cls(model, tuple((m["role"], m["content"]) for m in messages), tuple(sorted(params.items())), slot)

    @cached_property  # read several times per call on the hot path: hash once
    def key(self) -> str:
        return _digest({"model": self.model, "messages": self.messages, "params": self.params, "slot": self.slot})

    @cached_property
    def parts(self) -> dict[str, str]:
        """Short hashes of each component, to tell a user what changed on a replay miss."""
        return {"model": self.model, "messages": _digest(self.messages)[:12], "params": _digest(self.params)[:12],
                "slot": str(self.slot)}

    def seed(self) -> int:
        """A per-call sampling seed for models that take one: the same call samples the same."""
        return int(self.key[:8], 16)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CallCache:
    """diskcache.Cache of {key: completion entry}, tagged by model for per-model stats and clearing."""

    def __init__(self, folder: Path, mode: str = "live"):
        import diskcache

        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}")
        self.folder = Path(folder)
        self.mode = mode
        self.store = diskcache.Cache(str(self.folder), size_limit=2**40, eviction_policy="none")

    def get(self, key: str) -> dict[str, Any] | None:
        if self.mode == "refresh":
            return None
        return self.store.get(key)

    def put(self, key: str, model: str, entry: dict[str, Any]) -> None:
        if self.mode != "replay":
            self.store.set(key, {**entry, "model": model, "stored_at": time.time()}, tag=model)

    def peek(self, key: str) -> dict[str, Any] | None:
        """Read regardless of mode (dry runs, exports)."""
        return self.store.get(key)

    def stats(self) -> dict[str, Any]:
        per_model: dict[str, int] = {}
        for key in self.store.iterkeys():
            entry = self.store.get(key)
            if entry:
                per_model[entry.get("model", "?")] = per_model.get(entry.get("model", "?"), 0) + 1
        return {"folder": str(self.folder), "entries": len(self.store), "bytes": self.store.volume(),
                "per_model": per_model}

    def clear(self, model: str | None = None) -> int:
        if model is None:
            return self.store.clear()
        return self.store.evict(model)

    def close(self) -> None:
        self.store.close()

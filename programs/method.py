"""The pure steps of CodecLM: seeded sampling, metadata augmentation, score averaging and
the contrastive decision. No model, no I/O: each is a function a test can pin down.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

KEEP_STRONG, KEEP_TARGET, IMPROVE, DROP = "keep_strong", "keep_target", "improve", "drop"


def rng_for(seed: int, item: str, purpose: str) -> random.Random:
    """An RNG for one draw, seeded by the spec's seed, a stable item id and the draw's purpose,
    so concurrency, resume and replay cannot change what is drawn (str seeds hash with SHA-512)."""
    return random.Random(f"{seed}:{item}:{purpose}")


def augment(metadata: list[dict[str, Any]], pool_size: int, skills_per_entry: tuple[int, int],
            seed: int) -> list[dict[str, Any]]:
    """Grow metadata to a pool: each entry pairs one use case sampled from the encoded ones
    (seed frequencies kept) with 1..k skills sampled without replacement from the union of skills.
    Each entry names the seeds its use case and skills came from."""
    skill_source: dict[str, list[str]] = {}
    for entry in metadata:
        for skill in entry["skills"]:
            skill_source.setdefault(skill, entry.get("seed_ids", []))
    skills = list(skill_source)
    if not metadata or not skills:
        return []
    low, high = skills_per_entry
    pool = []
    for index in range(pool_size):
        entry_id = f"m{index:04d}"
        rng = rng_for(seed, entry_id, "augment")
        count = min(rng.randint(low, high), len(skills))
        source = rng.choice(metadata)
        chosen = rng.sample(skills, count)
        seed_ids = list(dict.fromkeys([*source.get("seed_ids", []), *(i for s in chosen for i in skill_source[s])]))
        pool.append({"id": entry_id, "use_case": source["use_case"], "skills": chosen, "seed_ids": seed_ids})
    return pool


def sample_slot(entries: list[dict[str, Any]]) -> list[int]:
    """For each entry, how many earlier entries have the same use case and skills: identical
    metadata in a pool must still give different samples, so each copy gets its own slot."""
    seen: dict[tuple, int] = {}
    slots = []
    for entry in entries:
        key = (entry["use_case"], tuple(entry["skills"]))
        slots.append(seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
    return slots


def pick_action(actions: list[str], seed: int, instruction_id: str, iteration: int) -> str:
    """One action, drawn at random for this instruction and iteration (the paper's Improve step)."""
    return rng_for(seed, instruction_id, f"action/{iteration}").choice(actions)


@dataclass
class Judgement:
    """Scores of the strong and target answers, in each order the judge saw them."""

    strong_first: tuple[float, float] | None  # (strong, target) with the strong answer as Assistant 1
    target_first: tuple[float, float] | None  # (target, strong) with the target answer as Assistant 1

    @property
    def strong(self) -> float:
        return _mean([s for s in (self._pair(self.strong_first, 0), self._pair(self.target_first, 1)) if s is not None])

    @property
    def target(self) -> float:
        return _mean([s for s in (self._pair(self.strong_first, 1), self._pair(self.target_first, 0)) if s is not None])

    @property
    def gap(self) -> float:
        """G = S(strong answer) - S(target answer), each averaged over both orders."""
        return self.strong - self.target

    @staticmethod
    def _pair(pair: tuple[float, float] | None, index: int) -> float | None:
        return None if pair is None else pair[index]

    def to_dict(self) -> dict[str, Any]:
        return {"strong_first": list(self.strong_first) if self.strong_first else None,
                "target_first": list(self.target_first) if self.target_first else None,
                "strong": self.strong, "target": self.target, "gap": self.gap}


def _mean(values: list[float]) -> float:
    if not values:
        raise ValueError("no scores to average")
    return sum(values) / len(values)


def decide(gap: float, threshold: float, iteration: int, max_iterations: int) -> str:
    """Contrastive Filtering: G > θ keeps the strong answer, G < -θ keeps the target's, and
    |G| <= θ sends the instruction to the next iteration, or drops it after the last."""
    if gap > threshold:
        return KEEP_STRONG
    if gap < -threshold:
        return KEEP_TARGET
    return IMPROVE if iteration < max_iterations else DROP

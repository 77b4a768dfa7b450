"""Seeded draws of the tasks stage: task weights as row repeats, and negative items.

Every draw is keyed by (seed, task, row), never by batch, so the local path and Ray Data's
``map_batches`` produce identical rows whatever the batch boundaries.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import numpy as np

from semconv.tasks.templates import row_hash, task_salt


class NegativeSamplingError(ValueError):
    """A user for whom no un-interacted item exists."""


def repeat_counts(n: int, weight: float, seed: int, task: str) -> np.ndarray:
    """How many times each of ``n`` base rows appears under ``weight``: exactly
    ``round(weight * n)`` in total, ``floor(weight)`` each plus one more for a seeded subset."""
    if weight < 0:
        raise ValueError(f"weight of task {task!r} must be >= 0, got {weight}")
    total = int(round(weight * n))
    whole = min(int(math.floor(weight)), total // n if n else 0)
    counts = np.full(n, whole, dtype=np.int64)
    extra = total - whole * n
    if extra:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, task_salt(task), 1])
        counts[rng.permutation(n)[:extra]] += 1
    return counts


def row_seeds(seed: int, task: str, keys: np.ndarray) -> list[int]:
    """One generator seed per row, a hash of (seed, task, row): ``random.Random(s)`` is cheap
    to create per row and independent of batching."""
    return row_hash(seed, f"{task}/draw", keys).tolist()


def sample_negatives(
    rng: random.Random, num_items: int, interacted: Iterable[int], k: int, user_id: int
) -> list[int]:
    """``k`` items the user never interacted with, uniformly at random.

    Distinct when at least ``k`` candidates exist; otherwise (tiny catalogues) drawn with
    replacement from the candidates, so the 1:k ratio still holds exactly.
    """
    if k <= 0:
        return []
    seen = set(interacted)
    free = num_items - len(seen)
    if free <= 0:
        raise NegativeSamplingError(
            f"user {user_id} has interacted with all {num_items} items: no negative item exists; "
            "set tasks.negative=false or tasks.negative_ratio=0 for such data"
        )
    if free >= k and len(seen) * 2 <= num_items:
        # Rejection sampling: cheap when the user's items are a small part of the catalogue.
        out: list[int] = []
        while len(out) < k:
            c = rng.randrange(num_items)
            if c not in seen:
                seen.add(c)
                out.append(c)
        return out
    candidates = [i for i in range(num_items) if i not in seen]
    return rng.sample(candidates, k) if free >= k else rng.choices(candidates, k=k)

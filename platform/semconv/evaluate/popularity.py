"""Item popularity, the one definition of the package: how often an item occurs in the train split.

The most-popular baseline of the report, the CF stage's popularity metrics and the serving
fallback all count with :func:`train_interaction_counts` (or :func:`train_item_counts` on split
rows already read).

The train split holds each user's items except the last two (valid and test targets). Its rows
are every prefix -> next item, so the first item of a user's train sequence is never a target:
it is counted from the row whose history has length 1 (or, for users too short to have train
rows, from their valid history, which is then exactly the train sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import pyarrow as pa

from semconv.evaluate.protocol import SplitRows, split_rows
from semconv.metrics import topk_from_scores


def train_item_counts(train: SplitRows, valid: SplitRows, num_items: int) -> np.ndarray:
    """Occurrences of each item among the train interactions (``int64[num_items]``)."""
    items: list[np.ndarray] = [train.targets]
    first: dict[int, np.ndarray] = {}
    for u, h in zip(train.user_ids.tolist(), train.histories):
        if len(h) == 1:
            first.setdefault(u, h)  # one per user, also when max_len == 1 truncates every row
    items += list(first.values())
    with_rows = set(train.user_ids.tolist())
    items += [h for u, h in zip(valid.user_ids.tolist(), valid.histories) if u not in with_rows]
    flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= num_items):
        bad = int(flat[(flat < 0) | (flat >= num_items)][0])
        raise ValueError(f"splits/ train item {bad} is outside items/ ids 0..{num_items - 1}")
    return np.bincount(flat, minlength=num_items).astype(np.int64)


def train_interaction_counts(splits: pa.Table, num_items: int) -> np.ndarray:
    """Occurrences of each item among the train interactions of a ``splits/`` table."""
    return train_item_counts(split_rows(splits, "train"), split_rows(splits, "valid"), num_items)


def popularity_topk(
    counts: np.ndarray, n_users: int, k: int, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Top-``k`` items per user by train count (ties: lower item id first), best first.

    Without exclusions every user gets the same list, computed once.
    """
    if exclude is None:
        top = topk_from_scores(counts[None, :].astype(np.float64), k)[0]
        return np.tile(top, (n_users, 1))
    k = min(k, len(counts))
    out = np.empty((n_users, k), dtype=np.int64)
    for start in range(0, n_users, 1024):
        stop = min(start + 1024, n_users)
        scores = np.broadcast_to(counts.astype(np.float64), (stop - start, len(counts)))
        out[start:stop] = topk_from_scores(scores, k, exclude[start:stop])
    return out

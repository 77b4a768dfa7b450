"""The fallback for users without a precached list: most popular items of the train split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def popularity_top_k(splits: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items by how often they are a train target, with their share of train rows.

    Train targets are every interaction except each user's first and the held-out valid/test
    items, so the fallback never peeks at evaluation labels. Ties break by smaller item id.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for col in ("split", "target"):
        if col not in splits.column_names:
            raise ValueError(f"splits/: missing column {col!r}")
    train = splits.filter(pc.equal(splits.column("split"), "train")).column("target")
    targets = train.to_numpy().astype(np.int64) if len(train) else np.zeros(0, np.int64)
    if targets.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    items, counts = np.unique(targets, return_counts=True)  # items ascending
    order = np.lexsort((items, -counts))[:k]
    return items[order], (counts[order] / targets.size).astype(np.float32)

"""The fallback for users without a precached list: most popular items of the train split
(counted by :func:`semconv.protocol.popularity`, the report's count)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.protocol import popularity, popularity_topk


def popularity_top_k(splits: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items by train interactions, with their share of them.

    Train interactions are every interaction except the held-out valid/test items, so the
    fallback never peeks at evaluation labels. Ties break by smaller item id.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for col in ("split", "history", "target"):
        if col not in splits.column_names:
            raise ValueError(f"splits/: missing column {col!r}")
    ids = np.concatenate([splits.column("target").to_numpy(zero_copy_only=False),
                          pc.list_flatten(splits.column("history")).to_numpy(zero_copy_only=False)])
    counts = popularity(splits, int(ids.max()) + 1 if len(ids) else 0)
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = popularity_topk(counts, 1, min(k, int((counts > 0).sum())))[0]
    return top, (counts[top] / counts.sum()).astype(np.float32)

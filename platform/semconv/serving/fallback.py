"""The fallback for users without a precached list: most popular items of the train split
(counted by :func:`semconv.protocol.popularity`, the report's count)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.protocol import popularity, popularity_topk


def popularity_top_k(sequences: pa.Table, bounds: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items by train interactions (``sequences/`` under ``splits/`` ``bounds``), with
    their share of them.

    Train interactions are every interaction except the held-out valid/test items, so the
    fallback never peeks at evaluation labels. Ties break by smaller item id.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, table, col in (("sequences", sequences, "history"), ("splits", bounds, "valid"),
                             ("splits", bounds, "test")):
        if col not in table.column_names:
            raise ValueError(f"{name}/: missing column {col!r}")
    largest = pc.max(pc.list_flatten(sequences.column("history"))).as_py()
    counts = popularity(sequences, bounds, 0 if largest is None else int(largest) + 1)
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    top = popularity_topk(counts, 1, min(k, int((counts > 0).sum())))[0]
    return top, (counts[top] / counts.sum()).astype(np.float32)

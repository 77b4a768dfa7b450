"""Builders for tiny, hand-made run directories (``items/``, ``sequences/``, ``splits/``, ``precache/``)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest
import pyarrow as pa

from semconv.artifacts import RunDir
from semconv.evaluate.protocol import SplitRows, read_split
from semconv.protocol import split_bounds


def sequences_table(sequences: dict[int, Sequence[int]]) -> pa.Table:
    """``sequences/`` rows: each user's whole history, oldest first."""
    return pa.table({"user_id": pa.array(list(sequences), pa.int64()),
                     "history": pa.array([list(s) for s in sequences.values()], pa.list_(pa.int64()))})


def splits_table(sequences: dict[int, Sequence[int]]) -> pa.Table:
    """``splits/`` of the protocol: each user's valid / test positions (second-to-last, last)."""
    return split_bounds(sequences_table(sequences))


def split(sequences: dict[int, Sequence[int]], name: str, max_len: int = 20) -> SplitRows:
    """The ``valid`` or ``test`` rows of ``sequences``, histories cut to ``max_len``."""
    return read_split(sequences_table(sequences), splits_table(sequences), name, max_len)


def write_histories(run: RunDir, sequences: dict[int, Sequence[int]], max_len: int = 20) -> None:
    """``sequences/`` and ``splits/`` of a run, as ``prepare`` writes them."""
    run.write_table("sequences", sequences_table(sequences))
    run.write_table("splits", splits_table(sequences), manifest={"max_len": max_len})


def write_items(run: RunDir, num_items: int) -> None:
    ids = list(range(num_items))
    run.write_table("items", pa.table({
        "item_id": pa.array(ids, pa.int64()), "source_id": [str(i) for i in ids],
        "title": [f"item {i}" for i in ids], "description": [""] * num_items,
        "brand": [""] * num_items, "categories": [""] * num_items,
    }))


def write_precache(run: RunDir, user_ids: Sequence[int], ranked: np.ndarray, k: int, shards: int = 2) -> None:
    scores = [[float(-j) for j in range(len(r))] for r in ranked]
    table = pa.table({
        "user_id": pa.array(list(user_ids), pa.int64()),
        "items": pa.array([list(map(int, r)) for r in ranked], pa.list_(pa.int64())),
        "scores": pa.array(scores, pa.list_(pa.float32())),
    })
    run.write_table("precache", table, num_shards=shards,
                    manifest={"model": "hand-made", "codebook": "hand-made", "top_k": k,
                              "users": len(user_ids), "exclude_history": False})


def random_sequences(n_users: int, n_items: int, seed: int, min_len: int = 3, max_len: int = 9) -> dict[int, list[int]]:
    rng = np.random.default_rng(seed)
    return {u: rng.choice(n_items, size=int(rng.integers(min_len, max_len + 1)), replace=False).tolist()
            for u in range(n_users)}


@pytest.fixture
def build() -> SimpleNamespace:
    """The builders above, for tests (test modules do not import conftest directly)."""
    return SimpleNamespace(splits_table=splits_table, sequences_table=sequences_table, split=split,
                           write_histories=write_histories, write_items=write_items,
                           write_precache=write_precache, random_sequences=random_sequences)

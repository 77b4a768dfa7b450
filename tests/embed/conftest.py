"""Fixtures for the embed stage: small hand-made items/, sequences/, splits/ with a planted structure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import RunDir
from semconv.protocol import split_bounds


def planted_tables(
    communities: int = 4, users_per: int = 50, items_per: int = 25, seq_len: int = 8, seed: int = 0
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Users of community c interact only with items of community c (random order, no repeats).

    Returns ``items/``, ``sequences/`` and ``splits/`` as the prepare stage writes them (test =
    last item, valid = the one before).
    """
    rng = np.random.default_rng(seed)
    n_items = communities * items_per
    words = ["relay", "capacitor", "glove", "tape", "bottle", "filter", "pump", "sensor"]
    items = pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "source_id": [f"s{i}" for i in range(n_items)],
        "title": [f"{words[i % 8]} kit {i}" for i in range(n_items)],
        "description": ["" if i % 5 == 0 else f"digital {words[(i // 8) % 8]} meter" for i in range(n_items)],
        "brand": ["acme"] * n_items,
        "categories": ["lab"] * n_items,
    })
    seqs = [(c * items_per + rng.permutation(items_per)[:seq_len]).tolist()
            for c in np.arange(communities * users_per) // users_per]
    sequences = pa.table({"user_id": pa.array(np.arange(len(seqs)), pa.int64()),
                          "history": pa.array(seqs, pa.list_(pa.int64()))})
    return items, sequences, split_bounds(sequences)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """See ``tests/conftest.py::one_thread``."""


@pytest.fixture(scope="session")
def planted() -> tuple[pa.Table, pa.Table, pa.Table]:
    return planted_tables()


@pytest.fixture
def planted_run(tmp_path, planted) -> RunDir:
    """A run directory holding the planted ``items/``, ``sequences/`` and ``splits/``."""
    return write_planted(RunDir(tmp_path / "run"), planted)


def write_planted(run: RunDir, planted: tuple[pa.Table, pa.Table, pa.Table]) -> RunDir:
    for name, table in zip(("items", "sequences", "splits"), planted):
        run.write_table(name, table)
    return run


def _cf_train_config(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, **over) -> dict:
    config = {"users": users, "items": items, "num_users": num_users, "num_items": num_items,
              "dim": 16, "layers": 2, "epochs": 30, "batch_size": 256, "lr": 1e-2,
              "weight_decay": 1e-4, "seed": 0, "checkpoint_every": 10}
    config.update(over)
    return config


@pytest.fixture(scope="session")
def cf_train_config():
    """Builds a small, fast ``train_func`` config for given train edges (overrides as kwargs)."""
    return _cf_train_config

"""Fixtures for the embed stage: small hand-made items/ and splits/ with a planted structure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import RunDir


def planted_tables(
    communities: int = 4, users_per: int = 50, items_per: int = 25, seq_len: int = 8, seed: int = 0
) -> tuple[pa.Table, pa.Table]:
    """Users of community c interact only with items of community c (random order, no repeats).

    Splits are leave-last-out as the prepare stage writes them: test = last item, valid = the one
    before, train = every prefix -> next item of the rest.
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
    rows: dict[str, list] = {"split": [], "user_id": [], "history": [], "target": []}

    def add(split: str, user: int, hist: list[int], target: int) -> None:
        rows["split"].append(split)
        rows["user_id"].append(user)
        rows["history"].append(hist)
        rows["target"].append(target)

    for u in range(communities * users_per):
        c = u // users_per
        seq = (c * items_per + rng.permutation(items_per)[:seq_len]).tolist()
        for j in range(1, len(seq) - 2):
            add("train", u, seq[:j], seq[j])
        add("valid", u, seq[:-2], seq[-2])
        add("test", u, seq[:-1], seq[-1])
    splits = pa.table({
        "split": rows["split"],
        "user_id": pa.array(rows["user_id"], pa.int64()),
        "history": pa.array(rows["history"], pa.list_(pa.int64())),
        "target": pa.array(rows["target"], pa.int64()),
    })
    return items, splits


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """See ``tests/conftest.py::one_thread``."""


@pytest.fixture(scope="session")
def planted() -> tuple[pa.Table, pa.Table]:
    return planted_tables()


@pytest.fixture
def planted_run(tmp_path, planted) -> RunDir:
    """A run directory holding the planted ``items/`` and ``splits/``."""
    run = RunDir(tmp_path / "run")
    run.write_table("items", planted[0])
    run.write_table("splits", planted[1])
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

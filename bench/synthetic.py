"""Synthetic data of a realistic shape in the generic format, for the scale benchmark.

``make_data(n, root)`` writes ``interactions.parquet`` (``user_id``, ``item_id`` strings,
``timestamp``) and ``items.parquet`` (``item_id``, ``title``, ``description``) with ``n``
interactions, once per ``n`` (``meta.json`` says what is there):

* history lengths: ``4 + ceil(1.9 exp(2 Z))``, capped at 2,000 (a lognormal long tail above the
  5-core minimum): median 6 like the Amazon 5-core sets, mean about 18.5, 1% of users over ~200;
  users are drawn until the lengths sum to ``n`` (100M interactions: about 5.4M users);
* items: ``max(1000, n / 100)`` (100M: 1M), popularity Zipf-like (``p(rank r)`` proportional to
  ``1 / (r + 10)``) with ranks shuffled over ids; a history draws its items independently;
* titles of 2-6 words and, for 70% of items, descriptions of 5-15 words, from 5,000 pseudo-words;
* timestamps increasing within each user (exponential gaps of about a day); rows of each 2M-row
  chunk are shuffled, so the file is not grouped by user, like a log.

Everything streams by chunk, so generating 100M rows takes about a gigabyte of memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

VERSION = 1  # bump when the shape changes: cached data of another version is rewritten
CHUNK = 2_000_000  # interactions per written row group
MAX_LEN = 2000


def history_lengths(rng: np.random.Generator, users: int) -> np.ndarray:
    """``users`` history lengths: 5 or more, median 6, a long tail (see the module docstring)."""
    return np.minimum(4 + np.ceil(1.9 * np.exp(2.0 * rng.standard_normal(users))), MAX_LEN).astype(np.int64)


def zipf_sampler(n_items: int, rng: np.random.Generator):
    """Draws of item indices with Zipf-like popularity over a seeded shuffle of the ids."""
    weights = 1.0 / (np.arange(n_items) + 10.0)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ids = rng.permutation(n_items)
    return lambda size: ids[np.searchsorted(cdf, rng.random(size), side="right").clip(0, n_items - 1)]


def words(rng: np.random.Generator, count: int = 5000) -> np.ndarray:
    syllables = np.array(["ka", "lo", "mi", "ne", "ro", "tu", "sa", "vi", "po", "de", "gra", "str",
                          "ion", "ex", "pro", "tek", "lab", "met", "al", "ux"])
    parts = rng.integers(0, len(syllables), size=(count, 3))
    sizes = rng.integers(2, 4, size=count)
    return np.array(["".join(syllables[p[:k]]) for p, k in zip(parts, sizes)])


def texts(rng: np.random.Generator, vocab: np.ndarray, count: int, lo: int, hi: int) -> list[str]:
    lens = rng.integers(lo, hi + 1, size=count)
    picks = rng.integers(0, len(vocab), size=(count, hi))
    return [" ".join(vocab[row[:k]]) for row, k in zip(picks, lens)]


def make_data(n: int, root: Path, seed: int = 0) -> dict:
    """Write (or find) the data of ``n`` interactions under ``root/n<n>``; returns its ``meta``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    d = root / f"n{n}"
    meta_path = d / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == VERSION:
            return meta
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_items = max(1000, n // 100)
    vocab = words(rng)
    item_keys = pa.array([f"B{i:09d}" for i in range(n_items)])
    has_desc = rng.random(n_items) < 0.7
    desc = texts(rng, vocab, n_items, 5, 15)
    pq.write_table(pa.table({
        "item_id": item_keys,
        "title": texts(rng, vocab, n_items, 2, 6),
        "description": [x if keep else "" for x, keep in zip(desc, has_desc)],
    }), d / "items.parquet")
    del desc
    draw = zipf_sampler(n_items, rng)
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
    users = written = 0
    with pq.ParquetWriter(d / "interactions.parquet", schema) as writer:
        while written < n:
            lens = history_lengths(rng, max(1, CHUNK // 18))
            lens = lens[: int(np.searchsorted(np.cumsum(lens), n - written)) + 1]
            lens[-1] -= max(0, int(lens.sum()) - (n - written))  # the last user ends at exactly n
            lens = lens[lens > 0]
            rows = int(lens.sum())
            user = np.repeat(np.arange(users, users + len(lens)), lens)
            start = np.repeat(rng.integers(1_500_000_000, 1_600_000_000, len(lens)), lens)
            gaps = rng.exponential(86_400.0, rows)
            first = np.repeat(np.cumsum(lens) - lens, lens)  # each user's first row
            csum = np.cumsum(gaps)
            ts = start + (csum - csum[first] + gaps[first]).astype(np.int64)  # increasing per user
            order = rng.permutation(rows)
            table = pa.table({
                "user_id": pc.binary_join_element_wise("A", pc.cast(pa.array(user[order]), pa.string()), ""),
                "item_id": item_keys.take(pa.array(draw(rows))),
                "timestamp": pa.array(ts[order]),
            }, schema=schema)
            writer.write_table(table, row_group_size=CHUNK)
            users += len(lens)
            written += rows
    meta = {"version": VERSION, "interactions": n, "users": users, "items": n_items, "seed": seed,
            "interactions_file": str(d / "interactions.parquet"), "items_file": str(d / "items.parquet"),
            "disk_mib": round(sum(f.stat().st_size for f in d.glob("*.parquet")) / 2**20, 1),
            "generate_s": round(time.perf_counter() - t0, 1)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta

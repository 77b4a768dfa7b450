"""Fixtures for the tokenize stage: planted-cluster embeddings and tiny run directories."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semconv.artifacts import RunDir


@dataclass
class Planted:
    """Items drawn around ``clusters`` far-apart centres; text embeddings from a hidden map."""

    embeddings: np.ndarray
    text: np.ndarray
    labels: np.ndarray


def planted(n: int = 1200, d: int = 16, clusters: int = 8, d_llm: int = 24, seed: int = 0,
            spread: float = 8.0) -> Planted:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * spread
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + rng.normal(size=(n, d))
    text = rng.normal(size=(clusters, d_llm))[labels] + 0.3 * rng.normal(size=(n, d_llm))
    return Planted(x.astype(np.float32), text.astype(np.float32), labels)


def train_in_process(cfg, embeddings: np.ndarray, text: np.ndarray | None = None, seed: int = 0):
    """``(codebook, history)`` from the package's worker loop run in this process (``Session()``)."""
    from semconv.tokenize.train import train_func

    return train_func({"tokenize": cfg.model_dump(), "seed": seed, "embeddings": embeddings,
                       "text_embeddings": text})


def emb_table(ids: np.ndarray, emb: np.ndarray) -> pa.Table:
    values = pa.array(np.ascontiguousarray(emb, dtype=np.float32).ravel())
    return pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, emb.shape[1]),
    })


def write_inputs(run_dir, data: Planted, ids: np.ndarray | None = None) -> RunDir:
    """Write ``item_emb/`` and ``item_text_emb/`` artifacts for ``data`` into ``run_dir``."""
    rd = RunDir(run_dir)
    ids = np.arange(len(data.embeddings)) if ids is None else ids
    rd.write_table("item_emb", emb_table(ids, data.embeddings))
    rd.write_table("item_text_emb", emb_table(ids, data.text))
    return rd



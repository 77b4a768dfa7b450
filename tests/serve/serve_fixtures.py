"""Builders of a small but real run directory for the serving tests (written through ``RunDir``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from semconv.artifacts import RunDir

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `serve_app` is a top-level package beside platform/
    sys.path.insert(0, str(REPO))

N_ITEMS = 40
N_USERS = 30  # users 0..29 have sequences; only even users are precached
K = 8
LEVELS = 3


def precache_table(user_ids: np.ndarray, k: int, offset: int, n_items: int = N_ITEMS) -> pa.Table:
    """User u's list is items (u + offset + j) % n_items, j = 0..k-1, with falling scores."""
    items = [[int((u + offset + j) % n_items) for j in range(k)] for u in user_ids]
    scores = [[float(-j - offset / 100) for j in range(k)] for _ in user_ids]
    return pa.table({
        "user_id": pa.array(user_ids, pa.int64()),
        "items": pa.array(items, pa.list_(pa.int64())),
        "scores": pa.array(scores, pa.list_(pa.float32())),
    })


def write_precache(rd: RunDir, name: str, offset: int, version: str, k: int = K, inputs: dict | None = None) -> Path:
    """A precache of the even users in 3 shards; its manifest records the run dir's inputs
    (``splits``/``item_codes`` ``created_at``) like the precache stage's, unless ``inputs`` is given."""
    users = np.arange(0, N_USERS, 2)[::-1]  # unsorted on purpose
    if inputs is None:
        inputs = {n: rd.manifest(n)["created_at"] for n in ("splits", "item_codes") if rd.is_complete(n)}
    rd.write_table(name, precache_table(users, k, offset), num_shards=3,
                   manifest={"K": k, "users": len(users), "shards": 3, "version": version,
                             "model": "test", "inputs": inputs})
    return Path(rd.path(name))


def make_run_dir(root: Path) -> RunDir:
    rd = RunDir(root)
    ids = np.arange(N_ITEMS)
    rd.write_table("items", pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "source_id": [f"B{i:04d}" for i in ids],
        "title": [f"Item {i}" for i in ids],
        "description": ["" for _ in ids],
        "brand": ["" for _ in ids],
        "categories": ["" for _ in ids],
    }))
    write_codebook(rd)  # before item_codes/, as the tokenize stage does
    codes = np.stack([ids // 16, (ids // 4) % 4, ids % 4], axis=1).astype(np.int16)
    rd.write_table("item_codes", pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel(), pa.int16()), LEVELS),
    }))
    rd.write_table("sequences", pa.table({
        "user_id": pa.array(np.arange(N_USERS), pa.int64()),
        "source_user_id": [f"U{u}" for u in range(N_USERS)],
        "history": [[u % N_ITEMS, (u + 1) % N_ITEMS, 7] for u in range(N_USERS)],
    }))
    # Train targets: item 7 for every user, item 3 for every third user, items 10..39 once.
    rows = []
    for u in range(N_USERS):
        rows.append(("train", u, [u % N_ITEMS], (u + 10) % N_ITEMS))
        rows.append(("train", u, [u % N_ITEMS, (u + 10) % N_ITEMS], 7))
        if u % 3 == 0:
            rows.append(("train", u, [u % N_ITEMS, 7], 3))
        rows.append(("valid", u, [7], (u + 1) % N_ITEMS))
        rows.append(("test", u, [7], 39))  # 39 is the most common *test* target: must not leak
    rd.write_table("splits", pa.table({
        "split": [r[0] for r in rows],
        "user_id": pa.array([r[1] for r in rows], pa.int64()),
        "history": pa.array([r[2] for r in rows], pa.list_(pa.int64())),
        "target": pa.array([r[3] for r in rows], pa.int64()),
    }))
    write_precache(rd, "precache", offset=0, version="v1")
    return rd


CODE_SCALES = (8.0, 2.0, 0.5)  # level l's code j is CODE_SCALES[l] * e_j


def code_embedding(codes) -> list[float]:
    """An embedding whose nearest codes (residual quantization) are exactly ``codes``."""
    x = np.zeros(LEVELS + 1, dtype=np.float64)
    for scale, c in zip(CODE_SCALES, codes):
        x[c] += scale
    return x.tolist()


def write_codebook(rd: RunDir) -> None:
    """A real saved ``ResidualCodebook`` (dim 4, 3 levels x 4 codes) with hand-set codes."""
    import torch

    from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook

    book = ResidualCodebook(CodebookConfig(dim=LEVELS + 1, levels=LEVELS, codes_per_level=4))
    with torch.no_grad():
        book.codebooks.copy_(torch.stack([s * torch.eye(4) for s in CODE_SCALES]))
    with rd.writing("codebook", {"levels": LEVELS}) as tmp:
        book.save_pretrained(tmp)

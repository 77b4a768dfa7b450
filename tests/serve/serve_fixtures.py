"""Builders of a small but real run directory for the serving tests (written through ``RunDir``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from semconv.artifacts import RunDir
from semconv.protocol import split_bounds

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `serve_app` is a top-level package beside platform/
    sys.path.insert(0, str(REPO))

N_ITEMS = 40
N_USERS = 30  # users 0..29 have sequences; only even users are precached
K = 8
LEVELS = 3


@dataclass(frozen=True)
class Catalogue:
    """What one test version's catalogue and codebook are: every one of them differs between
    :data:`V1` (the default run directory) and :data:`V2`, so an answer tells which it came from."""

    name: str
    item_ids: tuple[int, ...]  # N_ITEMS ids; the fixtures' item x is item_ids[x]
    title: str  # format string of an item's title
    code_step: int  # item x gets code tuple number (code_step * x + code_add) % 64
    code_add: int
    book_shift: int  # the codebook's level codes rotated by this: other raw codes for one embedding

    def titles(self) -> dict[int, str]:
        return {i: self.title.format(i) for i in self.item_ids}

    def codes(self) -> np.ndarray:
        t = (self.code_step * np.arange(N_ITEMS) + self.code_add) % 4**LEVELS
        return np.stack([t // 16, (t // 4) % 4, t % 4], axis=1).astype(np.int16)


V1 = Catalogue("v1", tuple(range(N_ITEMS)), "Item {}", 1, 0, 0)
V2 = Catalogue("v2", tuple(range(4, N_ITEMS + 4)), "V2 item {}", 7, 5, 1)  # items 0-3 gone, 40-43 new


def precache_table(user_ids: np.ndarray, k: int, offset: int, items_of: tuple[int, ...] = V1.item_ids) -> pa.Table:
    """User u's list is items x = (u + offset + j) % N_ITEMS, j = 0..k-1 (as ``items_of[x]``),
    with falling scores."""
    items = [[items_of[(u + offset + j) % len(items_of)] for j in range(k)] for u in user_ids]
    scores = [[float(-j - offset / 100) for j in range(k)] for _ in user_ids]
    return pa.table({
        "user_id": pa.array(user_ids, pa.int64()),
        "items": pa.array(items, pa.list_(pa.int64())),
        "scores": pa.array(scores, pa.list_(pa.float32())),
    })


def write_precache(rd: RunDir, name: str, offset: int, version: str, k: int = K, inputs: dict | None = None,
                   catalogue: Catalogue = V1) -> Path:
    """A precache of the even users in 3 shards; its manifest records the run dir's inputs
    (``splits``/``item_codes`` ``created_at``) like the precache stage's, unless ``inputs`` is given."""
    users = np.arange(0, N_USERS, 2)[::-1]  # unsorted on purpose
    if inputs is None:
        inputs = {n: rd.manifest(n)["created_at"] for n in ("splits", "item_codes") if rd.is_complete(n)}
    rd.write_table(name, precache_table(users, k, offset, catalogue.item_ids), num_shards=3,
                   manifest={"K": k, "users": len(users), "shards": 3, "version": version,
                             "model": "test", "inputs": inputs})
    return Path(rd.path(name))


def make_run_dir(root: Path, catalogue: Catalogue = V1, max_len: int = 20) -> RunDir:
    """The serving tests' run directory: :data:`V1` unless ``catalogue`` says otherwise (its
    precache is named after the catalogue: ``v1``, ``v2``); ``splits/`` records ``max_len``, the
    prompt's cut."""
    rd = RunDir(root)
    ids = np.asarray(catalogue.item_ids)
    item = catalogue.item_ids  # item x of the fixtures' rows below
    rd.write_table("items", pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "source_id": [f"B{i:04d}" for i in ids],
        "title": [catalogue.title.format(i) for i in ids],
        "description": ["" for _ in ids],
        "brand": ["" for _ in ids],
        "categories": ["" for _ in ids],
    }))
    write_codebook(rd, catalogue.book_shift)  # before item_codes/, as the tokenize stage does
    rd.write_table("item_codes", pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "codes": pa.FixedSizeListArray.from_arrays(pa.array(catalogue.codes().ravel(), pa.int16()), LEVELS),
    }))
    # Train parts: item 7 for every user, item 3 for every third user, items 8..37 once; then
    # valid 38 and test 39 for everyone: the most common held-out items, which must not leak.
    histories = [[u + 8, 7] + ([3] if u % 3 == 0 else []) + [38, 39] for u in range(N_USERS)]
    sequences = pa.table({
        "user_id": pa.array(np.arange(N_USERS), pa.int64()),
        "source_user_id": [f"U{u}" for u in range(N_USERS)],
        "history": [[item[x] for x in h] for h in histories],
    })
    rd.write_table("sequences", sequences)
    rd.write_table("splits", split_bounds(sequences), manifest={"max_len": max_len})
    write_precache(rd, "precache", offset=0, version=catalogue.name, catalogue=catalogue)
    return rd


CODE_SCALES = (8.0, 2.0, 0.5)  # level l's code j is CODE_SCALES[l] * e_j


def code_embedding(codes) -> list[float]:
    """An embedding whose nearest codes (residual quantization) are exactly ``codes``."""
    x = np.zeros(LEVELS + 1, dtype=np.float64)
    for scale, c in zip(CODE_SCALES, codes):
        x[c] += scale
    return x.tolist()


def write_codebook(rd: RunDir, shift: int = 0) -> None:
    """A real saved ``ResidualCodebook`` (dim 4, 3 levels x 4 codes) with hand-set codes; with
    ``shift``, code j of every level is code (j + shift) % 4 of the unshifted book."""
    import torch

    from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook

    book = ResidualCodebook(CodebookConfig(dim=LEVELS + 1, levels=LEVELS, codes_per_level=4))
    with torch.no_grad():
        book.codebooks.copy_(torch.stack([s * torch.eye(4).roll(-shift, dims=0) for s in CODE_SCALES]))
    with rd.writing("codebook", {"levels": LEVELS}) as tmp:
        book.save_pretrained(tmp)

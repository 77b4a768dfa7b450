"""The baselines, each ranking all items for the rows of the evaluated splits.

Every function returns ``(rankings per split, info)``: rankings are ``(users, k)`` item ids,
best first, aligned with that split's rows, so the stage scores them with the same code as ours.
What a baseline learns from holds every user (``train_rows``, or all of ``sequences/``); ``rows`` may be
a user sample (a demo precache scores a sample): restricting what baselines *learn* to the sample
would weaken them (SASRec trained on 2,000 instead of 8,317 sequences). Every baseline masks the
same items as ours (:func:`~semconv.evaluate.protocol.history_exclusions`).
A baseline that cannot run (e.g. no CF model because the user supplied item embeddings) raises
:class:`BaselineUnavailable`, and the report says why instead of showing a number.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from semconv.artifacts import RunDir
from semconv.evaluate.config import SASRecConfig
from semconv.evaluate.protocol import SplitRows, history_exclusions
from semconv.evaluate.sasrec import sasrec_topk, torch_threads, train_sasrec
from semconv.protocol import popularity, popularity_topk

Rankings = dict[str, np.ndarray]


class BaselineUnavailable(RuntimeError):
    """A baseline whose inputs this run does not have."""


def rank_popularity(
    rows: dict[str, SplitRows], sequences: pa.Table, bounds: pa.Table, num_items: int, k: int,
    exclude_history: bool,
) -> tuple[Rankings, dict[str, Any]]:
    """Most-popular items of the train interactions of ``sequences`` under ``splits/`` ``bounds``
    (every user, whatever sample ``rows`` holds) for every row."""
    counts = popularity(sequences, bounds, num_items)
    out = {
        name: popularity_topk(counts, len(r), k, history_exclusions(r, exclude_history))
        for name, r in rows.items()
    }
    top = np.argsort(-counts, kind="stable")[:k]
    return out, {"train_interactions": int(counts.sum()), "top_items": top.tolist(),
                 "top_counts": counts[top].tolist()}


def rank_sasrec(
    rows: dict[str, SplitRows], num_items: int, k: int, exclude_history: bool,
    cfg: SASRecConfig, max_len: int, seed: int, train_rows: dict[str, SplitRows] | None = None,
) -> tuple[Rankings, dict[str, Any]]:
    """Train SASRec on each user's train sequence (the valid row's history, every user in
    ``train_rows``), early-stopped on valid. At test time the model reads the test row's history
    (train items + the valid target).
    """
    valid = (train_rows or rows)["valid"]
    model, log = train_sasrec(valid.histories, valid, num_items, cfg, max_len, seed, exclude_history)
    with torch_threads(cfg.num_threads):
        out = {
            name: sasrec_topk(model, r.histories, k, history_exclusions(r, exclude_history))
            for name, r in rows.items()
        }
    log["parameters"] = sum(p.numel() for p in model.parameters())
    log["max_len"] = max_len
    return out, log


def rank_cf(
    run: RunDir, rows: dict[str, SplitRows], k: int, exclude_history: bool
) -> tuple[Rankings, dict[str, Any]]:
    """The stage-1 collaborative model (LightGCN saved in ``item_emb/cf_model``) as a recommender."""
    try:
        from semconv.embed.cf import recommend_topk
        from semconv.embed.stage import cf_model_dir
    except ImportError as err:  # pragma: no cover - depends on the embed package's version
        raise BaselineUnavailable(f"semconv.embed has no CF recommender API ({err})") from None
    if not run.is_complete("item_emb"):
        raise BaselineUnavailable("item_emb/ is missing, so there is no CF model")
    try:
        model_dir = cf_model_dir(run.uri)
    except FileNotFoundError as err:
        raise BaselineUnavailable(str(err)) from None
    start = time.perf_counter()
    out = {
        name: np.asarray(recommend_topk(model_dir, r.user_ids, k, history_exclusions(r, exclude_history)))
        for name, r in rows.items()
    }
    info: dict[str, Any] = {"model_dir": str(model_dir), "rank_seconds": time.perf_counter() - start}
    manifest = run.manifest("item_emb")
    for key in ("source", "dim"):
        if key in manifest:
            info[key] = manifest[key]
    return out, info

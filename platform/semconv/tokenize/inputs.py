"""Inputs of the tokenize stage: behaviour and text embeddings, read and checked.

A wrong dimension, a NaN or an item missing from one of the tables is an error that names the
artifact, the item id and what to do, raised before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semconv.artifacts import RunDir


class TokenizeInputError(ValueError):
    """Embeddings that cannot be tokenized as given."""


@dataclass
class TokenizeInputs:
    """Row-aligned inputs: ``item_ids`` (sorted int64), ``embeddings`` (n, d), text (n, d_llm)."""

    item_ids: np.ndarray
    embeddings: np.ndarray
    text_embeddings: np.ndarray | None


def check_matrix(
    name: str, x: np.ndarray, dim: int | None = None, ids: np.ndarray | None = None
) -> np.ndarray:
    """``x`` as a finite float32 ``(n, dim)`` matrix, or a :class:`TokenizeInputError`."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise TokenizeInputError(f"{name}: expected a 2-D (items, dim) array, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise TokenizeInputError(f"{name}: expected dimension {dim}, got {x.shape[1]}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        where = ids[rows[:5]].tolist() if ids is not None else rows[:5].tolist()
        label = "item_id" if ids is not None else "row"
        raise TokenizeInputError(
            f"{name}: {len(rows)} embeddings contain NaN or inf ({label} {where}...); "
            "fix or drop those items upstream"
        )
    return x


def table_embeddings(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids, embeddings)`` from an ``item_id`` + ``embedding`` list column table."""
    for col in ("item_id", "embedding"):
        if col not in table.column_names:
            raise TokenizeInputError(f"{name}: missing column {col!r} (has {table.column_names})")
    ids = table.column("item_id").to_numpy().astype(np.int64)
    col = table.column("embedding").combine_chunks()
    if col.null_count:
        raise TokenizeInputError(f"{name}: {col.null_count} rows have a null embedding")
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
    else:
        lengths = np.unique(col.value_lengths().to_numpy())
        if len(lengths) != 1:
            raise TokenizeInputError(f"{name}: embeddings have different lengths {lengths[:5].tolist()}")
        width = int(lengths[0])
    values = col.flatten().to_numpy(zero_copy_only=False)
    emb = values.reshape(len(ids), width) if len(ids) else np.zeros((0, width), np.float32)
    return ids, check_matrix(name, emb, ids=ids)


def align(
    beh_ids: np.ndarray, beh: np.ndarray, text_ids: np.ndarray | None = None,
    text: np.ndarray | None = None, item_ids: np.ndarray | None = None,
) -> TokenizeInputs:
    """Row-align behaviour and text embeddings by item id; every item must be in both."""
    def unique_sorted(name: str, ids: np.ndarray) -> np.ndarray:
        order = np.argsort(ids, kind="stable")
        dup = ids[order][1:][np.diff(ids[order]) == 0]
        if len(dup):
            raise TokenizeInputError(f"{name}: duplicate item_id {np.unique(dup)[:5].tolist()}")
        return order

    if len(beh_ids) == 0:
        raise TokenizeInputError("item_emb: no items")
    order = unique_sorted("item_emb", beh_ids)
    ids, beh = beh_ids[order], beh[order]
    if item_ids is not None:
        missing = np.setdiff1d(item_ids, ids)
        if len(missing):
            raise TokenizeInputError(
                f"item_emb: {len(missing)} items of items/ have no behaviour embedding "
                f"(item_id {missing[:5].tolist()}...); re-run the embed stage"
            )
    if text is None:
        return TokenizeInputs(ids, beh, None)
    t_order = unique_sorted("item_text_emb", text_ids)
    t_ids, text = text_ids[t_order], text[t_order]
    for name, a, b in (("item_text_emb", ids, t_ids), ("item_emb", t_ids, ids)):
        missing = np.setdiff1d(a, b)
        if len(missing):
            raise TokenizeInputError(
                f"{name}: {len(missing)} items are missing (item_id {missing[:5].tolist()}...); "
                "item_emb and item_text_emb must cover the same items"
            )
    return TokenizeInputs(ids, beh, text)


def load_inputs(run_dir: RunDir, need_text: bool = True) -> TokenizeInputs:
    """Read ``item_emb/`` (and ``item_text_emb/``) from a run directory, checked and aligned."""
    needed = ["item_emb"] + (["item_text_emb"] if need_text else [])
    run_dir.require(*needed)
    beh_ids, beh = table_embeddings(run_dir.read_table("item_emb"), "item_emb")
    item_ids = None
    if run_dir.is_complete("items"):
        item_ids = run_dir.read_table("items", columns=["item_id"]).column("item_id").to_numpy()
    if not need_text:
        return align(beh_ids, beh, item_ids=item_ids)
    text_ids, text = table_embeddings(run_dir.read_table("item_text_emb"), "item_text_emb")
    return align(beh_ids, beh, text_ids, text, item_ids=item_ids)

"""The delta: new items and new interactions, validated and mapped onto the run's dense ids.

Rows are read by the same readers as ``prepare`` (so a bad row gets the same message: file, row,
field, and ``refresh.on_bad_rows=skip`` to drop it), then checked against the run:

* a new item must not already be in the catalogue, must appear once, must have text; its optional
  ``embedding`` must be a list of finite numbers of the behaviour-embedding dimension;
* an interaction's item must be in the catalogue or among the new items;
* new items get ids ``N, N+1, ...`` in file order, users new to the run get ids after the largest
  user id in order of first appearance.

Interactions come back sorted per user chronologically (``timestamp`` when the file has it, else
file order), the order in which they extend the histories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.data.prepare import ITEMS_SCHEMA
from semconv.data.readers import DataError, ReadReport, bad_row, has_text, read_interactions, read_items


@dataclass
class Delta:
    """New items (``items`` in ``items/`` schema, dense ids from N) and new interactions."""

    items: pa.Table
    supplied: np.ndarray  # (m, d) float32 behaviour embeddings given in the file (zeros where not)
    has_supplied: np.ndarray  # (m,) bool
    user_ids: np.ndarray  # (n,) int64 dense, grouped by user, chronological inside a user
    item_ids: np.ndarray  # (n,) int64 dense
    timestamps: np.ndarray | None  # (n,) int64 or None when the file has none
    new_users: pa.Table  # user_id, source_user_id of users the run has not seen
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return self.items.num_rows


def _embedding(value, dim: int) -> np.ndarray | None | str:
    """The parsed vector, None when absent, or a message saying what is wrong."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return "field 'embedding' is not a JSON list of numbers"
    if not isinstance(value, (list, tuple, np.ndarray)) or any(
            isinstance(v, (bool, str)) or v is None for v in value):
        return "field 'embedding' must be a list of numbers"
    vec = np.asarray(value, dtype=np.float64)
    if vec.ndim != 1 or vec.size != dim:
        return f"field 'embedding' has dimension {vec.size}, expected {dim} (the run's item_emb/)"
    if not np.isfinite(vec).all():
        return "field 'embedding' has a NaN or infinite value"
    return vec.astype(np.float32)


def read_new_items(uri: str, catalogue: pa.Table, dim: int, on_bad_rows: str, report: ReadReport
                   ) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """New items with dense ids after the catalogue's, and their supplied embeddings."""
    items, raw = read_items(uri, on_bad_rows, report, keep_raw=("embedding",))
    known = set(catalogue.column("source_id").to_pylist())
    embeddings = raw["embedding"].to_pylist() if "embedding" in raw else [None] * items.num_rows
    seen: dict[str, int] = {}
    keep, vecs = [], []
    cols = {c: items.column(c).to_pylist() for c in ("item", "title", "description", "row")}
    for i, key in enumerate(cols["item"]):
        row = cols["row"][i]
        if key in seen:
            raise DataError(f"{uri}: row {row}: duplicate item_id {key!r} (first at row {seen[key]})")
        seen[key] = row
        if key in known:
            raise DataError(f"{uri}: row {row}: item_id {key!r} is already in the catalogue; a refresh "
                            "adds new items only (existing items keep their codes and text)")
        if not (has_text(cols["title"][i]) or has_text(cols["description"][i])):
            bad_row(uri, row, f"item {key!r} has no text (empty 'title' and 'description')", on_bad_rows, report,
                    "item_without_text")
            continue
        vec = _embedding(embeddings[i], dim)
        if isinstance(vec, str):
            bad_row(uri, row, f"item {key!r}: {vec}", on_bad_rows, report, "bad_embedding")
            continue
        keep.append(i)
        vecs.append(vec)
    items = items.take(pa.array(keep, pa.int64()))
    start = catalogue.num_rows
    table = pa.table({
        "item_id": pa.array(np.arange(start, start + items.num_rows, dtype=np.int64)),
        "source_id": items.column("item"),
        **{f: items.column(f) for f in ("title", "description", "brand", "categories")},
    }, schema=ITEMS_SCHEMA)
    has = np.array([v is not None for v in vecs], dtype=bool)
    supplied = np.zeros((len(vecs), dim), np.float32)
    for i, v in enumerate(vecs):
        if v is not None:
            supplied[i] = v
    return table, supplied, has


@dataclass(frozen=True)
class KnownUsers:
    """The run's users as far as a delta needs them: the rows (``user_id``, ``source_user_id``)
    of the source ids it names, and the first free dense id. A refresh looks them up in
    ``sequences/`` file by file (:func:`semconv.refresh.user_files.known_users`)."""

    lookup: Callable[[pa.Array], pa.Table]
    next_id: int


def _dense_users(users: pa.Array, known: KnownUsers) -> tuple[np.ndarray, pa.Table]:
    """Dense user ids of source ids; users new to the run get ids after the largest one."""
    rows = known.lookup(pc.unique(users))
    idx = pc.index_in(users, value_set=rows.column("source_user_id")).to_numpy(zero_copy_only=False)
    is_known = ~np.isnan(idx) if idx.dtype.kind == "f" else idx >= 0
    out = np.full(len(users), -1, dtype=np.int64)
    out[is_known] = rows.column("user_id").to_numpy()[idx[is_known].astype(np.int64)]
    fresh = users.filter(pa.array(~is_known))
    uniq, first = np.unique(np.asarray(fresh.to_pylist(), dtype=object), return_index=True)
    order = uniq[np.argsort(first)]
    new_ids = {u: known.next_id + i for i, u in enumerate(order.tolist())}
    out[~is_known] = [new_ids[u] for u in fresh.to_pylist()]
    new_users = pa.table({"user_id": pa.array(list(new_ids.values()), pa.int64()),
                          "source_user_id": pa.array(list(new_ids), pa.string())})
    return out, new_users


def _index_in(values: pa.Array, keys: pa.Array) -> np.ndarray:
    """Position of each value in ``keys``, -1 when absent."""
    idx = pc.index_in(values, value_set=keys)
    return pc.fill_null(idx, -1).to_numpy().astype(np.int64)


def read_delta(cfg, catalogue: pa.Table, known: KnownUsers, dim: int) -> Delta:
    """Read ``cfg.interactions`` / ``cfg.items`` (a ``RefreshConfig``) against the run's catalogue
    and users."""
    if not cfg.interactions and not cfg.items:
        raise DataError("refresh needs refresh.interactions and/or refresh.items (paths or URIs)")
    report = ReadReport(setting="refresh.on_bad_rows")
    if cfg.items:
        items, supplied, has = read_new_items(cfg.items, catalogue, dim, cfg.on_bad_rows, report)
    else:
        items = ITEMS_SCHEMA.empty_table()
        supplied, has = np.zeros((0, dim), np.float32), np.zeros(0, bool)
    empty = np.zeros(0, np.int64)
    if not cfg.interactions:
        return Delta(items, supplied, has, empty, empty, None,
                     pa.table({"user_id": pa.array([], pa.int64()), "source_user_id": pa.array([], pa.string())}),
                     report.skipped)
    uri = cfg.interactions
    inter = read_interactions(uri, cfg.on_bad_rows, report)
    ids = _index_in(inter.column("item"), catalogue.column("source_id"))
    new = _index_in(inter.column("item"), items.column("source_id"))
    ids = np.where(ids >= 0, ids, np.where(new >= 0, new + catalogue.num_rows, -1))
    if (ids < 0).any():
        bad = np.flatnonzero(ids < 0)
        r, it = inter.column("row")[int(bad[0])].as_py(), inter.column("item")[int(bad[0])].as_py()
        bad_row(uri, r, f"field 'item_id' names unknown item {it!r}, in neither the catalogue nor the new "
                f"items ({len(bad)} such interactions)", cfg.on_bad_rows, report, "unknown_item")
        report.skip("unknown_item", len(bad) - 1)
        keep = ids >= 0
        inter, ids = inter.filter(pa.array(keep)), ids[keep]
    users, new_users = _dense_users(inter.column("user"), known)
    ts = inter.column("timestamp").to_numpy(zero_copy_only=False) if "timestamp" in inter.column_names else None
    rows = inter.column("row").to_numpy()
    keys = [rows] + ([np.nan_to_num(ts.astype(np.float64), nan=np.inf)] if ts is not None else []) + [users]
    order = np.lexsort(keys)  # by user, then time, then file row
    users, ids, rows = users[order], ids[order], rows[order]
    ts = ts[order] if ts is not None else None
    # a repeated (user, item) pair inside the delta keeps its earliest occurrence, as in prepare
    pair = users.astype(np.int64) * (catalogue.num_rows + items.num_rows + 1) + ids
    _, first = np.unique(pair, return_index=True)
    if len(first) < len(pair):
        report.skip("duplicate_interaction", len(pair) - len(first))
        keep = np.sort(first)
        users, ids, ts = users[keep], ids[keep], (ts[keep] if ts is not None else None)
    return Delta(items, supplied, has, users, ids, ts, new_users, report.skipped)

"""The ``prepare`` stage: raw data -> ``items/``, ``sequences/``, ``splits/`` (README.md, "The pipeline").

Steps: validate, drop duplicate (user, item) pairs keeping the earliest, optional iterative
k-core, dense int ids (items in catalogue order, users in order of first appearance; source ids
kept), chronological histories, and the leave-last-out split by the rules of
:mod:`semconv.protocol` (test = last item, valid = second-to-last; users with fewer than 3
interactions are train only), stored as each user's valid and test positions (``splits/``, one
row per user; the per-prefix rows are derived by whoever needs them). ``sequences/`` keeps the
full history.

Here every table is in one process (~0.3 GB per million interactions). Large inputs
(``prepare.ray_data``) run the same steps sharded on Ray Data (:mod:`semconv.data.sharded`),
tested to give the same tables as these functions.
"""

from __future__ import annotations

import logging
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.lineage import stage_run
from semconv.data.config import PrepareConfig
from semconv.data.readers import DataError, ReadReport, has_text, read_generic, read_lcrec
from semconv.data.sharded import prepare_sharded, use_sharded
from semconv.protocol import row_counts, split_bounds, train_rows

log = logging.getLogger(__name__)

ITEMS_SCHEMA = pa.schema([("item_id", pa.int64()), ("source_id", pa.string()), ("title", pa.string()),
                          ("description", pa.string()), ("brand", pa.string()), ("categories", pa.string())])


def clean(interactions: pa.Table, items: pa.Table, cfg: PrepareConfig, report: ReadReport,
          inter_src: str, items_src: str) -> tuple[pa.Table, pa.Table]:
    """Validate and filter; returns (interactions sorted per user chronologically, items)."""
    skip = cfg.on_bad_rows == "skip"
    ids = items.column("item").to_pylist()
    seen: dict[str, int] = {}
    keep_items = []
    titles, descs = items.column("title").to_pylist(), items.column("description").to_pylist()
    for i, key in enumerate(ids):
        if key in seen:
            raise DataError(f"{items_src}: row {i + 1}: duplicate item_id {key!r} (first at row {seen[key] + 1})")
        seen[key] = i
        if not (has_text(titles[i]) or has_text(descs[i])):
            if not skip:
                raise DataError(f"{items_src}: row {i + 1}: item {key!r} has no text (empty 'title' and "
                                f"'description'); set prepare.on_bad_rows=skip to drop it")
            report.skip("item_without_text")
            continue
        keep_items.append(i)
    items = items.take(pa.array(keep_items, pa.int64()))
    if items.num_rows == 0:
        raise DataError(f"{items_src}: no items (empty dataset)")
    if interactions.num_rows == 0:
        raise DataError(f"{inter_src}: no interactions (empty dataset)")

    known = pc.is_in(interactions.column("item"), value_set=items.column("item"))
    if not pc.all(known).as_py():
        bad = pc.indices_nonzero(pc.invert(known))
        if not skip:
            r = interactions.column("row")[bad[0].as_py()].as_py()
            it = interactions.column("item")[bad[0].as_py()].as_py()
            raise DataError(f"{inter_src}: row {r}: field 'item_id' names unknown item {it!r} "
                            f"({len(bad)} such interactions; set prepare.on_bad_rows=skip to drop them)")
        report.skip("unknown_item", len(bad))
        interactions = interactions.filter(known)

    # chronological order per user: timestamp when present, else file order (row); users in
    # order of first appearance (pc.unique keeps it), all in Arrow compute (no row objects)
    keys = [("user_first", "ascending")]
    users = interactions.column("user")
    interactions = interactions.append_column(
        "user_first", pc.cast(pc.index_in(users, value_set=pc.unique(users)), pa.int64()))
    if "timestamp" in interactions.column_names:
        keys.append(("timestamp", "ascending"))
    keys.append(("row", "ascending"))
    interactions = interactions.sort_by(keys)
    # drop repeated (user, item) pairs, keeping the earliest
    pos = interactions.append_column("_pos", pa.array(np.arange(interactions.num_rows, dtype=np.int64)))
    first_idx = pos.group_by(["user", "item"], use_threads=False).aggregate([("_pos", "min")])["_pos_min"]
    if len(first_idx) < interactions.num_rows:
        report.skip("duplicate_interaction", interactions.num_rows - len(first_idx))
        interactions = interactions.take(pa.array(np.sort(first_idx.to_numpy())))
    if cfg.k_core:
        interactions = k_core(interactions, cfg.k_core)
        if interactions.num_rows == 0:
            raise DataError(f"{inter_src}: no interactions left after {cfg.k_core}-core filtering")
    return interactions, items


def k_core(interactions: pa.Table, k: int) -> pa.Table:
    """Iteratively drop users and items with fewer than ``k`` interactions."""
    while True:
        n = interactions.num_rows
        for col in ("user", "item"):
            counts = interactions.group_by(col).aggregate([(col, "count")])
            ok = counts.filter(pc.greater_equal(counts.column(f"{col}_count"), k)).column(col)
            interactions = interactions.filter(pc.is_in(interactions.column(col), value_set=ok))
        if interactions.num_rows == n:
            return interactions


def build_tables(interactions: pa.Table, items: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Dense ids; returns (items/, sequences/) tables."""
    n_items = items.num_rows
    items_out = pa.table({
        "item_id": pa.array(np.arange(n_items, dtype=np.int64)),
        "source_id": items.column("item"),
        **{f: items.column(f) for f in ("title", "description", "brand", "categories")},
    }, schema=ITEMS_SCHEMA)
    # dense item id = position in the catalogue, looked up column-wise before grouping
    interactions = interactions.append_column(
        "item_dense", pc.cast(pc.index_in(interactions.column("item"), value_set=items.column("item")), pa.int64()))
    cols = ["item_dense"] + [c for c in ("timestamp", "review") if c in interactions.column_names]
    grouped = interactions.group_by("user_first", use_threads=False).aggregate(
        [("user", "min")] + [(c, "list") for c in cols])
    grouped = grouped.sort_by("user_first")
    seqs = {
        "user_id": pa.array(np.arange(grouped.num_rows, dtype=np.int64)),
        "source_user_id": grouped.column("user_min"),
        "history": grouped.column("item_dense_list").cast(pa.list_(pa.int64())),
    }
    if "timestamp" in cols:
        seqs["timestamps"] = grouped.column("timestamp_list").cast(pa.list_(pa.int64()))
    if "review" in cols:
        seqs["reviews"] = grouped.column("review_list")
    return items_out, pa.table(seqs)


STATS_ORDER = ["users", "items", "interactions", "avg_history_len"]


def dataset_stats(items: pa.Table, sequences: pa.Table, long_history: int) -> dict[str, float]:
    return length_stats(items.num_rows, pc.list_value_length(sequences.column("history")).to_numpy(), long_history)


def length_stats(n_items: int, lens: np.ndarray, long_history: int) -> dict[str, float]:
    """The dataset's stats from its item count and every user's history length."""
    return {
        "users": int(len(lens)),
        "items": int(n_items),
        "interactions": int(lens.sum()),
        "avg_history_len": float(lens.mean()) if len(lens) else 0.0,
        f"share_history_gt_{long_history}": float((lens > long_history).mean()) if len(lens) else 0.0,
    }


def format_stats(stats: dict[str, float], skipped: dict[str, int]) -> str:
    """The stage's one-line result: each stat, then each count of skipped rows."""
    order = sorted(stats, key=lambda k: (STATS_ORDER.index(k) if k in STATS_ORDER else len(STATS_ORDER), k))
    rows = [(k, f"{stats[k]:,}" if isinstance(stats[k], int) else f"{stats[k]:.4f}") for k in order]
    rows += [(f"skipped_{k}", f"{v:,}") for k, v in sorted(skipped.items())]
    return "prepare: " + ", ".join(f"{k} {v}" for k, v in rows)


def read_raw(cfg: PrepareConfig) -> tuple[pa.Table, pa.Table, ReadReport, str, str]:
    if cfg.format == "lcrec":
        name = cfg.name or cfg.dataset.rstrip("/").split("/")[-1]
        inter, items = read_lcrec(cfg.dataset, name)
        return inter, items, ReadReport(), f"{cfg.dataset}/{name}.inter.json", f"{cfg.dataset}/{name}.item.json"
    if not cfg.interactions or not cfg.items:
        raise DataError("prepare.format=generic needs prepare.interactions and prepare.items (paths or URIs)")
    inter, items, report = read_generic(cfg.interactions, cfg.items, cfg.on_bad_rows)
    return inter, items, report, cfg.interactions, cfg.items


def run_prepare(cfg) -> dict[str, str]:
    """Write ``items/``, ``sequences/``, ``splits/`` for ``cfg.prepare``; complete ones are kept
    (the pipeline deletes them first when ``cfg.prepare`` changed, :mod:`semconv.lineage`)."""
    pc_cfg: PrepareConfig = cfg.prepare
    run = stage_run(cfg, "prepare")
    names = ("items", "sequences", "splits")
    if not all(run.is_complete(n) for n in names) and use_sharded(pc_cfg, run):
        prepare_sharded(cfg, run)  # large inputs: Ray Data, no process holds the rows
    elif not all(run.is_complete(n) for n in ("items", "sequences")):
        inter, items, report, isrc, msrc = read_raw(pc_cfg)
        inter, items = clean(inter, items, pc_cfg, report, isrc, msrc)
        items_t, seqs_t = build_tables(inter, items)
        stats = dataset_stats(items_t, seqs_t, pc_cfg.long_history)
        meta = {"stats": stats, "skipped": report.skipped, "source": pc_cfg.model_dump()}
        if not run.is_complete("items"):
            run.write_table("items", items_t, pc_cfg.num_shards, meta)
        if not run.is_complete("sequences"):
            run.write_table("sequences", seqs_t, pc_cfg.num_shards, meta)
    else:
        seqs_t = None
    if not run.is_complete("splits"):
        seqs_t = seqs_t if seqs_t is not None else run.read_table("sequences")
        bounds = split_bounds(seqs_t)
        counts = row_counts(bounds, int(train_rows(seqs_t, bounds).sum()))
        run.write_table("splits", bounds, pc_cfg.num_shards, {"rows_per_split": counts, "max_len": pc_cfg.max_len})
    meta = run.manifest("sequences")
    print(format_stats(meta["stats"], meta.get("skipped", {})), flush=True)
    return {n: run.path(n) for n in names}

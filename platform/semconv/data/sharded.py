"""``prepare`` on Ray Data: the in-memory path's tables, with no process holding all the rows.

Why: in one process ``prepare`` needs ~0.3 GB per million interactions (10M: 3 GB; 100M would
need ~30 GB). Here a task holds one piece of input (about ``BLOCK_BYTES`` on disk), one hash
partition of users (about ``1/num_blocks`` of them; a reducer may draw two or three partitions,
Ray hashing the partition numbers) or one block of them; the driver holds compact arrays only --
the catalogue's keys, per-item alive flags and degrees, each user's first position and history
length -- and streams the output tables to Parquet a block at a time. ``bench/scale.py
--prepare-only``, 2 cores: 100M interactions in 302 s with 0.46 GB private memory in the driver
and 0.63 GB in the largest worker (in memory, 10M already needs 2.5 GB in the driver).

1. Read (:mod:`semconv.data.sources`): both tables in pieces, validated as the whole-file
   readers validate; the first error in file order is raised (then, as in memory: interactions,
   items, catalogue, unknown items, k-core).
2. Catalogue: the driver checks the item keys for duplicates and text; an item's dense id is
   its place among the kept ones (catalogue order).
3. Users (:mod:`semconv.data.users`): interactions looked up in the catalogue, hash-partitioned
   by user (Ray Data ``groupby`` on a stable hash + ``map_groups``) into one row per user:
   chronological (timestamp, then file position), repeated items dropped keeping the earliest.
4. k-core on aggregates: a pass over the user rows under the alive items returns item degrees;
   the driver drops items under ``k`` until nothing changes (a user is kept when ``k`` of their
   items are alive). The last pass gives the kept users' first positions: their ranks are the
   dense user ids (users in order of first appearance).
5. ``sequences/`` rows sorted by ``user_id`` (Ray Data ``sort``), ``splits/`` by
   :func:`~semconv.protocol.split_bounds` over them (one row per user), ``items/`` from the catalogue blocks, each
   cut into ``num_shards`` files at the rows ``RunDir.write_table`` would cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semconv.artifacts import RunDir
from semconv.data import users as U
from semconv.data.chunks import raw_bytes
from semconv.data.config import PrepareConfig
from semconv.data.readers import DataError, ReadReport
from semconv.data.sources import OPTIONAL, Source, file_of, new_tally, open_sources, reports
from semconv.protocol import BOUNDS_SCHEMA, row_counts, split_bounds, train_rows
from semconv.ray_env import resolve

log = logging.getLogger(__name__)

BLOCK_BYTES = 16 << 20  # raw input per read piece and per user partition (auto num_blocks)
SPLIT_USERS = 1 << 16  # users per split_bounds batch
SHUFFLE_BATCH_BYTES = 64 << 20  # input one shuffle map task partitions at a time


def input_bytes(cfg: PrepareConfig) -> int | None:
    """Bytes of the raw files on disk (None: the config names no files; the stage says so)."""
    if cfg.format == "lcrec":
        name = cfg.name or cfg.dataset.rstrip("/").split("/")[-1]
        return sum(raw_bytes(f"{cfg.dataset}/{name}.{k}.json") for k in ("inter", "item"))
    if not cfg.interactions or not cfg.items:
        return None
    return raw_bytes(cfg.interactions) + raw_bytes(cfg.items)


def use_sharded(cfg: PrepareConfig, run: RunDir) -> bool:
    """``prepare.ray_data``: on, off, or (auto) when the input is ``ray_min_mb`` or more: the raw
    files, or ``sequences/`` when only ``splits/`` is left to build."""
    if cfg.ray_data != "auto":
        return cfg.ray_data == "on"
    if run.is_complete("items") and run.is_complete("sequences"):
        size = sum(f.get("bytes", 0) for f in run.manifest("sequences").get("files", {}).values())
    else:
        size = input_bytes(cfg)
    return size is not None and size >= cfg.ray_min_mb << 20


# ---- Ray Data tasks ---------------------------------------------------------------------------
def _lookup(t: pa.Table, keys: Any, parts: int, columns: list[str], tally: Any) -> pa.Table:
    """Ray Data task: :func:`~semconv.data.users.lookup`, filing the unknown items it dropped."""
    import ray

    out, unknown = U.lookup(t, resolve(keys), parts, columns)
    if unknown.num_rows:  # keyed by the block's first position: a retried task overwrites itself
        at = int(pc.index(unknown.column("pos"), pc.min(unknown.column("pos"))).as_py())
        first = {c: unknown.column(c)[at].as_py() for c in ("pos", "row", "item")}
        ray.get(tally.put.remote(("unknown", int(pc.min(t.column("pos")).as_py())), {"n": unknown.num_rows, **first}))
    return out


def _user_rows(t: pa.Table) -> pa.Table:
    return U.user_rows(t.drop_columns(["part"]))


def _scan(users: pa.Table, alive: Any, k: int) -> pa.Table:
    return U.scan(users, resolve(alive), k)


def _sequences(users: pa.Table, alive: Any, k: int, firsts: Any) -> pa.Table:
    return U.sequences(users, resolve(alive), k, resolve(firsts))


def _blocks(ds: Any) -> Iterable[pa.Table]:
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


# ---- driver steps -----------------------------------------------------------------------------
def catalogue(items: Source, keys: pa.Table, skip: bool, report: ReadReport) -> np.ndarray:
    """Which catalogue rows are kept (in order); duplicate keys and (unless ``skip``) items with
    no text are errors naming the first such row, as the in-memory path does."""
    item = keys.column("item").combine_chunks()
    rows, pos = keys.column("row").to_numpy(), keys.column("pos").to_numpy()
    text = keys.column("text").to_numpy(zero_copy_only=False).astype(bool)
    ids = pc.dictionary_encode(item).indices.to_numpy()
    _, first = np.unique(ids, return_index=True)
    dup = np.flatnonzero(first[ids] != np.arange(len(ids)))
    quiet = np.flatnonzero(~text)
    i_dup = int(dup[0]) if len(dup) else len(ids)
    i_txt = int(quiet[0]) if len(quiet) and not skip else len(ids)
    if i_dup < len(ids) and i_dup <= i_txt:
        j = int(first[ids[i_dup]])
        raise DataError(f"{file_of(items, pos[i_dup])}: row {rows[i_dup]}: duplicate item_id "
                        f"{item[i_dup].as_py()!r} (first at row {rows[j]})")
    if i_txt < len(ids):
        raise DataError(f"{file_of(items, pos[i_txt])}: row {rows[i_txt]}: item {item[i_txt].as_py()!r} has no "
                        f"text (empty 'title' and 'description'); set prepare.on_bad_rows=skip to drop it")
    if len(quiet):
        report.skip("item_without_text", len(quiet))
    return text


def unknown_items(inter: Source, entries: dict, skip: bool, report: ReadReport) -> None:
    found = [v for k, v in entries.items() if isinstance(k, tuple) and k[0] == "unknown"]
    if not found:
        return
    n = sum(v["n"] for v in found)
    if not skip:
        v = min(found, key=lambda v: v["pos"])
        raise DataError(f"{file_of(inter, v['pos'])}: row {v['row']}: field 'item_id' names unknown item "
                        f"{v['item']!r} ({n} such interactions; set prepare.on_bad_rows=skip to drop them)")
    report.skip("unknown_item", n)


def k_core(scan: Callable[[np.ndarray], Iterable[pa.Table]], n_items: int, k: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(alive items, kept users' first positions sorted, their history lengths, duplicates)``:
    ``scan(alive)`` passes (:func:`~semconv.data.users.scan` over every block of user rows)
    until no item under ``k`` is left (one pass when ``k`` is 0)."""
    alive = np.ones(n_items, bool)
    while True:
        degree, firsts, lens, dups = np.zeros(n_items, np.int64), [], [], 0
        for b in scan(alive):
            for i in range(b.num_rows):
                np.add.at(degree, b.column("items")[i].values.to_numpy(), b.column("counts")[i].values.to_numpy())
                firsts.append(b.column("firsts")[i].values.to_numpy())
                lens.append(b.column("lens")[i].values.to_numpy())
                dups += b.column("dups")[i].as_py()
        nxt = alive & (degree >= k)
        if not k or np.array_equal(nxt, alive):
            break
        log.info("k-core: %d items under %d dropped", int((alive & ~nxt).sum()), k)
        alive = nxt
    firsts_all = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    order = np.argsort(firsts_all)
    return alive, firsts_all[order], (np.concatenate(lens) if lens else np.zeros(0, np.int64))[order], dups


def write_stream(run: RunDir, name: str, blocks: Iterable[pa.Table], schema: pa.Schema, rows: int,
                 num_shards: int, meta: dict[str, Any]) -> None:
    """Blocks (in row order) as a Parquet artifact cut into ``num_shards`` files where
    :meth:`RunDir.write_table` cuts them; ``meta`` is read when the last block is written."""
    n = max(1, min(num_shards, rows or 1))
    step = -(-rows // n) if rows else 0
    with run.writing(name, meta) as tmp:
        meta.update({"rows": rows, "schema": str(schema)})
        shard, left, written = 0, step, 0
        writer = pq.ParquetWriter(tmp / "part-00000.parquet", schema)
        for block in blocks:
            block = block.select(schema.names).cast(schema)
            while block.num_rows:
                if left == 0 and shard < n - 1:
                    writer.close()
                    shard, left = shard + 1, step
                    writer = pq.ParquetWriter(tmp / f"part-{shard:05d}.parquet", schema)
                take = block.num_rows if shard == n - 1 else min(left, block.num_rows)
                writer.write_table(block.slice(0, take))
                block, left, written = block.slice(take), left - take, written + take
        writer.close()
        if written != rows:
            raise RuntimeError(f"{name}: wrote {written} rows, expected {rows}")
        for i in range(shard + 1, n):  # write_table writes every shard, empty ones too
            pq.write_table(schema.empty_table(), tmp / f"part-{i:05d}.parquet")


def sequences_schema(columns: set[str]) -> pa.Schema:
    fields = [("user_id", pa.int64()), ("source_user_id", pa.string()), ("history", pa.list_(pa.int64()))]
    if "timestamp" in columns:
        fields.append(("timestamps", pa.list_(pa.int64())))
    if "review" in columns:
        fields.append(("reviews", pa.list_(pa.string())))
    return pa.schema(fields)


def _bounds(batch: pa.Table) -> pa.Table:
    bounds = split_bounds(batch)
    return bounds.append_column("train_rows", pa.array(train_rows(batch, bounds)))


def write_splits(run: RunDir, sequences: Any, users: int, cfg: PrepareConfig) -> None:
    counts = {s: 0 for s in ("train", "valid", "test")}

    def blocks() -> Iterable[pa.Table]:
        ds = sequences.select_columns(["user_id", "history"]).map_batches(
            _bounds, batch_format="pyarrow", batch_size=SPLIT_USERS)
        for b in _blocks(ds):
            train = int(pc.sum(b.column("train_rows")).as_py() or 0)
            b = b.drop_columns(["train_rows"])
            for name, n in row_counts(b, train).items():
                counts[name] += n
            yield b

    write_stream(run, "splits", blocks(), BOUNDS_SCHEMA, users, cfg.num_shards,
                 {"rows_per_split": counts, "max_len": cfg.max_len})


def prepare_sharded(cfg: Any, run: RunDir) -> None:
    """Write whichever of ``items/``, ``sequences/``, ``splits/`` is missing (``cfg``: the
    pipeline config; Ray is started as every stage starts it)."""
    import ray

    from semconv.ray_env import init_ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    pcfg: PrepareConfig = cfg.prepare
    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.preserve_order, getattr(ctx, "shuffle_input_batch_bytes", None)
    ctx.execution_options.preserve_order = True  # blocks stream out in row order
    if previous[1] is not None:  # a shuffle's map task gathers this much input (Ray's default: 1 GiB)
        ctx.shuffle_input_batch_bytes = SHUFFLE_BATCH_BYTES
    try:
        if not (run.is_complete("items") and run.is_complete("sequences")):
            sequences, rows = build(pcfg, run)
        else:
            stats = run.manifest("sequences")["stats"]
            sequences = ray.data.read_parquet(run.parquet_files("sequences"), filesystem=run.fs,
                                              columns=["user_id", "history"])
            rows = stats["users"]
        if not run.is_complete("splits"):
            write_splits(run, sequences, rows, pcfg)
    finally:
        ctx.execution_options.preserve_order = previous[0]
        if previous[1] is not None:
            ctx.shuffle_input_batch_bytes = previous[1]


def build(cfg: PrepareConfig, run: RunDir) -> tuple[Any, int]:
    """Steps 1-5 of the module docstring for ``items/`` and ``sequences/``; returns the sorted
    sequences (for ``splits/``) and the number of users."""
    import ray

    size = input_bytes(cfg) or 0
    parts = cfg.num_blocks or max(2 * int(ray.cluster_resources().get("CPU", 1)), -(-size // BLOCK_BYTES))
    tally = new_tally()
    try:
        return _build(cfg, run, parts, -(-size // parts), tally)
    finally:
        ray.kill(tally)


def _build(cfg: PrepareConfig, run: RunDir, parts: int, block_bytes: int, tally: Any) -> tuple[Any, int]:
    import ray

    from semconv.data.prepare import ITEMS_SCHEMA, length_stats  # (prepare imports this module)

    skip = cfg.on_bad_rows == "skip"
    inter, items = open_sources(cfg, parts, max(1, block_bytes), tally)
    inter_ds, items_ds = inter.ds.materialize(), items.ds.materialize()
    entries = ray.get(tally.get.remote())
    report = ReadReport()
    columns = reports(entries, "interactions", report) if not inter.lcrec else set()
    if not items.lcrec:
        reports(entries, "items", report)

    keys = pa.concat_tables([b.select(["item", "row", "pos", "text"]) for b in _blocks(items_ds)])
    keep = catalogue(items, keys, skip, report)
    kept_keys = keys.column("item").filter(pa.array(keep)).combine_chunks()
    n_items = len(kept_keys)
    del keys
    if n_items == 0:
        raise DataError(f"{items.uri}: no items (empty dataset)")
    if inter_ds.count() == 0:
        raise DataError(f"{inter.uri}: no interactions (empty dataset)")

    cols = sorted(c for c in OPTIONAL if c in columns)
    users = inter_ds.map_batches(_lookup, batch_format="pyarrow", batch_size=None, fn_kwargs={
        "keys": ray.put(kept_keys), "parts": parts, "columns": cols, "tally": tally})
    users = users.groupby("part", num_partitions=parts).map_groups(_user_rows, batch_format="pyarrow").materialize()
    unknown_items(inter, ray.get(tally.get.remote()), skip, report)
    del inter_ds

    def scan(alive: np.ndarray) -> Iterable[pa.Table]:
        return _blocks(users.map_batches(_scan, batch_format="pyarrow", batch_size=None,
                                         fn_kwargs={"alive": ray.put(alive), "k": cfg.k_core}))

    alive, firsts, lens, dups = k_core(scan, n_items, cfg.k_core)
    if dups:
        report.skip("duplicate_interaction", dups)
    if cfg.k_core and not len(firsts):
        raise DataError(f"{inter.uri}: no interactions left after {cfg.k_core}-core filtering")
    stats = length_stats(n_items, lens, cfg.long_history)
    meta = {"stats": stats, "skipped": report.skipped, "source": cfg.model_dump()}
    seqs = users.map_batches(_sequences, batch_format="pyarrow", batch_size=None, fn_kwargs={
        "alive": ray.put(alive), "k": cfg.k_core, "firsts": ray.put(firsts)}).sort("user_id").materialize()
    if not run.is_complete("items"):
        write_stream(run, "items", _catalogue_blocks(items_ds, ITEMS_SCHEMA), ITEMS_SCHEMA, n_items,
                     cfg.num_shards, dict(meta))
    if not run.is_complete("sequences"):
        write_stream(run, "sequences", _blocks(seqs), sequences_schema(columns), len(firsts),
                     cfg.num_shards, dict(meta))
    return seqs, len(firsts)


def _catalogue_blocks(items_ds: Any, schema: pa.Schema) -> Iterable[pa.Table]:
    """``items/`` blocks: the kept catalogue rows in order, numbered from 0."""
    offset = 0
    for b in _blocks(items_ds):
        b = b.filter(b.column("text"))
        yield pa.table({"item_id": pa.array(np.arange(offset, offset + b.num_rows, dtype=np.int64)),
                        "source_id": b.column("item"),
                        **{f: b.column(f) for f in ("title", "description", "brand", "categories")}},
                       schema=schema)
        offset += b.num_rows

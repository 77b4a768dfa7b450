"""Precache: top-K items for every user, by Ray Data batch inference, resumable shard by shard.

Users are split into shards by user-id range (:class:`ShardPlan`: sorted ids, ``users_per_shard``
each). The users of the shards still missing stream, in user-id order, through ``map_batches``
on an actor pool (:class:`PrecacheActor`: one model per actor, loaded once; one GPU per actor
on GPU, a few CPU threads otherwise). The driver collects the ordered results and writes each
shard, the moment its last user arrives, as ``shard-XXXXX.parquet`` via a temp name + rename. A
killed run leaves only whole shards behind; the rerun plans the same shards, skips those already
on disk and computes only the rest, so the finished artifact holds every user exactly once.
Memory stays flat in the number of users: Ray Data streams with backpressure, and the driver
holds at most one shard of results.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semconv.console import progress
from semconv.inference.run_ranker import RankerSpec

SHARD = re.compile(r"^shard-(\d{5,})\.parquet$")
PLAN = "_PLAN.json"
OUTPUT_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("items", pa.list_(pa.int64())), ("scores", pa.list_(pa.float32()))]
)


class PrecacheError(ValueError):
    """Users or shards that do not match the plan (duplicate users, stale or torn shards)."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``i`` holds the users ranked ``[i * users_per_shard, (i + 1) * users_per_shard)`` by
    user id: ``starts[i]`` is its first user id, ``sizes[i]`` its user count."""

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    users_per_shard: int

    @classmethod
    def from_user_ids(cls, user_ids: np.ndarray, users_per_shard: int) -> ShardPlan:
        ids = np.sort(np.asarray(user_ids, dtype=np.int64))
        dup = ids[1:][ids[1:] == ids[:-1]]
        if len(dup):
            raise PrecacheError(f"user_id {int(dup[0])} appears more than once among the users to precache")
        starts = ids[::users_per_shard]
        sizes = [len(ids[i : i + users_per_shard]) for i in range(0, len(ids), users_per_shard)]
        return cls(tuple(int(s) for s in starts), tuple(sizes), users_per_shard)

    @property
    def num_shards(self) -> int:
        return len(self.starts)

    @property
    def num_users(self) -> int:
        return int(sum(self.sizes))

    def shard_of(self, user_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.starts, dtype=np.int64), user_ids, side="right") - 1

    def to_json(self, fingerprint: dict) -> dict:
        return {"starts": list(self.starts), "sizes": list(self.sizes),
                "users_per_shard": self.users_per_shard, "fingerprint": fingerprint}


# ---- the partial directory (local path or pyarrow filesystem) ------------------------------
def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_shard(fs: pafs.FileSystem, partial: str, shard: int, table: pa.Table) -> None:
    """Write one shard atomically: a temp name in the same directory, then a rename."""
    tmp = f"{partial}/.{shard_name(shard)}.tmp-{uuid.uuid4().hex}"
    pq.write_table(table.cast(OUTPUT_SCHEMA), tmp, filesystem=fs)
    fs.move(tmp, f"{partial}/{shard_name(shard)}")


def done_shards(fs: pafs.FileSystem, partial: str) -> set[int]:
    """Shard numbers whose file is complete in ``partial`` (temp files are ignored)."""
    sel = pafs.FileSelector(partial, allow_not_found=True)
    return {int(m.group(1)) for f in fs.get_file_info(sel) if (m := SHARD.match(f.base_name))}


def open_partial(fs: pafs.FileSystem, partial: str, plan: ShardPlan, fingerprint: dict) -> set[int]:
    """Prepare ``partial`` for ``plan``; returns the shards already done.

    Shards written for a different plan or model (another fingerprint) are stale and are
    discarded, never mixed into the new result.
    """
    want = plan.to_json(fingerprint)
    if _exists(fs, f"{partial}/{PLAN}"):
        with fs.open_input_stream(f"{partial}/{PLAN}") as f:
            have = json.loads(f.read().decode())
        if have == want:
            for f in fs.get_file_info(pafs.FileSelector(partial)):  # torn writes of a killed run
                if f.base_name.startswith(".") and ".tmp-" in f.base_name:
                    fs.delete_file(f.path)
            return done_shards(fs, partial)
        fs.delete_dir(partial)
    fs.create_dir(partial, recursive=True)
    with fs.open_output_stream(f"{partial}/{PLAN}") as f:
        f.write(json.dumps(want, sort_keys=True).encode())
    return set()


def check_shards(fs: pafs.FileSystem, partial: str, plan: ShardPlan) -> None:
    """Every planned shard is on disk and holds exactly its planned users, once each."""
    for shard in range(plan.num_shards):
        path = f"{partial}/{shard_name(shard)}"
        if not _exists(fs, path):
            raise PrecacheError(f"shard {shard} is missing in {partial}")
        ids = pq.read_table(path, columns=["user_id"], filesystem=fs)["user_id"].to_numpy()
        ok = (len(ids) == plan.sizes[shard] and len(np.unique(ids)) == len(ids)
              and (plan.shard_of(ids) == shard).all())
        if not ok:
            raise PrecacheError(
                f"{path} holds {len(ids)} users, plan says {plan.sizes[shard]} distinct users of "
                f"shard {shard}: delete it and rerun"
            )


# ---- inference ------------------------------------------------------------------------------
class PrecacheActor:
    """One Ray actor: builds the ranker of ``spec`` once, then ranks batches of users
    (``user_id`` and the whole ``history`` to rank from: the prompt keeps its last ``max_len``)."""

    def __init__(
        self,
        spec: RankerSpec,
        item_codes: np.ndarray,
        item_ids: np.ndarray,
        batch_size: int,
        use_gpu: bool = False,
        num_threads: int = 1,
        share_prefix: bool = True,
    ):
        import torch

        if not use_gpu:
            torch.set_num_threads(num_threads)
        self.exclude_history = spec.exclude_history
        self.ranker = spec.build(item_codes, item_ids, batch_size=batch_size, share_prefix=share_prefix,
                                 use_gpu=use_gpu)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rank_batch(self.ranker, batch, self.exclude_history)


def rank_batch(ranker, batch: pa.Table, exclude_history: bool) -> pa.Table:
    """Precache rows (:data:`OUTPUT_SCHEMA`) for a table of ``user_id`` and ``history`` rows.

    ``ranker`` is a :class:`~semconv.inference.ranker.GenerativeRanker`. Used by the precache
    actors and by anything that re-decodes some users the same way (a refresh of touched users).
    """
    histories = batch["history"].to_pylist()
    items, scores = ranker.rank(histories, exclude_history)
    valid = items >= 0  # fewer than K reachable items (tiny catalogues, exclusion): drop the pad
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32))
    return pa.table(
        {
            "user_id": batch["user_id"].cast(pa.int64()),
            "items": pa.ListArray.from_arrays(offsets, pa.array(items[valid], pa.int64())),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(scores[valid], pa.float32())),
        }
    )


LIGHT_CPU = 0.1  # CPU share requested by read / filter / re-blocking tasks


def _pending_rows(batch: pa.Table, starts: np.ndarray, pending: np.ndarray) -> pa.Table:
    """Keep the rows of users whose shard is still missing (shards from ``starts``)."""
    shard = np.searchsorted(starts, batch["user_id"].to_numpy(), side="right") - 1
    return batch.filter(pa.array(pending[shard]))


def _ordered_shards(results: Iterator[pa.Table], plan: ShardPlan) -> Iterator[tuple[int, pa.Table]]:
    """Cut an ordered stream of result rows into whole shards (raises on a gap or repeat)."""
    buf: list[pa.Table] = []
    have, current = 0, None
    for table in results:
        while table.num_rows:
            first = int(plan.shard_of(np.asarray([table["user_id"][0].as_py()]))[0])
            if current is None:
                current = first
            if first != current:
                raise PrecacheError(
                    f"shard {current} got {have} of {plan.sizes[current]} users before users of shard "
                    f"{first} arrived: the input has missing or unsorted users"
                )
            take = min(plan.sizes[current] - have, table.num_rows)
            buf.append(table.slice(0, take))
            have, table = have + take, table.slice(take)
            if have == plan.sizes[current]:
                shard_table = pa.concat_tables(buf)
                ids = shard_table["user_id"].to_numpy()
                if not (plan.shard_of(ids) == current).all() or len(np.unique(ids)) != len(ids):
                    raise PrecacheError(
                        f"shard {current} got users outside its id range or repeated users: the "
                        "input has missing, repeated or unsorted users"
                    )
                yield current, shard_table
                buf, have, current = [], 0, None
    if current is not None:
        raise PrecacheError(f"the input ended inside shard {current} ({have} of {plan.sizes[current]} users)")


def precache_users(
    users,
    plan: ShardPlan,
    fs: pafs.FileSystem,
    partial: str,
    spec: RankerSpec,
    item_codes: np.ndarray,
    item_ids: np.ndarray | None = None,
    *,
    done: set[int] = frozenset(),
    batch_size: int = 16,
    sort_window: int = 8,
    num_actors: int = 1,
    use_gpu: bool = False,
    cpus_per_actor: int = 1,
    threads_per_actor: int | None = None,
    share_prefix: bool = True,
    presorted: bool = False,
) -> dict[str, float]:
    """Rank every user of the missing shards of ``plan`` and write those shards into ``partial``.

    ``users`` is a Ray Dataset with ``user_id`` and ``history`` columns (other rows, e.g. users of
    shards in ``done``, are dropped). Unless ``presorted``, it is sorted by user id first so shards
    complete one after another. Returns counts and timing.
    """
    from ray.data import ActorPoolStrategy

    item_codes = np.asarray(item_codes)
    item_ids = np.arange(len(item_codes)) if item_ids is None else np.asarray(item_ids)
    pending = np.array([s not in done for s in range(plan.num_shards)], dtype=bool)
    t0 = time.perf_counter()
    if not pending.any():
        return {"shards_written": 0, "users_written": 0, "seconds": 0.0}
    # The light operators ask for a sliver of CPU: the actor pool may hold every whole CPU of a
    # small machine, and a read or filter task that waits for a whole CPU would never run.
    ds = users.select_columns(["user_id", "history"]).map_batches(
        _pending_rows, batch_format="pyarrow", num_cpus=LIGHT_CPU,
        fn_kwargs={"starts": np.asarray(plan.starts, dtype=np.int64), "pending": pending},
    )
    if not presorted:
        ds = ds.sort("user_id")
    # one block per actor call: an actor task takes whole blocks, so big blocks would starve the pool
    ds = ds.repartition(target_num_rows_per_block=batch_size * sort_window)
    ds = ds.map_batches(
        PrecacheActor,
        batch_format="pyarrow",
        batch_size=batch_size * sort_window,
        compute=ActorPoolStrategy(size=num_actors),
        num_cpus=0 if use_gpu else cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={
            "spec": spec, "item_codes": item_codes, "item_ids": item_ids, "batch_size": batch_size,
            "use_gpu": use_gpu, "num_threads": threads_per_actor or cpus_per_actor, "share_prefix": share_prefix,
        },
    )
    ds.context.execution_options.preserve_order = True
    written = users_written = 0
    bar = progress("precache", int(np.asarray(plan.sizes)[pending].sum()), "user")

    def ranked() -> Iterator[pa.Table]:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            bar.update(table.num_rows)
            yield table

    for shard, table in _ordered_shards(ranked(), plan):
        if shard in done:
            raise PrecacheError(f"shard {shard} is already done but its users were ranked again")
        write_shard(fs, partial, shard, table)
        written, users_written = written + 1, users_written + table.num_rows
    bar.close()
    if written != int(pending.sum()):
        raise PrecacheError(f"wrote {written} shards, {int(pending.sum())} were missing: input lacks users")
    return {"shards_written": written, "users_written": users_written,
            "seconds": time.perf_counter() - t0}

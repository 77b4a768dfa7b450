"""Re-decode the chosen users, exactly once, and carry every other user's list over untouched.

The refreshed ``precache/`` keeps the previous version's shards: a shard none of whose users is
re-decoded is carried over as the same file (a hard link locally, byte-identical); a *dirty* shard
is rewritten with its untouched rows copied as they were and its re-decoded users' rows replaced.
A re-decoded user goes to the old shard whose user-id range holds them; users beyond the last
cached id (users new to the run) fill new shards of ``users_per_shard``.

Ranking runs through the precache's own resumable machinery (:func:`precache_users` on Ray Data,
shards written atomically into ``<version>.partial/rank/`` under a plan + fingerprint): one rank
shard per dirty output shard. A killed refresh, rerun, skips the rank shards already on disk and
ranks only the rest; the cheap, deterministic merge then runs when all are there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semconv.artifacts import link_or_copy
from semconv.inference.run_ranker import RankerSpec
from semconv.inference.precache import (
    SHARD,
    ShardPlan,
    check_shards,
    open_partial,
    precache_users,
    shard_name,
    write_shard,
)


@dataclass(frozen=True)
class RefreshPlan:
    """Rank group ``g`` (``rank``'s shard ``g``) becomes output shard ``targets[g]``."""

    rank: ShardPlan
    targets: tuple[int, ...]
    old_shards: tuple[str, ...]  # paths of the previous precache's shards, in shard order
    num_shards: int  # output shards

    @property
    def dirty(self) -> set[int]:
        return set(self.targets)


def old_shard_files(fs: pafs.FileSystem, precache_dir: str) -> list[str]:
    files = [f for f in fs.get_file_info(pafs.FileSelector(precache_dir)) if SHARD.match(f.base_name)]
    return [f.path for f in sorted(files, key=lambda f: int(SHARD.match(f.base_name).group(1)))]


def plan_refresh(fs: pafs.FileSystem, precache_dir: str, users: np.ndarray, users_per_shard: int) -> RefreshPlan:
    """Which output shard each re-decoded user (``users``, any order) lands in."""
    files = old_shard_files(fs, precache_dir)
    starts, last = [], -1
    for path in files:
        ids = pq.read_table(path, columns=["user_id"], filesystem=fs)["user_id"].to_numpy()
        starts.append(int(ids.min()) if len(ids) else last + 1)
        last = max(last, int(ids.max()) if len(ids) else last)
    users = np.unique(np.asarray(users, dtype=np.int64))
    target = np.zeros(len(users), dtype=np.int64)
    inside = users <= last
    if files:
        target[inside] = np.maximum(np.searchsorted(np.asarray(starts), users[inside], side="right") - 1, 0)
    target[~inside] = len(files) + np.arange(int((~inside).sum())) // users_per_shard
    groups, first, sizes = np.unique(target, return_index=True, return_counts=True)
    rank = ShardPlan(tuple(int(u) for u in users[first]), tuple(int(s) for s in sizes), users_per_shard)
    num = max(len(files), int(groups.max()) + 1 if len(groups) else 0)
    return RefreshPlan(rank, tuple(int(g) for g in groups), tuple(files), num)


def rank_users(sequences: pa.Table, users: np.ndarray, plan: RefreshPlan, fs: pafs.FileSystem,
               partial: str, fingerprint: dict, spec: RankerSpec, codes: np.ndarray, item_ids: np.ndarray,
               **decode) -> dict:
    """Rank ``users`` (the plan's) from their whole histories with ``spec`` into ``partial`` (the
    prompt keeps the last ``spec.max_len`` items; exclusion masks all of them, as online).

    Resumable: rank shards already in ``partial`` under the same plan and fingerprint are kept
    and their users are not ranked again.
    """
    import ray.data

    done = open_partial(fs, partial, plan.rank, fingerprint)
    sel = sequences.filter(pc.is_in(sequences.column("user_id"), value_set=pa.array(users, pa.int64())))
    sel = sel.select(["user_id", "history"]).sort_by("user_id")
    step = 2048
    ds = ray.data.from_arrow([sel.slice(i, step) for i in range(0, sel.num_rows, step)] or [sel])
    stats = precache_users(ds, plan.rank, fs, partial, spec, codes, item_ids, done=done, presorted=True,
                           **decode)
    check_shards(fs, partial, plan.rank)
    return {**stats, "rank_shards": plan.rank.num_shards, "rank_shards_done_before": len(done)}


def merge_shards(fs: pafs.FileSystem, plan: RefreshPlan, partial: str, out_dir: Path) -> dict:
    """Write the output shards into local ``out_dir``: carried over, or merged with new rankings."""
    group_of = {t: g for g, t in enumerate(plan.targets)}
    carried = merged = 0
    for s in range(plan.num_shards):
        dst = out_dir / shard_name(s)
        if s not in group_of:
            link_or_copy(fs, plan.old_shards[s], dst)
            carried += 1
            continue
        new = pq.read_table(f"{partial}/{shard_name(group_of[s])}", filesystem=fs)
        if s < len(plan.old_shards):
            old = pq.read_table(plan.old_shards[s], filesystem=fs)
            old = old.filter(pc.invert(pc.is_in(old["user_id"], value_set=new["user_id"])))
            new = pa.concat_tables([old.cast(new.schema), new])
        write_shard(pafs.LocalFileSystem(), str(out_dir), s, new.sort_by("user_id"))
        merged += 1
    return {"shards_carried_over": carried, "shards_rewritten": merged}

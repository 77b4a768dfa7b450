"""The ``precache`` stage: ``sequences/``, ``splits/``, ``item_codes/``, ``model/`` -> ``precache/``.

Each test user is ranked from everything before their held-out last item
(:func:`semconv.protocol.history_before`), so the evaluate stage can score ``precache/`` against
the test targets directly: the prompt keeps the last ``prepare.max_len`` items, as the test row
does, and history exclusion masks all of it, as evaluation does for every system. Decoding is the
run's :class:`~semconv.inference.run_ranker.RankerSpec`, recorded in the manifest. Shards go
to ``precache.partial/`` first (resumable, see :mod:`semconv.inference.precache`); when all are
there they are checked (every user exactly once) and published as ``precache/`` with a manifest
naming the model, codebook, K and user count. The partial shards are keyed by the stage's lineage
fingerprint (:mod:`semconv.lineage`) and the dtype it resolved to on this machine, so a rerun after
a crash keeps them and a changed config or input discards them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.artifacts import RunDir, link_or_copy
from semconv.codes import read_item_codes
from semconv.inference.run_ranker import resolve_settings
from semconv.lineage import stage_run
from semconv.protocol import history_before
from semconv.ray_env import resolve
from semconv.inference.precache import (
    LIGHT_CPU,
    PrecacheError,
    ShardPlan,
    check_shards,
    open_partial,
    precache_users,
    shard_name,
)

if TYPE_CHECKING:
    from semconv.config import PipelineConfig

log = logging.getLogger(__name__)

PRECACHE = "precache"
PARTIAL = "precache.partial"
INPUTS = ("sequences", "splits", "item_codes", "model")


def test_user_ids(bounds: pa.Table) -> tuple[np.ndarray, bool]:
    """User ids of the test users (``splits/`` rows with a test target) in file order, and
    whether they are already sorted."""
    ids = bounds.filter(pc.is_valid(bounds.column("test"))).column("user_id").to_numpy().astype(np.int64)
    return ids, bool((np.diff(ids) > 0).all())


def _test_rows(batch, bounds, keep: np.ndarray | None = None):
    """Test users' whole histories before their target, restricted to ``keep`` when sampling."""
    rows = history_before(batch, resolve(bounds), "test")
    if keep is not None:
        rows = rows.filter(pc.is_in(rows["user_id"], value_set=pa.array(keep)))
    return rows


def check_actor_budget(pc_cfg, cluster_cpus: float) -> None:
    """CPU actors must leave a whole CPU for Ray Data's read / filter tasks, or nothing runs."""
    if pc_cfg.use_gpu:
        return
    need = pc_cfg.num_actors * pc_cfg.cpus_per_actor
    if need > cluster_cpus - 1:
        raise PrecacheError(
            f"precache.num_actors x precache.cpus_per_actor = {need} CPUs, but the cluster has "
            f"{cluster_cpus:g}: leave at least one CPU for reading users (use "
            f"precache.threads_per_actor to give an actor more torch threads than CPUs it reserves)")


def run_precache(cfg: PipelineConfig) -> dict[str, str]:
    """Rank the top-K items of every test user with the fine-tuned model; returns ``{"precache": path}``."""
    import ray.data

    from semconv.ray_env import init_ray

    run = stage_run(cfg, PRECACHE)
    pc_cfg = cfg.precache
    if run.is_complete(PRECACHE):
        return {PRECACHE: run.path(PRECACHE)}
    run.require(*INPUTS)
    # the builds this run reads, recorded now (not at publish): serving refuses a precache whose
    # inputs are not the run dir's (splits/ holds the targets it is scored against)
    inputs = {name: run.manifest(name)["build"] for name in INPUTS}
    item_ids, codes = read_item_codes(run)
    bounds = run.read_table("splits")
    user_ids, presorted = test_user_ids(bounds)
    if len(user_ids) == 0:
        raise ValueError(f"{run.path('sequences')} has no user with a held-out test item: nothing to precache")
    total_users = len(user_ids)
    if pc_cfg.max_users is not None and pc_cfg.max_users < total_users:
        rng = np.random.default_rng(cfg.seed)
        user_ids = np.sort(rng.choice(user_ids, pc_cfg.max_users, replace=False))
        presorted = False
    plan = ShardPlan.from_user_ids(user_ids, pc_cfg.users_per_shard)
    spec = resolve_settings(run, cfg=cfg)
    if spec.dtype_warning:
        print(f"warning: {spec.dtype_warning}", flush=True)
    print(f"precache: dtype {spec.dtype} ({spec.dtype_reason})", flush=True)
    # the dtype "auto" resolves to depends on the machine, not only on the config
    partial = run.path(PARTIAL)
    done = open_partial(run.fs, partial, plan, {"lineage": run.lineage["fingerprint"], "dtype": spec.dtype})
    log.info("precache: %d users in %d shards, %d already done", plan.num_users, plan.num_shards, len(done))

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    check_actor_budget(pc_cfg, ray.cluster_resources().get("CPU", 0))
    users = ray.data.read_parquet(run.parquet_files("sequences"), filesystem=run.fs,
                                  columns=["user_id", "history"], num_cpus=LIGHT_CPU)
    users = users.map_batches(_test_rows, batch_format="pyarrow", num_cpus=LIGHT_CPU,
                              fn_kwargs={"bounds": ray.put(bounds),
                                         "keep": user_ids if len(user_ids) < total_users else None})
    stats = precache_users(
        users, plan, run.fs, partial, spec, codes, item_ids, done=done, batch_size=pc_cfg.batch_size,
        sort_window=pc_cfg.sort_window, num_actors=pc_cfg.num_actors, use_gpu=pc_cfg.use_gpu,
        cpus_per_actor=pc_cfg.cpus_per_actor, threads_per_actor=pc_cfg.threads_per_actor,
        share_prefix=pc_cfg.share_prefix, presorted=presorted,
    )
    check_shards(run.fs, partial, plan)
    manifest = {
        "model": spec.model.model_dir, "codebook": run.path("codebook"), "item_codes": run.path("item_codes"),
        **spec.record(), "users": plan.num_users, "test_users": total_users,
        "sampled": plan.num_users < total_users, "shards": plan.num_shards, "last_run": stats,
        "inputs": inputs,
    }
    publish_shards(run, partial, plan, manifest)
    rate = stats["users_written"] / stats["seconds"] if stats["seconds"] else 0.0
    print(f"precache: top-{spec.top_k} of {plan.num_users:,} of {total_users:,} test users "
          f"({stats['users_written']:,} ranked now, {rate:.1f} users/s, beam {spec.num_beams})", flush=True)
    return {PRECACHE: run.path(PRECACHE)}


def publish_shards(run: RunDir, partial: str, plan: ShardPlan, manifest: dict) -> None:
    """Move the checked shards into ``precache/`` atomically, then drop ``precache.partial/``."""
    with run.writing(PRECACHE, manifest) as tmp:
        for shard in range(plan.num_shards):
            link_or_copy(run.fs, f"{partial}/{shard_name(shard)}", Path(tmp) / shard_name(shard))
    run.fs.delete_dir(partial)

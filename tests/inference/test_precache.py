"""The precache job on a simulated 2-node Ray cluster: every user exactly once, resumable."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from semconv.inference.loading import ModelSpec
from semconv.inference.run_ranker import RankerSpec
from semconv.inference.precache import (
    PrecacheError,
    ShardPlan,
    check_shards,
    done_shards,
    open_partial,
    precache_users,
    shard_name,
)
from semconv.inference.ranker import GenerativeRanker

from .conftest import CODES, LEVELS, random_histories, random_item_codes

NUM_ITEMS, NUM_USERS, PER_SHARD = 40, 2000, 250
FS = pafs.LocalFileSystem()


@dataclasses.dataclass(frozen=True)
class FaultySpec(ModelSpec):
    """Loads the model, then fails once at the ``at``-th forward call of an actor: ``exit`` kills
    the actor process, ``raise`` raises. A marker file makes it fail only once per test."""

    marker: str = ""
    at: int = 20
    how: str = "exit"

    def load(self):
        model, tok = super().load()
        forward, calls = model.forward, [0]

        def faulty_forward(*args, **kwargs):
            calls[0] += 1
            if calls[0] == self.at and not os.path.exists(self.marker):
                Path(self.marker).touch()
                if self.how == "exit":
                    os._exit(1)
                raise RuntimeError("injected failure")
            return forward(*args, **kwargs)

        model.forward = faulty_forward
        return model, tok


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node (2 logical CPUs each) in this process's Ray; restores a session Ray."""
    import ray
    from ray.cluster_utils import Cluster

    had_ray = ray.is_initialized()
    if had_ray:
        ray.shutdown()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c
    ray.shutdown()
    c.shutdown()
    if had_ray:  # the session-wide ``ray_local`` fixture expects its Ray back
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


@pytest.fixture(scope="module")
def job(tiny_lm_dir):
    codes = random_item_codes(NUM_ITEMS, seed=11)
    rng = np.random.default_rng(0)
    user_ids = rng.permutation(NUM_USERS) * 3 + 7  # sparse, shuffled ids
    histories = random_histories(NUM_USERS, NUM_ITEMS, seed=12)
    table = pa.table({"user_id": pa.array(user_ids, pa.int64()), "history": histories})
    spec = ModelSpec(base_model=str(tiny_lm_dir), dtype="float32", code_levels=LEVELS, codes_per_level=CODES)
    return {"codes": codes, "table": table, "spec": spec,
            "plan": ShardPlan.from_user_ids(user_ids, PER_SHARD)}


def _run(job, partial: Path, spec=None):
    import ray.data

    done = open_partial(FS, str(partial), job["plan"], {"test": 1})
    return precache_users(
        ray.data.from_arrow(job["table"]), job["plan"], FS, str(partial),
        RankerSpec(spec or job["spec"], num_beams=10, top_k=5, max_len=None, exclude_history=False),
        job["codes"], done=done, batch_size=16, sort_window=4, num_actors=2, cpus_per_actor=1,
    )


def _all_rows(partial: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(partial / shard_name(s)) for s in sorted(done_shards(FS, str(partial))))


@pytest.mark.slow
def test_every_user_is_ranked_exactly_once_with_the_models_top_k(cluster, job, tmp_path, code_lm):
    stats = _run(job, tmp_path / "p")
    assert stats["shards_written"] == job["plan"].num_shards == NUM_USERS // PER_SHARD
    check_shards(FS, str(tmp_path / "p"), job["plan"])
    rows = _all_rows(tmp_path / "p")
    ids = rows["user_id"].to_numpy()
    assert sorted(ids.tolist()) == sorted(job["table"]["user_id"].to_pylist())
    items = np.array(rows["items"].to_pylist())
    assert items.shape == (NUM_USERS, 5) and ((items >= 0) & (items < NUM_ITEMS)).all()
    # same answers as ranking in this process (the actors load the same seeded model)
    model, tok = code_lm
    local = GenerativeRanker(model, tok, job["codes"], num_beams=10, top_k=5)
    hist = dict(zip(job["table"]["user_id"].to_pylist(), job["table"]["history"].to_pylist()))
    want, _ = local.rank([hist[int(u)] for u in ids[:30]])
    assert np.array_equal(items[:30], want)


@pytest.mark.slow
def test_a_failed_run_leaves_whole_shards_and_the_rerun_writes_only_the_rest(cluster, job, tmp_path):
    partial = tmp_path / "p"
    faulty = FaultySpec(**dataclasses.asdict(job["spec"]), marker=str(tmp_path / "m"), at=120, how="raise")
    with pytest.raises(Exception, match="injected failure"):
        _run(job, partial, faulty)
    before = {s: (partial / shard_name(s)).stat().st_mtime_ns for s in done_shards(FS, str(partial))}
    assert 0 < len(before) < job["plan"].num_shards
    stats = _run(job, partial)
    assert stats["shards_written"] == job["plan"].num_shards - len(before)
    assert all((partial / shard_name(s)).stat().st_mtime_ns == t for s, t in before.items())
    check_shards(FS, str(partial), job["plan"])
    assert len(set(_all_rows(partial)["user_id"].to_pylist())) == NUM_USERS


@pytest.mark.slow
def test_a_killed_actor_then_a_rerun_gives_every_user_exactly_once(cluster, job, tmp_path):
    partial = tmp_path / "p"
    faulty = FaultySpec(**dataclasses.asdict(job["spec"]), marker=str(tmp_path / "m"), at=30, how="exit")
    try:  # Ray restarts the actor and retries its batch, or the run fails: both must resume
        _run(job, partial, faulty)
    except Exception:
        pass
    assert (tmp_path / "m").exists()
    before = {s: (partial / shard_name(s)).stat().st_mtime_ns for s in done_shards(FS, str(partial))}
    stats = _run(job, partial)
    # the rerun wrote exactly the shards the first run had not finished, and left the rest alone
    assert stats["shards_written"] == job["plan"].num_shards - len(before)
    assert all((partial / shard_name(s)).stat().st_mtime_ns == t for s, t in before.items())
    check_shards(FS, str(partial), job["plan"])
    ids = _all_rows(partial)["user_id"].to_numpy()
    assert len(ids) == NUM_USERS and len(np.unique(ids)) == NUM_USERS


def test_shards_of_another_plan_are_discarded(tmp_path):
    plan = ShardPlan.from_user_ids(np.arange(10), 4)
    assert plan.sizes == (4, 4, 2) and plan.shard_of(np.array([0, 3, 4, 9])).tolist() == [0, 0, 1, 2]
    open_partial(FS, str(tmp_path), plan, {"model": "a"})
    (tmp_path / shard_name(0)).write_bytes(b"x")
    assert open_partial(FS, str(tmp_path), plan, {"model": "a"}) == {0}
    assert open_partial(FS, str(tmp_path), plan, {"model": "b"}) == set()
    with pytest.raises(PrecacheError, match="user_id 3 appears more than once"):
        ShardPlan.from_user_ids(np.array([1, 3, 3]), 2)


def _rows(ids):
    return pa.table({"user_id": pa.array(ids, pa.int64())})


def test_an_ordered_result_stream_is_cut_into_whole_shards():
    from semconv.inference.precache import _ordered_shards

    plan = ShardPlan.from_user_ids(np.arange(0, 20, 2), 4)  # shards {0,2,4,6} {8,..,14} {16,18}
    stream = [_rows([0, 2, 4]), _rows([6, 8]), _rows([10, 12, 14, 16, 18])]
    got = [(s, t["user_id"].to_pylist()) for s, t in _ordered_shards(iter(stream), plan)]
    assert got == [(0, [0, 2, 4, 6]), (1, [8, 10, 12, 14]), (2, [16, 18])]


@pytest.mark.parametrize("stream, match", [
    ([[0, 2, 4], [8, 10]], "shard 0 got"),  # a user of shard 0 is missing
    ([[0, 2, 4, 6], [8, 10]], "ended inside shard 1"),
    ([[0, 2, 2, 6]], "repeated users"),
])
def test_gaps_repeats_and_truncation_in_the_stream_are_errors(stream, match):
    from semconv.inference.precache import _ordered_shards

    plan = ShardPlan.from_user_ids(np.arange(0, 20, 2), 4)
    with pytest.raises(PrecacheError, match=match):
        list(_ordered_shards(iter(_rows(s) for s in stream), plan))


def test_temp_files_of_a_killed_write_are_removed_on_reopen(tmp_path):
    plan = ShardPlan.from_user_ids(np.arange(4), 2)
    open_partial(FS, str(tmp_path), plan, {})
    (tmp_path / f".{shard_name(1)}.tmp-abc").write_bytes(b"torn")
    assert open_partial(FS, str(tmp_path), plan, {}) == set()
    assert [p.name for p in tmp_path.iterdir()] == ["_PLAN.json"]


def test_the_actor_returns_only_valid_items_when_fewer_than_k_remain(tiny_lm_dir):
    from semconv.inference.precache import OUTPUT_SCHEMA, PrecacheActor

    model = ModelSpec(base_model=str(tiny_lm_dir), dtype="float32", code_levels=LEVELS, codes_per_level=CODES)
    spec = RankerSpec(model, num_beams=8, top_k=5, max_len=None, exclude_history=True)
    actor = PrecacheActor(spec, random_item_codes(6, seed=3), np.arange(6), batch_size=2)
    out = actor(pa.table({"user_id": pa.array([4, 9], pa.int64()), "history": [[0, 1, 2], [5]]}))
    assert out.schema == OUTPUT_SCHEMA
    rows = out.to_pylist()
    assert sorted(rows[0]["items"]) == [3, 4, 5] and len(rows[0]["scores"]) == 3
    assert len(rows[1]["items"]) == 5 and 5 not in rows[1]["items"]


def test_the_actor_gives_exactly_top_k_items_to_every_user_with_at_least_top_k_left(tiny_lm_dir):
    """Long histories leave few items: every user with >= K items left still gets K new items
    (exclusion prunes the beams at every level), one with fewer gets all that are left."""
    from semconv.inference.precache import PrecacheActor

    model = ModelSpec(base_model=str(tiny_lm_dir), dtype="float32", code_levels=LEVELS, codes_per_level=CODES)
    spec = RankerSpec(model, num_beams=10, top_k=10, max_len=None, exclude_history=True)
    actor = PrecacheActor(spec, random_item_codes(NUM_ITEMS, seed=11), np.arange(NUM_ITEMS), batch_size=4)
    rng = np.random.default_rng(5)
    left = [int(n) for n in rng.integers(10, 16, size=11)] + [4]
    keeps = [set(rng.choice(NUM_ITEMS, size=n, replace=False).tolist()) for n in left]
    histories = [rng.permutation([i for i in range(NUM_ITEMS) if i not in keep]).tolist() for keep in keeps]
    out = actor(pa.table({"user_id": pa.array(range(len(keeps)), pa.int64()), "history": histories})).to_pylist()
    for row, keep in zip(out, keeps):
        want = min(10, len(keep))
        assert len(row["items"]) == len(set(row["items"])) == len(row["scores"]) == want, (row, keep)
        assert set(row["items"]) <= keep and np.isfinite(row["scores"]).all()
    assert set(out[-1]["items"]) == keeps[-1]

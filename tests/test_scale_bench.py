"""``bench/scale.py`` and its parts: the synthetic data has the promised shape, the memory sampler
sees a stage process, and a failing stage is recorded rather than ending the benchmark."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import scale
from bench.common import Memory
from bench.synthetic import history_lengths, make_data


def test_history_lengths_are_amazon_like():
    lens = history_lengths(np.random.default_rng(0), 200_000)
    assert lens.min() >= 5 and np.median(lens) == 6
    assert 15 < lens.mean() < 22 and np.percentile(lens, 99) > 100  # the long tail


def test_synthetic_data_has_exactly_n_rows_zipf_items_and_is_cached(tmp_path):
    meta = make_data(30_000, tmp_path)
    inter = pq.read_table(meta["interactions_file"])
    items = pq.read_table(meta["items_file"])
    assert inter.num_rows == 30_000 and items.num_rows == meta["items"] == 1000
    assert inter.column_names == ["user_id", "item_id", "timestamp"]
    assert pc.count_distinct(inter["user_id"]).as_py() == meta["users"]
    counts = np.sort(pc.value_counts(inter["item_id"]).field("counts").to_numpy())[::-1]
    assert counts[0] > 20 * counts[len(counts) // 2]  # a few popular items, a long tail
    assert all(len(t.split()) >= 2 for t in items["title"].to_pylist())
    assert make_data(30_000, tmp_path) == meta  # the second call finds it


def test_memory_sampler_sees_the_driver_private_memory():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(3)"])
    try:
        with Memory(driver=child.pid, every=0.1) as mem:
            time.sleep(1.5)
    finally:
        child.kill()
        child.wait()
    assert mem.peak["driver_anon"] > 150 * 2**20 and mem.peak["driver_rss"] >= mem.peak["driver_anon"]


def test_a_failing_stage_is_recorded_with_its_error(tmp_path):
    rec = scale.run_stage("prepare", tmp_path / "run", ["prepare.no_such_key=1"], 1000, 120, [], tmp_path / "p.log")
    assert "exit code" in rec["failed"]["why"] and "no_such_key" in rec["failed"]["error_tail"]
    assert set(rec["peak_rss_gb"]) == {"driver", "worker"}
    assert scale._needs("embed", {"prepare"}) == "prepare" and scale._needs("finetune", {"prepare"}) is None


def test_the_refresh_delta_names_precached_users_new_users_and_catalogue_items(tmp_path, monkeypatch):
    import pyarrow as pa

    from semconv.artifacts import RunDir

    run = RunDir(tmp_path / "run")
    run.write_table("items", pa.table({"item_id": pa.array(range(50), pa.int64()),
                                       "source_id": [f"i{i}" for i in range(50)]}))
    run.write_table("sequences", pa.table({"user_id": pa.array(range(40), pa.int64()),
                                           "source_user_id": [f"u{u}" for u in range(40)]}), num_shards=3)
    run.write_table("precache", pa.table({"user_id": pa.array(range(0, 40, 2), pa.int64())}))
    monkeypatch.setattr(scale, "DELTA_USERS", 5)
    monkeypatch.setattr(scale, "DELTA_NEW_USERS", 2)
    delta = pq.read_table(scale.write_delta(tmp_path / "run")).to_pydict()
    users = sorted(set(delta["user_id"]))
    old = [u for u in users if not u.startswith("new-user-")]
    assert len(old) == 5 and all(int(u[1:]) % 2 == 0 for u in old)  # precached users only
    assert len(users) == 7 and len(delta["user_id"]) == 14
    assert set(delta["item_id"]) <= {f"i{i}" for i in range(50)}
    assert scale._needs("refresh", {"precache"}) == "precache" and scale._needs("refresh", {"tasks"}) is None


def test_scaling_compares_like_with_like():
    def run(n, embeddings, seconds):
        return {"mode": "pipeline", "nodes": 1, "interactions": n, "embeddings": embeddings,
                "stages": {s: {"seconds": seconds} for s in ("embed", "tasks")}}

    runs = [run(1_000_000, "cf", 10.0), run(30_000_000, "supplied", 450.0)]
    runs[0].pop("embeddings")  # records written before the key default to LightGCN
    scale.add_scaling(runs)
    assert runs[1]["stages"]["tasks"]["per_row_vs_smallest"] == 1.5
    assert "per_row_vs_smallest" not in runs[1]["stages"]["embed"]  # supplied vectors vs training

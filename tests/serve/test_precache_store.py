"""The precache store: Parquet shards -> sorted, memory-mapped arrays; lookups; versions."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import SUCCESS, RunDir
from semconv.serving.precache_store import PAD, PrecacheError, load_precache, precache_version

from .serve_fixtures import K, N_USERS, precache_table, write_precache


def test_lookup_returns_each_users_list_best_first(run_dir, tmp_path):
    store = load_precache(run_dir.path("precache"), tmp_path / "cache")
    assert store.k == K and store.num_users == N_USERS // 2 and store.version == "v1"
    assert np.all(np.diff(store.user_ids) > 0)
    rec = store.lookup(4, 3)
    assert rec.items.tolist() == [4, 5, 6]
    assert rec.scores.tolist() == [0.0, -1.0, -2.0]
    assert store.lookup(5, 3) is None  # odd users are not cached
    assert store.lookup(10**12, 1) is None and store.lookup(-1, 1) is None


def test_arrays_are_memory_mapped_and_the_cache_is_reused(run_dir, tmp_path):
    first = load_precache(run_dir.path("precache"), tmp_path / "cache")
    assert isinstance(first.items, np.memmap) and isinstance(first.scores, np.memmap)
    (entry,) = (tmp_path / "cache").iterdir()
    stamp = (entry / "items.npy").stat().st_mtime_ns
    again = load_precache(run_dir.path("precache"), tmp_path / "cache")
    assert (entry / "items.npy").stat().st_mtime_ns == stamp  # no second conversion
    assert np.array_equal(again.items, first.items)


def test_a_new_precache_version_gets_its_own_cache_entry(run_dir, tmp_path):
    old = load_precache(run_dir.path("precache"), tmp_path / "cache")
    write_precache(run_dir, "precache", offset=5, version="v2")  # same path, new content
    new = load_precache(run_dir.path("precache"), tmp_path / "cache")
    assert (old.version, new.version) == ("v1", "v2")
    assert new.lookup(4, 2).items.tolist() == [9, 10]
    assert old.lookup(4, 2).items.tolist() == [4, 5]  # the old mapping stays readable


def test_manifest_path_is_accepted_and_version_defaults_to_a_hash(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_table("precache", precache_table(np.array([3, 1]), 4, 0))
    manifest = tmp_path / "run" / "precache" / SUCCESS
    store = load_precache(manifest, tmp_path / "cache")
    assert store.version == precache_version(manifest) and len(store.version) == 16
    assert store.k == 4  # no K in the manifest: the longest row


def test_short_rows_are_padded_and_served_short(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_table("precache", pa.table({
        "user_id": pa.array([2, 1], pa.int64()),
        "items": pa.array([[5], [1, 2, 3]], pa.list_(pa.int64())),
        "scores": pa.array([[0.5], [0.3, 0.2, 0.1]], pa.list_(pa.float32())),
    }), manifest={"K": 3})
    store = load_precache(rd.path("precache"), tmp_path / "cache")
    assert store.items[store.row(2)].tolist() == [5, PAD, PAD]
    assert store.lookup(2, 3).items.tolist() == [5]
    assert store.lookup(1, 3).items.tolist() == [1, 2, 3]


@pytest.mark.parametrize("k", [0, -1, K + 1])
def test_k_outside_the_cached_range_is_rejected(run_dir, tmp_path, k):
    store = load_precache(run_dir.path("precache"), tmp_path / "cache")
    with pytest.raises(ValueError, match="cached K"):
        store.lookup(0, k)


def test_duplicate_users_and_missing_manifest_are_clear_errors(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_table("precache", precache_table(np.array([1, 1]), 2, 0))
    with pytest.raises(PrecacheError, match="user_id 1 appears in more than one row"):
        load_precache(rd.path("precache"), tmp_path / "cache")
    with pytest.raises(PrecacheError, match="no _SUCCESS"):
        load_precache(tmp_path / "nowhere", tmp_path / "cache")


def test_shard_without_scores_names_the_file(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_table("precache", pa.table({"user_id": [1], "items": [[1]]}))
    with pytest.raises(PrecacheError, match=r"part-00000.parquet.*scores"):
        load_precache(rd.path("precache"), tmp_path / "cache")


def test_failed_conversion_leaves_no_cache_entry(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_table("precache", pa.table({
        "user_id": pa.array([1], pa.int64()),
        "items": pa.array([[1, 2]], pa.list_(pa.int64())),
        "scores": pa.array([[0.1]], pa.list_(pa.float32())),
    }))
    with pytest.raises(PrecacheError, match="differ in length"):
        load_precache(rd.path("precache"), tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())
    assert json.loads((tmp_path / "run" / "precache" / SUCCESS).read_text())["rows"] == 1


def test_the_cache_keeps_only_the_most_recently_used_versions(run_dir, tmp_path):
    cache = tmp_path / "cache"
    for i in range(4):
        write_precache(run_dir, f"pc{i}", offset=i, version=f"v{i}")
        load_precache(run_dir.path(f"pc{i}"), cache, keep=2)
    entries = sorted(cache.glob("precache-*"))
    assert len(entries) == 2
    stamps = {p: (p / "items.npy").stat().st_mtime_ns for p in entries}
    kept = load_precache(run_dir.path("pc2"), cache, keep=2)  # among the two kept: no conversion
    assert kept.version == "v2" and kept.lookup(4, 1).items.tolist() == [6]
    assert {p: (p / "items.npy").stat().st_mtime_ns for p in sorted(cache.glob("precache-*"))} == stamps


def test_a_precache_missing_a_shard_is_refused(run_dir, tmp_path):
    store = load_precache(run_dir.path("precache"), tmp_path / "cache")  # whole: served
    assert store.num_users == N_USERS // 2
    (tmp_path / "run" / "precache" / "part-00001.parquet").unlink()
    with pytest.raises(PrecacheError, match="3"):
        load_precache(run_dir.path("precache"), tmp_path / "cache")  # even with the cache warm
    with pytest.raises(PrecacheError, match="3"):
        load_precache(run_dir.path("precache"), tmp_path / "cache2")


def test_stage_shard_names_are_checked_one_by_one(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.writing("precache", {"K": 2, "users": 2, "shards": 3}) as tmp:
        for i, u in ((0, 1), (2, 5)):  # shard-00001 is missing
            import pyarrow.parquet as pq

            pq.write_table(precache_table(np.array([u]), 2, 0), tmp / f"shard-{i:05d}.parquet")
    with pytest.raises(PrecacheError, match=r"missing \['shard-00001.parquet'\]"):
        load_precache(rd.path("precache"), tmp_path / "cache")


def test_a_user_count_other_than_the_manifests_is_refused(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.write_table("precache", precache_table(np.array([1, 2, 3]), 2, 0), manifest={"K": 2, "users": 4})
    with pytest.raises(PrecacheError, match="3 users, the manifest says 4"):
        load_precache(rd.path("precache"), tmp_path / "cache")

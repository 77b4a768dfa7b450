"""The pure parts of a refresh: maps, fold-in features, extended histories, the shard plan."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semconv.refresh.decode import plan_refresh
from semconv.refresh.embeddings import (
    apply_ridge, fit_ridge, fold_in_features, learn_map, neighbour_map, ridge_map, user_profiles,
)
from semconv.protocol import split_bounds
from semconv.refresh.histories import extend_sequences


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    w = rng.normal(size=(5, 3))
    y = x @ w + 2.0
    got = apply_ridge(fit_ridge(x, y, 1e-6), x)
    assert np.allclose(got, y, atol=1e-3)


def test_learn_map_reports_first_level_agreement_on_held_back_items():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(100, 4))
    first_code = lambda e: (np.asarray(e)[:, 0] > 0).astype(np.int64)  # noqa: E731
    _, rep = learn_map("fold_in", y * 3, y, np.ones(100, bool), first_code, 0.2, ridge_map(1e-6), 0)
    assert rep.held_out == 20 and rep.first_level_agreement == 1.0
    _, noise = learn_map("fold_in", rng.normal(size=(100, 4)), y, np.ones(100, bool), first_code, 0.2, ridge_map(1.0), 0)
    assert noise.first_level_agreement < 0.9


def test_the_neighbour_map_averages_the_nearest_items_by_cosine():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    y = np.array([[2.0], [4.0], [10.0]])
    predict = neighbour_map(2)(x, y)
    assert predict(np.array([[5.0, 0.1], [0.0, 3.0]])).tolist() == [[3.0], [7.0]]


def test_fold_in_is_the_mean_profile_of_the_items_users_without_the_item():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    hist = [np.array([0, 1]), np.array([0, 2]), np.array([1])]
    offsets = np.r_[0, np.cumsum([len(h) for h in hist])]
    sums, counts = user_profiles(offsets, np.concatenate(hist), emb)
    assert counts.tolist() == [2, 2, 1] and sums[1].tolist() == [3.0, 2.0]
    # existing item 0: users 0 and 1, without item 0 -> mean of emb[1] and emb[2]
    feats, has = fold_in_features(np.array([0, 1]), np.array([0, 0]), sums, counts, 3, emb)
    assert feats[0].tolist() == [1.0, 1.5] and has.tolist() == [True, False, False]
    # a new item (index 0 of the new ones) with users 0 and 2: their whole profiles
    feats, has = fold_in_features(np.array([0, 2]), np.array([0, 0]), sums, counts, 1)
    assert feats[0].tolist() == [0.25, 0.75]


def _seqs():
    return pa.table({"user_id": pa.array([0, 1, 2], pa.int64()), "source_user_id": ["a", "b", "c"],
                     "history": pa.array([[1, 2], [3], [4, 5, 6]], pa.list_(pa.int64())),
                     "timestamps": pa.array([[1, 2], [3], [4, 5, 6]], pa.list_(pa.int64()))})


def test_extend_sequences_touches_only_delta_users_and_drops_repeats():
    new_users = pa.table({"user_id": pa.array([3], pa.int64()), "source_user_id": ["d"]})
    seqs, touched, dropped = extend_sequences(
        _seqs(), np.array([1, 1, 3]), np.array([3, 7, 8]), np.array([9.0, 10.0, np.nan]), new_users)
    rows = seqs.to_pylist()
    assert rows[0] == _seqs().to_pylist()[0] and rows[2] == _seqs().to_pylist()[2]
    assert rows[1]["history"] == [3, 7] and rows[1]["timestamps"] == [3, 10]
    assert rows[3] == {"user_id": 3, "source_user_id": "d", "history": [8], "timestamps": [None]}
    assert touched.tolist() == [1, 3] and dropped == 1
    assert split_bounds(seqs).to_pylist()[1] == {"user_id": 1, "valid": None, "test": None}  # [3, 7]: train only


def test_plan_sends_users_to_the_shard_holding_their_id_and_new_users_to_new_shards(tmp_path):
    for s, ids in enumerate([[0, 2, 4], [6, 8, 10]]):
        pq.write_table(pa.table({"user_id": pa.array(ids, pa.int64())}), tmp_path / f"shard-{s:05d}.parquet")
    plan = plan_refresh(pafs.LocalFileSystem(), str(tmp_path), np.array([7, 1, 11, 12, 13]), 2)
    assert plan.targets == (0, 1, 2, 3) and plan.num_shards == 4
    assert plan.rank.starts == (1, 7, 11, 13) and plan.rank.sizes == (1, 1, 2, 1)

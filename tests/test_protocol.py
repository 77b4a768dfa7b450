"""The leave-last-out rules, each defined once: held-out items, splits, train interactions,
popularity and the history a user is ranked from (and never recommended)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.protocol import (
    history_before,
    leave_last_out,
    popularity,
    popularity_topk,
    train_end,
    train_interactions,
)


def _sequences(seqs: dict[int, list[int]]) -> pa.Table:
    return pa.table({"user_id": pa.array(list(seqs), pa.int64()),
                     "history": pa.array(list(seqs.values()), pa.list_(pa.int64()))})


def test_leave_last_out_by_hand():
    seqs = pa.table({"user_id": [0, 1], "history": [[10, 11, 12, 13, 14], [20, 21]]})
    rows = leave_last_out(seqs, max_len=2).to_pylist()
    got = [(r["split"], r["user_id"], r["history"], r["target"]) for r in rows]
    assert got == [
        ("train", 0, [10], 11), ("train", 0, [10, 11], 12),
        ("valid", 0, [11, 12], 13), ("test", 0, [12, 13], 14),
        ("train", 1, [20], 21),  # fewer than 3 items: train only
    ]


def test_history_before_is_everything_before_the_target_however_long():
    long = list(range(100, 130))  # 30 items, far beyond any max_len
    seqs = _sequences({0: long, 1: [5, 6], 2: [7, 8, 9], 3: []})
    test = history_before(seqs, "test").to_pylist()
    valid = history_before(seqs, "valid").to_pylist()
    assert test == [{"user_id": 0, "history": long[:-1]}, {"user_id": 2, "history": [7, 8]}]
    assert valid == [{"user_id": 0, "history": long[:-2]}, {"user_id": 2, "history": [7]}]
    splits = leave_last_out(seqs, max_len=4).to_pylist()  # the same users hold targets out
    assert sorted(r["user_id"] for r in splits if r["split"] == "test") == [0, 2]
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        history_before(seqs, "train")
    nulls = pa.table({"user_id": pa.array([7, 8, 9], pa.int64()),
                      "history": pa.array([[1, 2, 3], None, [4, 5, 6, 7]], pa.list_(pa.int64()))})
    assert history_before(nulls.slice(1), "test").to_pylist() == [{"user_id": 9, "history": [4, 5, 6]}]


@pytest.mark.parametrize("max_len", [1, 2, 20])
def test_train_interactions_are_the_items_before_the_valid_target(max_len):
    rng = np.random.default_rng(max_len)
    seqs = {u: rng.choice(40, size=n, replace=False).tolist() for u, n in enumerate([1, 2, 3, 4, 9, 25])}
    users, items = train_interactions(leave_last_out(_sequences(seqs), max_len))
    # a user of one item has no split row: nothing to learn a next item from
    want = sorted((u, i) for u, s in seqs.items() if len(s) > 1 for i in s[: train_end(len(s))])
    assert list(zip(users.tolist(), items.tolist())) == want


def test_popularity_counts_train_interactions_and_never_a_held_out_item():
    # user 0: train part [3, 1, 4] (then valid 5, test 9); user 1: train [1, 4] (then 2, 6);
    # user 2: train [4] only (no train rows: its valid history); user 3: 2 items, both train
    seqs = {0: [3, 1, 4, 5, 9], 1: [1, 4, 2, 6], 2: [4, 7, 8], 3: [2, 0]}
    counts = popularity(leave_last_out(_sequences(seqs), max_len=2), 10)
    assert counts.tolist() == [1, 2, 1, 1, 3, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="outside items/ ids 0..3"):
        popularity(leave_last_out(_sequences(seqs), max_len=2), 4)


def test_ranking_is_by_count_then_lower_id_and_can_exclude_history():
    counts = np.array([2, 5, 5, 0, 3])
    top = popularity_topk(counts, n_users=2, k=3)
    assert top.tolist() == [[1, 2, 4], [1, 2, 4]]
    top = popularity_topk(counts, n_users=2, k=3, exclude=[[2], []])
    assert top.tolist() == [[1, 4, 0], [1, 2, 4]]


def test_the_report_and_the_serving_fallback_share_one_popularity():
    from semconv.evaluate.baselines import rank_popularity
    from semconv.evaluate.protocol import split_rows
    from semconv.serving.fallback import popularity_top_k

    seqs = {0: [3, 1, 4, 5, 9], 1: [1, 4, 2, 6], 2: [4, 7, 8], 3: [2, 3, 1, 0, 6]}
    sequences = _sequences(seqs)
    splits = leave_last_out(sequences, max_len=20)
    items, shares = popularity_top_k(splits, 3)  # serving
    assert items.tolist() == [1, 4, 3] and shares.tolist() == pytest.approx([3 / 9, 3 / 9, 2 / 9])
    assert popularity_top_k(splits, 100)[0].tolist() == [1, 4, 3, 2]  # items never seen: left out
    rows = {s: split_rows(splits, s, sequences) for s in ("train", "valid", "test")}
    ranked, info = rank_popularity(rows, splits, 10, 10, exclude_history=False)  # the report
    assert ranked["test"][0][:3].tolist() == items.tolist() and info["train_interactions"] == 9
    excluded, _ = rank_popularity(rows, splits, 10, 10, exclude_history=True)
    for user, ranking in zip(rows["test"].user_ids, excluded["test"]):
        assert not set(ranking.tolist()) & set(seqs[int(user)][:-1])  # the whole history before the target


def test_reviews_of_held_out_items_are_left_out_by_the_same_rule():
    """``tasks``' query rows drop exactly the held-out items: a 2-item user keeps both reviews."""
    from semconv.tasks.query import review_queries

    seqs = {0: [3, 1, 4, 5, 9], 1: [7, 8], 2: [4, 7, 8]}
    sequences = _sequences(seqs).append_column(
        "reviews", pa.array([[f"review {u} {i}" for i in s] for u, s in seqs.items()], pa.list_(pa.string())))
    users, items, _ = review_queries(sequences, max_words=10)
    got = sorted(zip(users, items))
    want_u, want_i = train_interactions(leave_last_out(_sequences(seqs), max_len=20))
    assert got == list(zip(want_u.tolist(), want_i.tolist()))

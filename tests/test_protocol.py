"""The leave-last-out rules, each defined once: held-out items, splits, train interactions,
popularity and the history a user is ranked from (and never recommended)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.protocol import (
    history_before,
    popularity,
    popularity_topk,
    row_counts,
    split_bounds,
    split_rows,
    train_end,
    train_interactions,
    train_rows,
)


def _sequences(seqs: dict[int, list[int]]) -> pa.Table:
    return pa.table({"user_id": pa.array(list(seqs), pa.int64()),
                     "history": pa.array(list(seqs.values()), pa.list_(pa.int64()))})


def rows_by_hand(seqs: pa.Table, max_len: int) -> list[tuple]:
    """The paper's leave-last-out rows, one loop per user: the specification of split_rows."""
    out = []
    for uid, seq in zip(seqs.column("user_id").to_pylist(), seqs.column("history").to_pylist()):
        seq = seq or []
        n = len(seq)
        out += [("train", uid, seq[max(0, i - max_len):i], seq[i]) for i in range(1, train_end(n))]
        if n >= 3:
            out += [(name, uid, seq[max(0, t - max_len):t], seq[t]) for name, t in (("valid", n - 2), ("test", n - 1))]
    return out


def _tuples(rows: pa.Table) -> list[tuple]:
    return [(r["split"], r["user_id"], r["history"], r["target"]) for r in rows.to_pylist()]


def test_split_rows_by_hand():
    seqs = pa.table({"user_id": [0, 1], "history": [[10, 11, 12, 13, 14], [20, 21]]})
    bounds = split_bounds(seqs)
    assert bounds.to_pylist() == [{"user_id": 0, "valid": 3, "test": 4}, {"user_id": 1, "valid": None, "test": None}]
    assert _tuples(split_rows(seqs, bounds, max_len=2)) == [
        ("train", 0, [10], 11), ("train", 0, [10, 11], 12),
        ("valid", 0, [11, 12], 13), ("test", 0, [12, 13], 14),
        ("train", 1, [20], 21),  # fewer than 3 items: train only
    ]
    assert _tuples(split_rows(seqs, bounds, 2, ("test",))) == [("test", 0, [12, 13], 14)]


@pytest.mark.parametrize("seed", range(4))
def test_split_rows_are_the_per_user_loop_for_any_lengths_order_and_cut(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    histories = [rng.choice(500, size=int(rng.integers(0, 40)), replace=False).tolist() for _ in range(n)]
    histories[0] = None  # a null history is an empty one
    seqs = pa.table({"user_id": pa.array(rng.permutation(10_000)[:n], pa.int64()),
                     "history": pa.array(histories, pa.list_(pa.int64()))}).slice(int(seed > 1))
    bounds = split_bounds(seqs)
    for max_len in (1, 3, 20, 100):
        rows = split_rows(seqs, bounds, max_len)
        assert _tuples(rows) == rows_by_hand(seqs, max_len)
        counts = row_counts(bounds, int(train_rows(seqs, bounds).sum()))
        assert counts == {s: sum(r[0] == s for r in _tuples(rows)) for s in ("train", "valid", "test")}
        shuffled = bounds.take(pa.array(rng.permutation(bounds.num_rows)))  # matched by user_id
        assert split_rows(seqs, shuffled, max_len).equals(rows)
        train = split_rows(seqs, bounds, max_len, ("train",))
        keep = rng.random(train.num_rows) < 0.3  # derive only a sample of the rows
        assert split_rows(seqs, bounds, max_len, ("train",), keep).equals(train.filter(pa.array(keep)))


def test_bounds_that_do_not_fit_a_history_name_the_user():
    seqs = _sequences({3: [1, 2, 3], 4: [5, 6, 7, 8]})
    bad = pa.table({"user_id": pa.array([3, 4], pa.int64()), "valid": pa.array([1, 3], pa.int32()),
                    "test": pa.array([2, 4], pa.int32())})
    with pytest.raises(ValueError, match="user_id 4: valid 3 / test 4 do not fit their history of 4 items"):
        split_rows(seqs, bad, 20)
    missing = bad.slice(0, 1)  # a user splits/ lacks holds nothing out
    assert {r[1] for r in _tuples(split_rows(seqs, missing, 20)) if r[0] != "train"} == {3}


def test_history_before_is_everything_before_the_target_however_long():
    long = list(range(100, 130))  # 30 items, far beyond any max_len
    seqs = _sequences({0: long, 1: [5, 6], 2: [7, 8, 9], 3: []})
    bounds = split_bounds(seqs)
    test = history_before(seqs, bounds, "test").to_pylist()
    valid = history_before(seqs, bounds, "valid").to_pylist()
    assert test == [{"user_id": 0, "history": long[:-1]}, {"user_id": 2, "history": [7, 8]}]
    assert valid == [{"user_id": 0, "history": long[:-2]}, {"user_id": 2, "history": [7]}]
    rows = split_rows(seqs, bounds, max_len=4).to_pylist()  # the same users hold targets out
    assert sorted(r["user_id"] for r in rows if r["split"] == "test") == [0, 2]
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        history_before(seqs, bounds, "train")
    nulls = pa.table({"user_id": pa.array([7, 8, 9], pa.int64()),
                      "history": pa.array([[1, 2, 3], None, [4, 5, 6, 7]], pa.list_(pa.int64()))})
    assert history_before(nulls.slice(1), split_bounds(nulls), "test").to_pylist() == [
        {"user_id": 9, "history": [4, 5, 6]}]


@pytest.mark.parametrize("max_len", [1, 2, 20])
def test_train_interactions_are_the_items_of_the_train_and_valid_rows(max_len):
    rng = np.random.default_rng(max_len)
    seqs = {u: rng.choice(40, size=n, replace=False).tolist() for u, n in enumerate([1, 2, 3, 4, 9, 25])}
    sequences = _sequences(seqs)
    users, items = train_interactions(sequences, split_bounds(sequences))
    # a user of one item has no split row: nothing to learn a next item from
    want = sorted((u, i) for u, s in seqs.items() if len(s) > 1 for i in s[: train_end(len(s))])
    assert list(zip(users.tolist(), items.tolist())) == want
    from_rows = {(r[1], i) for r in rows_by_hand(sequences, max_len) if r[0] in ("train", "valid")
                 for i in r[2] + ([r[3]] if r[0] == "train" else [])}  # whatever max_len cuts
    assert sorted(from_rows) == want


def test_popularity_counts_train_interactions_and_never_a_held_out_item():
    # user 0: train part [3, 1, 4] (then valid 5, test 9); user 1: train [1, 4] (then 2, 6);
    # user 2: train [4] only (no train rows: its valid history); user 3: 2 items, both train
    seqs = {0: [3, 1, 4, 5, 9], 1: [1, 4, 2, 6], 2: [4, 7, 8], 3: [2, 0]}
    sequences = _sequences(seqs)
    counts = popularity(sequences, split_bounds(sequences), 10)
    assert counts.tolist() == [1, 2, 1, 1, 3, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="outside items/ ids 0..3"):
        popularity(sequences, split_bounds(sequences), 4)


def test_ranking_is_by_count_then_lower_id_and_can_exclude_history():
    counts = np.array([2, 5, 5, 0, 3])
    top = popularity_topk(counts, n_users=2, k=3)
    assert top.tolist() == [[1, 2, 4], [1, 2, 4]]
    top = popularity_topk(counts, n_users=2, k=3, exclude=[[2], []])
    assert top.tolist() == [[1, 4, 0], [1, 2, 4]]
    assert popularity_topk(counts, 1, 3, exclude=[[0, 1, 2, 4]]).tolist() == [[3, -1, -1]]  # padded


def test_popularity_with_exclusions_equals_the_full_score_matrix_ranking():
    from semconv.metrics import topk_from_scores

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=300)  # many ties
    exclude = [rng.choice(300, rng.integers(0, 40), replace=False).tolist() for _ in range(200)]
    want = topk_from_scores(np.broadcast_to(counts.astype(np.float64), (200, 300)), 10, exclude)
    assert popularity_topk(counts, 200, 10, exclude).tolist() == want.tolist()


def test_the_report_and_the_serving_fallback_share_one_popularity():
    from semconv.evaluate.baselines import rank_popularity
    from semconv.evaluate.protocol import read_split
    from semconv.serving.fallback import popularity_top_k

    seqs = {0: [3, 1, 4, 5, 9], 1: [1, 4, 2, 6], 2: [4, 7, 8], 3: [2, 3, 1, 0, 6]}
    sequences = _sequences(seqs)
    bounds = split_bounds(sequences)
    items, shares = popularity_top_k(sequences, bounds, 3)  # serving
    assert items.tolist() == [1, 4, 3] and shares.tolist() == pytest.approx([3 / 9, 3 / 9, 2 / 9])
    assert popularity_top_k(sequences, bounds, 100)[0].tolist() == [1, 4, 3, 2]  # items never seen: left out
    rows = {s: read_split(sequences, bounds, s, 20) for s in ("valid", "test")}
    ranked, info = rank_popularity(rows, sequences, bounds, 10, 10, exclude_history=False)  # the report
    assert ranked["test"][0][:3].tolist() == items.tolist() and info["train_interactions"] == 9
    excluded, _ = rank_popularity(rows, sequences, bounds, 10, 10, exclude_history=True)
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
    want_u, want_i = train_interactions(_sequences(seqs), split_bounds(_sequences(seqs)))
    assert got == list(zip(want_u.tolist(), want_i.tolist()))

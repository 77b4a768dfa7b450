"""Most-popular baseline: counts over the train split only, ties by lower item id."""

from __future__ import annotations

import numpy as np

from semconv.evaluate.popularity import popularity_topk, train_item_counts
from semconv.evaluate.protocol import split_rows


def test_counts_are_the_train_interactions_counted_by_hand(build):
    # user 0: train part [3, 1, 4, 1] (then valid 5, test 9); user 1: train [1, 4] (then 2, 6);
    # user 2: train [4] only (too short for train rows); valid/test targets never count.
    seqs = {0: [3, 1, 4, 1, 5, 9], 1: [1, 4, 2, 6], 2: [4, 7, 8]}
    splits = build.splits_table(seqs)
    counts = train_item_counts(split_rows(splits, "train"), split_rows(splits, "valid"), 10)
    assert counts.tolist() == [0, 3, 0, 1, 3, 0, 0, 0, 0, 0]


def test_counts_survive_truncated_histories(build):
    # With max_len=2 the train rows' histories are truncated; every train item still counts once.
    seqs = {0: [0, 1, 2, 3, 4, 5, 6, 7]}
    splits = build.splits_table(seqs, max_len=2)
    counts = train_item_counts(split_rows(splits, "train"), split_rows(splits, "valid"), 8)
    assert counts.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]


def test_ranking_is_by_count_then_lower_id_and_can_exclude_history():
    counts = np.array([2, 5, 5, 0, 3])
    top = popularity_topk(counts, n_users=2, k=3)
    assert top.tolist() == [[1, 2, 4], [1, 2, 4]]
    top = popularity_topk(counts, n_users=2, k=3, exclude=[[2], []])
    assert top.tolist() == [[1, 4, 0], [1, 2, 4]]

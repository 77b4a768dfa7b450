"""Most-popular baseline: counts over the train split only, ties by lower item id."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

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


def test_the_report_the_cf_stage_and_the_serving_fallback_share_one_popularity(build):
    from semconv.embed.cf import popularity_metrics
    from semconv.evaluate.baselines import rank_popularity
    from semconv.evaluate.popularity import train_interaction_counts
    from semconv.evaluate.protocol import evaluate_rankings
    from semconv.serving.fallback import popularity_top_k

    # user 0 repeats item 1 in its train part: counted twice (interactions, not distinct users)
    seqs = {0: [3, 1, 4, 1, 5, 9], 1: [1, 4, 2, 6], 2: [4, 7, 8], 3: [2, 3, 1, 0, 6]}
    splits = build.splits_table(seqs)
    counts = train_interaction_counts(splits, 10)
    assert counts.tolist() == [0, 4, 1, 2, 3, 0, 0, 0, 0, 0]
    items, shares = popularity_top_k(splits, 3)  # serving
    assert items.tolist() == [1, 4, 3] and shares.tolist() == pytest.approx([0.4, 0.3, 0.2])
    assert popularity_top_k(splits, 100)[0].tolist() == [1, 4, 3, 2]  # items never seen: left out
    rows = {s: split_rows(splits, s) for s in ("train", "valid", "test")}
    ranked, _ = rank_popularity(rows, 10, 10, exclude_history=True)  # the report's baseline
    report = evaluate_rankings(ranked["test"], rows["test"], [1, 5, 10])
    test = splits.filter(pc.equal(splits.column("split"), "test"))
    cf_stage = popularity_metrics(counts, test, exclude_history=True)  # item_emb/metrics.json
    assert cf_stage == pytest.approx({k: report[k] for k in cf_stage})

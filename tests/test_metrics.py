"""HR@K / NDCG@K against cases computed by hand."""

import math

import numpy as np
import pytest
import torch

from semconv.metrics import ranking_metrics, topk_from_scores


def test_single_user_by_hand():
    ranked = [7, 3, 9, 1, 4]
    at_rank_3 = ranking_metrics([ranked], [9], ks=(1, 3, 5))
    assert at_rank_3["HR@1"] == 0.0 and at_rank_3["HR@3"] == 1.0 and at_rank_3["NDCG@1"] == 0.0
    assert at_rank_3["NDCG@5"] == pytest.approx(1 / math.log2(4))
    assert ranking_metrics([ranked], [7], ks=(5,))["NDCG@5"] == 1.0


def test_target_missing_from_list_scores_zero():
    assert ranking_metrics([[1, 2, 3]], [99], ks=(10,)) == {"HR@10": 0.0, "NDCG@10": 0.0}


def test_mean_over_users_by_hand():
    rankings = [[5, 6, 7], [1, 2, 3], [9, 8, 4]]
    targets = [5, 3, 0]  # rank 1, rank 3, missing
    m = ranking_metrics(rankings, targets, ks=(1, 5))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)


def test_bad_ks_and_empty_input():
    with pytest.raises(ValueError, match="positive"):
        ranking_metrics([[1]], [1], ks=(0,))
    with pytest.raises(ValueError, match="no users"):
        ranking_metrics([], [], ks=(1,))
    with pytest.raises(ValueError):
        ranking_metrics([[1]], [1, 2])  # lengths differ


def test_topk_from_scores_excludes_and_breaks_ties_by_id():
    scores = np.array([[0.1, 0.9, 0.9, 0.5], [1.0, 0.0, 0.2, 0.3]])
    assert topk_from_scores(scores, 2).tolist() == [[1, 2], [0, 3]]
    assert topk_from_scores(scores, 2, exclude=[[1], [0, 3]]).tolist() == [[2, 3], [2, 1]]


def test_topk_matches_a_stable_full_sort_with_ties_and_exclusions():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (40, 30)).astype(np.float32)  # many ties
    exclude = [rng.choice(30, rng.integers(0, 21), replace=False) for _ in range(40)]
    masked = scores.copy()
    for r, items in enumerate(exclude):
        masked[r, items] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :10]
    expected = np.where(np.take_along_axis(masked, expected, 1) == -np.inf, -1, expected)
    np.testing.assert_array_equal(topk_from_scores(scores, 10, exclude), expected)
    few = topk_from_scores(scores[:1], 10, [np.arange(25)])  # 5 candidates left: padded with -1
    assert few[0, 5:].tolist() == [-1] * 5 and sorted(few[0, :5].tolist()) == list(range(25, 30))


def test_topk_leaves_the_callers_scores_unless_told_to_overwrite():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((50, 200)).astype(np.float32)
    exclude = [rng.choice(200, 7, replace=False) for _ in range(50)]
    before = scores.copy()
    expected = topk_from_scores(scores, 10, exclude)
    np.testing.assert_array_equal(scores, before)
    assert not any(np.isin(expected[r], exclude[r]).any() for r in range(50))
    as_tensor = torch.from_numpy(scores.copy())
    np.testing.assert_array_equal(topk_from_scores(as_tensor, 10, exclude, overwrite=True), expected)
    assert torch.isinf(as_tensor[0, torch.from_numpy(exclude[0])]).all()  # masked in place, as allowed


def test_topk_reranks_a_row_only_when_a_tie_crosses_the_cut():
    # the 3rd and 4th best tie: k=3 must take the lower id; k=2 must not see the tie at all
    scores = np.array([[0.2, 0.9, 0.5, 0.8, 0.5, 0.1]], dtype=np.float32)
    assert topk_from_scores(scores, 3).tolist() == [[1, 3, 2]]
    assert topk_from_scores(scores[:, ::-1], 3).tolist() == [[4, 2, 1]]  # a view with negative strides
    assert topk_from_scores(scores, 2).tolist() == [[1, 3]]
    assert topk_from_scores(scores, 6).tolist() == [[1, 3, 2, 4, 0, 5]]

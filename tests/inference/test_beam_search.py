"""Constrained beam search: exact when the beam covers every item, always valid and distinct."""

import numpy as np
import pytest
import torch

from semconv.decoding import Decoding
from semconv.inference.beam_search import BeamSearchError, constrained_beam_search
from semconv.inference.loading import load_with_random_code_tokens
from semconv.inference.ranker import GenerativeRanker, left_pad

from .conftest import brute_force_scores, random_histories, random_item_codes

NUM_ITEMS = 40


@pytest.fixture(scope="module")
def items():
    return random_item_codes(NUM_ITEMS, seed=1)


def test_beam_as_wide_as_the_item_set_returns_the_brute_force_top_k(code_lm, items):
    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, items, num_beams=NUM_ITEMS, top_k=10, batch_size=3)
    histories = random_histories(5, NUM_ITEMS, seed=2)
    got_items, got_scores = ranker.rank(histories)
    for u, h in enumerate(histories):
        scores = brute_force_scores(ranker, h)
        best = np.argsort(-scores, kind="stable")[:10]
        assert got_items[u].tolist() == best.tolist()
        np.testing.assert_allclose(got_scores[u], scores[best], atol=1e-4)


@pytest.mark.parametrize("prompt_format", ["instruction", "history"])
def test_level_softmax_search_returns_the_brute_force_top_k_in_either_prompt_format(code_lm, items, prompt_format):
    model, tok = code_lm
    decoding = Decoding(prompt_format, "level")
    ranker = GenerativeRanker(model, tok, items, num_beams=NUM_ITEMS, top_k=10, batch_size=2, decoding=decoding)
    histories = random_histories(3, NUM_ITEMS, seed=5)
    got_items, got_scores = ranker.rank(histories)
    for u, h in enumerate(histories):
        scores = brute_force_scores(ranker, h, level_softmax=True)
        best = np.argsort(-scores, kind="stable")[:10]
        assert got_items[u].tolist() == best.tolist()
        np.testing.assert_allclose(got_scores[u], scores[best], atol=1e-4)
    # a level softmax is a distribution over each level's codes: the item scores sum to at most 1
    assert np.exp(brute_force_scores(ranker, histories[0], level_softmax=True)).sum() <= 1 + 1e-5


def test_every_item_is_valid_and_distinct_with_a_narrow_beam(tiny_lm_dir):
    codes = random_item_codes(150, levels=4, codes=5, seed=3)
    for seed in (0, 1):
        model, tok = load_with_random_code_tokens(str(tiny_lm_dir), 4, 5, seed=seed)
        ranker = GenerativeRanker(model, tok, codes, num_beams=6, top_k=5, batch_size=4)
        got, scores = ranker.rank(random_histories(7, 150, seed=seed))
        assert ((got >= 0) & (got < 150)).all()
        assert all(len(set(row)) == len(row) for row in got.tolist())
        assert (np.diff(scores, axis=1) <= 0).all()  # best first
        # each score is the item's own sequence log-probability
        h = random_histories(7, 150, seed=seed)[0]
        np.testing.assert_allclose(scores[0], brute_force_scores(ranker, h)[got[0]], atol=1e-4)


def test_history_items_are_excluded_and_the_next_best_fill_the_slots(code_lm, items):
    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, items, num_beams=NUM_ITEMS, top_k=10, batch_size=4)
    histories = random_histories(4, NUM_ITEMS, seed=4, lo=5, hi=12)
    got, got_scores = ranker.rank(histories, exclude_history=True)
    for u, h in enumerate(histories):
        scores = brute_force_scores(ranker, h)
        scores[list(h)] = -np.inf
        best = np.argsort(-scores, kind="stable")[:10]
        assert not set(got[u].tolist()) & set(h)
        assert got[u].tolist() == best.tolist()


def test_batching_padding_and_prefix_reuse_do_not_change_results(code_lm, items):
    model, tok = code_lm
    histories = random_histories(9, NUM_ITEMS, seed=5, lo=1, hi=15)  # very different lengths
    one = GenerativeRanker(model, tok, items, num_beams=12, top_k=8, batch_size=1, share_prefix=False)
    many = GenerativeRanker(model, tok, items, num_beams=12, top_k=8, batch_size=9, share_prefix=True)
    assert many.prefix is not None
    i1, s1 = one.rank(histories)
    i9, s9 = many.rank(histories)
    assert np.array_equal(i1, i9)
    np.testing.assert_allclose(s1, s9, atol=1e-4)


def test_fewer_reachable_items_than_k_pads_with_minus_one(code_lm):
    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, random_item_codes(6, seed=6), num_beams=10, top_k=10)
    got, scores = ranker.rank([[0, 1], [2]], exclude_history=True)
    assert sorted(got[0][got[0] >= 0].tolist()) == [2, 3, 4, 5]
    assert (got[0][4:] == -1).all() and np.isneginf(scores[0][4:]).all()
    assert len(got[1][got[1] >= 0]) == 5


def test_bf16_returns_valid_distinct_items(code_lm, items):
    model, tok = code_lm
    ranker = GenerativeRanker(model.to(torch.bfloat16), tok, items, num_beams=20, top_k=10)
    try:
        got, scores = ranker.rank(random_histories(4, NUM_ITEMS, seed=7))
    finally:
        model.to(torch.float32)
    assert ((got >= 0) & (got < NUM_ITEMS)).all() and np.isfinite(scores).all()
    assert all(len(set(row)) == 10 for row in got.tolist())


def test_beam_narrower_than_k_is_an_error(code_lm, items):
    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, items, num_beams=5, top_k=5)
    ids, mask = left_pad(ranker.encode([[1, 2]]), ranker.pad_id)
    with pytest.raises(BeamSearchError, match="num_beams"):
        constrained_beam_search(model, ids, mask, ranker.trie, num_beams=4, top_k=5)

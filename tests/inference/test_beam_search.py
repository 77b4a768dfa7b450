"""Constrained beam search: exact when the beam covers every item, always valid and distinct."""

import numpy as np
import pytest
import torch

from semconv.decoding import Decoding
from semconv.inference.beam_search import BeamSearchError, constrained_beam_search
from semconv.inference.loading import load_with_random_code_tokens
from semconv.inference.ranker import GenerativeRanker, pad_prompts

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
    ids, mask = pad_prompts(ranker.encode([[1, 2]]), ranker.pad_id)
    with pytest.raises(BeamSearchError, match="num_beams"):
        constrained_beam_search(model, ids, mask, ranker.trie, num_beams=4, top_k=5)


def _all_but(keep: list[int], num_items: int, seed: int) -> list[int]:
    """A history of every item except ``keep``, shuffled, some items twice."""
    rng = np.random.default_rng(seed)
    rest = [i for i in range(num_items) if i not in keep]
    return rng.permutation(rest + rest[:5]).tolist()


@pytest.mark.parametrize("num_beams", [10, 12])
def test_a_history_of_all_but_12_items_still_gets_exactly_10_new_items(code_lm, items, num_beams):
    """Exclusion prunes every level: a prefix whose items are all in the history is never kept,
    so the beams are spent on prefixes with new items and all 10 slots fill. With a beam as wide
    as the 12 items left the search is exact: the brute-force top 10 of the non-history items."""
    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, items, num_beams=num_beams, top_k=10, batch_size=3)
    rng = np.random.default_rng(8)
    keeps = [sorted(rng.choice(NUM_ITEMS, size=12, replace=False).tolist()) for _ in range(4)]
    histories = [_all_but(keep, NUM_ITEMS, seed) for seed, keep in enumerate(keeps)]
    got, got_scores = ranker.rank(histories, exclude_history=True)
    for u, (h, keep) in enumerate(zip(histories, keeps)):
        assert len(got[u]) == 10 and (got[u] >= 0).all() and np.isfinite(got_scores[u]).all()
        assert len(set(got[u].tolist())) == 10 and set(got[u].tolist()) <= set(keep)
        assert not set(got[u].tolist()) & set(h)
        scores = brute_force_scores(ranker, h)
        np.testing.assert_allclose(got_scores[u], scores[got[u]], atol=1e-4)  # each its own score
        if num_beams >= len(keep):
            scores[list(h)] = -np.inf
            assert got[u].tolist() == np.argsort(-scores, kind="stable")[:10].tolist()


def test_a_history_that_leaves_fewer_than_k_items_gets_all_of_them_best_first(code_lm, items):
    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, items, num_beams=10, top_k=10, batch_size=3)
    keep = [3, 17, 30, 38]
    histories = [_all_but(keep, NUM_ITEMS, 0), list(range(NUM_ITEMS)), [1, 2]]
    got, got_scores = ranker.rank(histories, exclude_history=True)
    scores = brute_force_scores(ranker, histories[0])
    assert got[0][:4].tolist() == sorted(keep, key=lambda i: -scores[i])
    np.testing.assert_allclose(got_scores[0][:4], scores[got[0][:4]], atol=1e-4)
    assert (got[0][4:] == -1).all() and np.isneginf(got_scores[0][4:]).all()
    assert (got[1] == -1).all() and np.isneginf(got_scores[1]).all()  # nothing left: no crash
    assert (got[2] >= 0).all() and not {1, 2} & set(got[2].tolist())


def test_exclusion_by_custom_item_ids_prunes_whole_prefixes_and_ignores_unknown_ids(code_lm, items):
    """Item ids that are not row numbers (a refresh's catalogue): exclusion matches ids; an id
    outside the catalogue (or a negative one) excludes nothing."""
    model, tok = code_lm
    ids = np.arange(NUM_ITEMS) * 7 + 100
    ranker = GenerativeRanker(model, tok, items, num_beams=12, top_k=10, item_ids=ids)
    keep = [2, 5, 9, 11, 20, 21, 25, 28, 33, 34, 36, 39]
    history = [int(ids[i]) for i in range(NUM_ITEMS) if i not in keep]
    got, got_scores = ranker.rank([history], exclude_history=True)
    scores = brute_force_scores(ranker, history)  # by catalogue row
    best = sorted(keep, key=lambda r: -scores[r])[:10]
    assert got[0].tolist() == [int(ids[r]) for r in best]
    np.testing.assert_allclose(got_scores[0], scores[best], atol=1e-4)
    ids_t, mask = pad_prompts(ranker.encode([history]), ranker.pad_id)
    plain = constrained_beam_search(model, ids_t, mask, ranker.trie, 12, 10)
    unknown = constrained_beam_search(model, ids_t, mask, ranker.trie, 12, 10, exclude=[[5, 99999, -3]])
    assert torch.equal(plain[0], unknown[0]) and torch.equal(plain[1], unknown[1])


def test_dead_nodes_prune_alike_as_a_dense_table_or_as_sorted_keys(code_lm, items, monkeypatch):
    """Past DENSE_DEAD_LIMIT (huge catalogues) the dead nodes are looked up with isin instead."""
    from semconv.inference import beam_search

    model, tok = code_lm
    ranker = GenerativeRanker(model, tok, items, num_beams=10, top_k=10, batch_size=4)
    rng = np.random.default_rng(9)
    histories = [_all_but(sorted(rng.choice(NUM_ITEMS, size=n, replace=False).tolist()), NUM_ITEMS, n)
                 for n in (11, 14, 20, 3)]
    dense = ranker.rank(histories, exclude_history=True)
    monkeypatch.setattr(beam_search, "DENSE_DEAD_LIMIT", 0)
    keys = ranker.rank(histories, exclude_history=True)
    assert np.array_equal(dense[0], keys[0]) and np.array_equal(dense[1], keys[1])
    assert (dense[0][:3] >= 0).all() and (dense[0][3, 3:] == -1).all()

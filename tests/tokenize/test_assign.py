"""Assignment (faiss nearest code per level), collision resolution and codebook metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from semconv.tokenize.assign import assign_codes, nearest_codes
from semconv.tokenize.collisions import min_cost_assignment, nearest_free_tuple, resolve_collisions
from semconv.tokenize.quality import codebook_metrics, collision_rate, usage_perplexity


def random_books(L=3, K=8, d=6, seed=0):
    return np.random.default_rng(seed).normal(size=(L, K, d)).astype(np.float32)


def test_nearest_codes_match_brute_force():
    rng = np.random.default_rng(1)
    books = rng.normal(size=(32, 5)).astype(np.float32)
    x = rng.normal(size=(500, 5)).astype(np.float32)
    brute = ((x[:, None, :].astype(np.float64) - books[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_codes(x, books), brute)


def test_exact_ties_go_to_the_lower_code_index():
    books = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], np.float32)  # code 2 duplicates code 0
    x = np.array([[0.0, 0.0], [0.9, 0.1]], np.float32)  # row 0 is equidistant to all
    assert nearest_codes(x, books).tolist() == [0, 0]


def test_assign_codes_follow_residuals_level_by_level():
    books = np.array([[[0, 0], [4, 0]], [[0, 1], [0, -1]]], np.float32)
    codes, residual = assign_codes(np.array([[3.5, 0.8], [0.2, -0.7]], np.float32), books)
    assert codes.tolist() == [[1, 0], [0, 1]]
    np.testing.assert_allclose(residual, [[-0.5, -0.2], [0.2, 0.3]], atol=1e-6)


def test_assignment_does_not_depend_on_batch_size_even_at_near_ties():
    """Items a hair off the midpoint of two codes: faiss' direct (small query) and BLAS (big
    query) distances round differently there (16 of these 100 items flip without the padding
    to whole query blocks), so this checks that one item alone gets its batch codes."""
    rng = np.random.default_rng(0)
    books = rng.normal(size=(1, 256, 64)).astype(np.float32)
    pairs = rng.integers(0, 256, (2000, 2))
    z = (books[0][pairs[:, 0]] + books[0][pairs[:, 1]]) / 2 + 1e-6 * rng.normal(size=(2000, 64))
    z = z.astype(np.float32)
    batch, _ = assign_codes(z, books)
    one_by_one = np.concatenate([assign_codes(z[i : i + 1], books)[0] for i in range(100)])
    np.testing.assert_array_equal(batch[:100], one_by_one)
    multi = random_books(L=4, K=64, d=8)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    np.testing.assert_array_equal(assign_codes(x, multi)[0][:7], assign_codes(x[:7], multi)[0])


def test_assign_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="do not match codebooks"):
        assign_codes(np.zeros((3, 5), np.float32), random_books(d=6))


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 6), (5, 5)])
def test_min_cost_assignment_is_optimal(shape):
    cost = np.random.default_rng(sum(shape)).random(shape)
    cols = min_cost_assignment(cost)
    assert len(set(cols.tolist())) == shape[0]
    best = min(
        sum(cost[i, p[i]] for i in range(shape[0]))
        for p in itertools.permutations(range(shape[1]), shape[0])
    )
    assert cost[np.arange(shape[0]), cols].sum() == pytest.approx(best)


def test_min_cost_assignment_by_hand():
    # greedy would give row 0 column 0 (cost 1) and row 1 column 1 (cost 10): total 11
    cost = np.array([[1.0, 2.0], [1.5, 10.0]])
    assert min_cost_assignment(cost).tolist() == [1, 0]  # total 3.5


def _colliding_setup():
    """24 items on top of 4 distinct points: every item collides with 5 others."""
    books = random_books(L=3, K=16, d=6, seed=3)
    rng = np.random.default_rng(4)
    base = rng.normal(size=(4, 6)).astype(np.float32)
    z = (base[np.arange(24) % 4] + 1e-3 * rng.normal(size=(24, 6))).astype(np.float32)
    z = np.concatenate([z, rng.normal(size=(40, 6)).astype(np.float32) * 2])
    return z, books


def test_collision_resolution_leaves_no_duplicates_and_is_deterministic():
    z, books = _colliding_setup()
    raw, _ = assign_codes(z, books)
    assert collision_rate(raw) > 0
    first = resolve_collisions(z, books, raw)
    second = resolve_collisions(z.copy(), books.copy(), raw.copy())
    assert len(np.unique(first.codes, axis=0)) == len(z)
    np.testing.assert_array_equal(first.codes, second.codes)
    # items that collided with nobody keep their codes; movers keep their prefix when it had room
    _, inv, counts = np.unique(raw, axis=0, return_inverse=True, return_counts=True)
    alone = counts[inv.ravel()] == 1
    np.testing.assert_array_equal(first.codes[alone], raw[alone])
    assert len(first.fallback) == 0
    np.testing.assert_array_equal(first.codes[:, :2], raw[:, :2])


def test_resolution_is_minimum_cost_within_a_prefix_group():
    books = np.array([[[0, 0], [100, 100], [200, 0], [0, 200]],  # level 1: all items take code 0
                      [[0, 0], [1, 0], [0, 1], [5, 5]]], np.float32)
    z = np.array([[0.9, 0.1], [0.8, 0.0], [0.1, 0.2]], np.float32)  # rows 0 and 1 both pick code 1
    raw, _ = assign_codes(z, books)
    assert raw[:, 1].tolist() == [1, 1, 0]
    res = resolve_collisions(z, books, raw)
    # code 0 stays with row 2 (no collision); rows 0 and 1 split the free codes {1, 2, 3}
    costs = {(i, k): float(((z[i] - books[1][k]) ** 2).sum()) for i in (0, 1) for k in (1, 2, 3)}
    best = min((costs[0, a] + costs[1, b], (a, b)) for a in (1, 2, 3) for b in (1, 2, 3) if a != b)
    assert (res.codes[0, 1], res.codes[1, 1]) == best[1]
    assert res.codes[2].tolist() == raw[2].tolist()


def test_overflowing_prefix_group_falls_back_to_the_nearest_free_tuple():
    books = random_books(L=2, K=4, d=3, seed=5)
    z = np.repeat(np.random.default_rng(6).normal(size=(1, 3)), 7, axis=0).astype(np.float32)
    raw, _ = assign_codes(z, books)
    assert len(np.unique(raw, axis=0)) == 1  # 7 identical items, only 4 last-level codes
    res = resolve_collisions(z, books, raw)
    assert len(np.unique(res.codes, axis=0)) == 7
    assert len(res.fallback) == 3
    assert (res.codes[res.fallback, 0] != raw[0, 0]).all()  # moved to another prefix


def test_nearest_free_tuple_skips_taken_tuples():
    books = np.array([[[0.0], [10.0]], [[0.0], [1.0]]], np.float32)
    z = np.array([0.9], np.float32)
    assert nearest_free_tuple(z, books, set()) == (0, 1)
    assert nearest_free_tuple(z, books, {(0, 1)}) == (0, 0)
    with pytest.raises(RuntimeError, match="no free code tuple"):
        nearest_free_tuple(z, books, {(0, 0), (0, 1), (1, 0), (1, 1)})


def test_too_many_items_for_the_code_space_is_an_error():
    books = random_books(L=1, K=2, d=2)
    with pytest.raises(ValueError, match="cannot have unique codes"):
        resolve_collisions(np.zeros((3, 2), np.float32), books, np.zeros((3, 1), np.int64))


def test_metrics_by_hand():
    books = np.zeros((2, 4, 1), np.float32)
    books[0, :, 0] = [0, 1, 2, 3]
    raw = np.array([[0, 0], [0, 0], [1, 0], [2, 0]])
    final = np.array([[0, 0], [0, 1], [1, 0], [2, 0]])
    z = np.array([[0.0], [0.5], [1.0], [2.0]], np.float32)
    m = codebook_metrics(z, books, raw, final)
    assert m["collision_rate"] == pytest.approx(0.25)
    assert m["items_in_collisions"] == pytest.approx(0.5)
    assert m["utilisation"] == [0.75, 0.25]
    assert m["perplexity"][1] == pytest.approx(1.0)
    assert m["perplexity"][0] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))
    assert m["quantization_error"] == pytest.approx(0.5 / 4)
    assert m["duplicates_after_resolution"] == 0 and m["reassigned_items"] == 1
    assert usage_perplexity(np.arange(8), 8) == pytest.approx(8.0)

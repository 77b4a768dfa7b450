"""The tokenize stage at catalogue scale: every step that runs in batches (assignment, collision
resolution, the re-seeding statistics, the quality figures) gives what the one-shot form gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semconv.codes import tuple_keys
from semconv.tokenize import assign as assign_mod
from semconv.tokenize import quality
from semconv.tokenize.assign import assign_codes, level_inputs
from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook
from semconv.tokenize.collisions import (
    TakenTuples, min_cost_assignment, nearest_free_tuple, resolve_collisions,
)
from semconv.tokenize.stage import _projection_distance
from semconv.tokenize.train import codebook_stats


def reference_resolution(z, codebooks, codes):
    """The procedure of ``semconv.tokenize.collisions`` written the direct way (every group found
    by a scan of all items, every tuple in a Python set): quadratic, but plainly the spec."""
    codes = np.asarray(codes, dtype=np.int64)
    n, L = codes.shape
    K = codebooks.shape[1]
    out = codes.copy()
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    colliding = counts[inverse.ravel()] > 1
    r_last = level_inputs(z, codebooks, codes, L - 1).astype(np.float64)
    book = codebooks[L - 1].astype(np.float64)
    group = np.unique(codes[:, : L - 1], axis=0, return_inverse=True)[1].ravel() if L > 1 else np.zeros(n, int)
    overflow = []
    for g in np.unique(group[colliding]):
        members = np.flatnonzero(group == g)
        movers = members[colliding[members]]
        kept = set(int(c) for c in codes[members[~colliding[members]], L - 1])
        free = np.array([k for k in range(K) if k not in kept], dtype=np.int64)
        cost = ((r_last[movers][:, None, :] - book[free][None, :, :]) ** 2).sum(-1)
        if len(movers) <= len(free):
            out[movers, L - 1] = free[min_cost_assignment(cost)]
        else:
            placed_col = min_cost_assignment(cost.T)
            placed = np.zeros(len(movers), dtype=bool)
            placed[placed_col] = True
            out[movers[placed_col], L - 1] = free
            overflow.extend(int(i) for i in movers[~placed])
    overflow.sort()
    taken = {tuple(int(c) for c in row) for row in np.delete(out, overflow, axis=0)}
    for i in overflow:
        t = nearest_free_tuple(z[i], codebooks, taken)
        out[i] = t
        taken.add(t)
    return out, overflow


def crowded(n=1500, L=3, K=16, d=4, seed=0):
    """Items crowded into few prefixes: many collisions, and prefix groups with more colliding
    items than last-level codes (the fallback)."""
    rng = np.random.default_rng(seed)
    books = rng.normal(size=(L, K, d)).astype(np.float32) * np.array([4.0, 1.0, 0.3], np.float32)[:L, None, None]
    centres = rng.normal(size=(12, d)) * 4
    z = (centres[rng.integers(0, 12, n)] + 0.2 * rng.normal(size=(n, d))).astype(np.float32)
    return z, books


def test_batched_assignment_equals_unbatched(monkeypatch):
    """Chunks of one faiss query block (4,096 rows) and a last partial chunk give the codes and
    residuals of a single pass over all rows, bit for bit."""
    rng = np.random.default_rng(0)
    books = rng.normal(size=(3, 32, 8)).astype(np.float32) * np.array([3.0, 1.0, 0.3], np.float32)[:, None, None]
    z = rng.normal(size=(3 * assign_mod.BLOCK + 123, 8)).astype(np.float32) * 3
    monkeypatch.setattr(assign_mod, "CHUNK", 1 << 30)
    whole_codes, whole_res = assign_codes(z, books)
    monkeypatch.setattr(assign_mod, "CHUNK", assign_mod.BLOCK)
    codes, res = assign_codes(z, books)
    np.testing.assert_array_equal(codes, whole_codes)
    np.testing.assert_array_equal(res, whole_res)
    brute = np.empty_like(codes)  # and both are the nearest code of each level's residual
    r = z.astype(np.float64)
    for level in range(3):
        brute[:, level] = ((r[:, None, :] - books[level][None]) ** 2).sum(-1).argmin(1)
        r = r - books[level][brute[:, level]]
    assert (codes == brute).all(1).mean() > 0.999  # float32 vs float64 at near-ties only


@pytest.mark.parametrize("seed", [0, 1])
def test_collision_resolution_equals_the_direct_procedure(seed):
    z, books = crowded(seed=seed)
    raw, _ = assign_codes(z, books)
    res = resolve_collisions(z, books, raw)
    ref, overflow = reference_resolution(z, books, raw)
    assert len(overflow) > 0 and quality.collision_rate(raw) > 0.5  # both paths exercised
    np.testing.assert_array_equal(res.codes, ref)
    np.testing.assert_array_equal(res.fallback, overflow)
    assert quality.unique_tuples(res.codes) == len(z)
    _, inv, counts = np.unique(raw, axis=0, return_inverse=True, return_counts=True)
    alone = counts[inv.ravel()] == 1
    np.testing.assert_array_equal(res.codes[alone], raw[alone])  # nobody who was alone moves


def test_collision_resolution_with_one_level():
    z, books = crowded(n=6, L=1, K=8)
    raw = np.zeros((6, 1), np.int64)
    res = resolve_collisions(z, books, raw)
    np.testing.assert_array_equal(res.codes, reference_resolution(z, books, raw)[0])
    assert quality.unique_tuples(res.codes) == 6


def test_taken_tuples_answer_like_a_set():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 5, size=(400, 3))
    as_set = {tuple(int(c) for c in row) for row in codes}
    taken = TakenTuples(codes)
    for t in [tuple(int(c) for c in row) for row in rng.integers(0, 5, size=(200, 3))]:
        assert (t in taken) == (t in as_set)
    taken.add((9, 9, 9))
    assert (9, 9, 9) in taken and (9, 9, 8) not in taken
    keys = tuple_keys(codes)
    assert len(np.unique(keys)) == len(as_set)


def test_reseeding_statistics_in_chunks_equal_one_pass():
    torch.manual_seed(0)
    model = ResidualCodebook(CodebookConfig(dim=6, levels=3, codes_per_level=16))
    with torch.no_grad():
        model.codebooks.normal_()
    x = torch.randn(1000, 6)
    usage, cand, cerr = codebook_stats(model, x, chunk=1000)
    usage_c, cand_c, cerr_c = codebook_stats(model, x, chunk=37)
    torch.testing.assert_close(usage_c, usage)
    for level in range(3):  # the same top-K errors, each with its own residual
        torch.testing.assert_close(cerr_c[level].sort().values, cerr[level].sort().values)
        a, b = cerr[level].argsort(), cerr_c[level].argsort()
        torch.testing.assert_close(cand_c[level][b], cand[level][a])
    _, _, small = codebook_stats(model, x[:5], chunk=2)  # fewer inputs than codes: padded
    assert small.shape == (3, 16) and torch.isinf(small[:, 5:]).all()


def test_quality_figures_in_chunks_equal_one_chunk(monkeypatch):
    rng = np.random.default_rng(3)
    books = rng.normal(size=(3, 16, 5)).astype(np.float32)
    codes = rng.integers(0, 16, size=(500, 3))
    z = rng.normal(size=(500, 5)).astype(np.float32)
    text = rng.normal(size=(500, 7)).astype(np.float32)
    one = quality.quantization_error(z, books, codes), quality.text_alignment_distance(books, codes, text)
    monkeypatch.setattr(quality, "ROWS", 64)
    many = (quality.quantization_error(z, books, codes),
            quality.text_alignment_distance(books, codes, text, floats=3 * 7 * 64))
    assert many == pytest.approx(one, rel=1e-12)
    model = ResidualCodebook(CodebookConfig(dim=5, levels=3, codes_per_level=16, d_llm=7))
    with torch.no_grad():
        model.codebooks.copy_(torch.from_numpy(books))
    assert _projection_distance(model, codes, text, floats=3 * 7 * 64) == pytest.approx(
        _projection_distance(model, codes, text), rel=1e-5)


def test_min_cost_assignment_shortcuts_return_the_only_optimum():
    """Two rows sharing their cheapest column (two items on one tuple: most groups at scale), and
    rows with distinct cheapest columns, skip the Hungarian loop; the answer is still the optimum."""
    rng = np.random.default_rng(5)
    for trial in range(300):
        m = int(rng.integers(2, 7))
        cost = rng.random((2, m))
        if trial % 2:
            cost[:, 0] = rng.random(2) * 0.01  # both rows' cheapest column is 0
        got = min_cost_assignment(cost)
        pairs = [(a, b) for a in range(m) for b in range(m) if a != b]
        best = min(pairs, key=lambda p: cost[0, p[0]] + cost[1, p[1]])
        assert tuple(got.tolist()) == best
    ties = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])  # two optima: the full algorithm decides
    assert sorted(min_cost_assignment(ties).tolist()) == [0, 1]

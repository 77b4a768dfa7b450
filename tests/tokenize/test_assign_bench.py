"""``bench/assign.py``: its cdist baseline is a correct assignment, tie gaps are measured, and a
small run writes the JSON the issue asks for."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from bench import assign as bench
from semconv.tokenize.assign import assign_codes


def test_cdist_baseline_gives_the_same_codes_as_assign_codes():
    rng = np.random.default_rng(0)
    z = bench.synthetic_items(3000, 8, seed=1)
    books = rng.normal(size=(3, 16, 8)).astype(np.float32) * np.array([3.0, 1.0, 0.3], np.float32)[:, None, None]
    np.testing.assert_array_equal(bench.cdist_assign(z, books, chunk=700), assign_codes(z, books)[0])


def test_tie_gaps_are_relative_distance_gaps_at_the_first_differing_level():
    books = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.0], [0.0, 0.5]]], np.float32)
    z = np.array([[1.0, 1.0], [2.0, 0.0]], np.float32)
    a, b = np.array([[0, 0], [0, 0]]), np.array([[1, 0], [0, 1]])
    # item 0 differs at level 0: |1 - 1| / (2 + 1) = 0; item 1 at level 1 on residual (1, 0):
    # d(c0) = 0.25, d(c1) = 1.25, so |0.25 - 1.25| / (1 + 0.25) = 0.8
    assert bench.tie_gaps(z, books, a, b) == pytest.approx([0.0, 0.8])


def test_a_small_run_writes_the_result_json(tmp_path, monkeypatch):
    out = tmp_path / "assign.json"
    monkeypatch.setattr(sys, "argv", ["assign.py", "--items", "4000", "--dim", "8", "--codes", "16",
                                      "--repeats", "1", "--threads", "1", "--json", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    assert result["items"] == 4000 and result["identical_codes"] is True and result["mismatched_items"] == 0
    assert result["speedup_vs_cdist"] == pytest.approx(result["cdist_s"] / result["faiss_s"])
    assert result["faiss_items_per_s"] > 0 and result["cdist_items_per_s"] > 0

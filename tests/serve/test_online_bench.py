"""The analysis in ``bench/online_generation.py``: which slow lookups sat next to generation answers."""

from __future__ import annotations

import pytest

from bench import online_generation as og


def test_slow_lookups_are_counted_and_matched_to_nearby_generation_answers():
    look = {"started": [10.0, 10.5, 12.0, 15.0, 20.0], "lat": [0.080, 0.005, 0.090, 0.100, 0.004]}
    answers = [10.2, 14.9, 30.0]
    # slow (> 50 ms): 10.0 (0.2 s from 10.2), 12.0 (1.8 s from the nearest), 15.0 (0.1 s after 14.9)
    assert og.near_bursts(look, answers, slow_ms=50) == {"slow": 3, "near_answers": 2}
    assert og.near_bursts(look, answers, slow_ms=50, window_s=2.0) == {"slow": 3, "near_answers": 3}
    assert og.near_bursts(look, [], slow_ms=50) == {"slow": 3, "near_answers": 0}
    assert og.near_bursts(look, answers, slow_ms=500) == {"slow": 0, "near_answers": 0}


def test_a_phases_batch_share_comes_from_two_replica_snapshots():
    before = {"batches": 2, "requests": 3, "sizes": {"1": 1, "2": 1}, "busy_s": 1.0}
    after = {"batches": 5, "requests": 36, "sizes": {"1": 1, "2": 2, "16": 2}, "busy_s": 9.0}
    d = og.batch_delta(before, after, wall_s=10.0)
    assert d["sizes"] == {"2": 1, "16": 2} and d["batches"] == 3 and d["mean_batch"] == pytest.approx(33 / 3)
    assert d["model_busy"] == pytest.approx(0.8)

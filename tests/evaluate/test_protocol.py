"""The evaluate stage scores a precache exactly like a brute-force full ranking would."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import RunDir
from semconv.config import load_config
from semconv.evaluate.protocol import EvaluationError, RaggedIds, SplitRows, rankings_from_precache, read_split
from semconv.evaluate.stage import run_evaluate
from semconv.metrics import ranking_metrics, topk_from_scores
from semconv.protocol import split_bounds

N_USERS, N_ITEMS = 40, 30


def _run(tmp_path, build, drop_users=()):
    """A run whose precache is the top-10 of a random score matrix, targets planted in it."""
    rng = np.random.default_rng(3)
    seqs = build.random_sequences(N_USERS, N_ITEMS, seed=1)
    scores = rng.normal(size=(N_USERS, N_ITEMS))
    # Put some targets high in their user's scores, so ranks spread over 1..10 and beyond.
    for u, seq in seqs.items():
        scores[u, seq[-1]] += rng.uniform(0, 3)
    run = RunDir(tmp_path / "run")
    build.write_items(run, N_ITEMS)
    build.write_histories(run, seqs)
    top = topk_from_scores(scores, 10)
    keep = [u for u in range(N_USERS) if u not in set(drop_users)]
    build.write_precache(run, keep, top[keep], k=10)
    targets = [seqs[u][-1] for u in range(N_USERS)]
    cfg = load_config(None, [f"run_dir={run.root}", "evaluate.baselines=[]", "evaluate.plots=false"])
    return cfg, run, top, targets


def test_precache_metrics_equal_brute_force_full_ranking(tmp_path, build):
    cfg, run, top, targets = _run(tmp_path, build)
    run_evaluate(cfg)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    expected = ranking_metrics(top, targets, [1, 5, 10])
    got = metrics["systems"]["semconv"]
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
    assert 0 < got["HR@10"] < 1 and got["HR@1"] < got["HR@10"]  # the case is not degenerate
    assert metrics["users"] == N_USERS and metrics["missing_users"]["semconv"] == 0
    assert metrics["config_hash"] == cfg.config_hash()


def test_precache_metrics_equal_ranks_in_the_full_score_matrix(tmp_path, build):
    cfg, run, top, targets = _run(tmp_path, build)
    run_evaluate(cfg)
    got = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())["systems"]["semconv"]
    rng = np.random.default_rng(3)  # rebuild the same scores, rank every target among all items
    seqs = build.random_sequences(N_USERS, N_ITEMS, seed=1)
    scores = rng.normal(size=(N_USERS, N_ITEMS))
    for u, seq in seqs.items():
        scores[u, seq[-1]] += rng.uniform(0, 3)
    ranks = np.array([1 + (scores[u] > scores[u, t]).sum() for u, t in enumerate(targets)])
    for k in (1, 5, 10):
        assert got[f"HR@{k}"] == pytest.approx((ranks <= k).mean())
        assert got[f"NDCG@{k}"] == pytest.approx(np.where(ranks <= k, 1 / np.log2(ranks + 1), 0).mean())


def test_users_missing_from_the_precache_count_as_misses(tmp_path, build):
    dropped = [0, 5, 7]
    cfg, run, top, targets = _run(tmp_path, build, drop_users=dropped)
    run_evaluate(cfg)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    emptied = [[] if u in dropped else list(top[u]) for u in range(N_USERS)]
    expected = ranking_metrics(emptied, targets, [1, 5, 10])
    assert metrics["missing_users"]["semconv"] == 3
    assert metrics["users"] == N_USERS  # the denominator keeps every test user
    for key in expected:
        assert metrics["systems"]["semconv"][key] == pytest.approx(expected[key], abs=1e-12)


def test_precache_shorter_than_the_largest_k_is_refused():
    table = pa.table({"user_id": pa.array([1, 2], pa.int64()),
                      "items": pa.array([[1, 2, 3], [4, 5]], pa.list_(pa.int64()))})
    with pytest.raises(EvaluationError, match="top_k >= 10"):
        rankings_from_precache(table, [1, 2], min_k=10)
    rankings, missing = rankings_from_precache(table, [2, 3, 1], min_k=3)
    assert rankings == [[4, 5], [], [1, 2, 3]] and missing == 1


def test_duplicate_users_are_errors_naming_the_user(build):
    table = pa.table({"user_id": pa.array([1, 1], pa.int64()),
                      "items": pa.array([[1], [2]], pa.list_(pa.int64()))})
    with pytest.raises(EvaluationError, match="user_id 1"):
        rankings_from_precache(table, [1], min_k=1)
    seqs = build.sequences_table({4: [1, 2, 3]})
    doubled = pa.concat_tables([seqs, seqs])
    with pytest.raises(EvaluationError, match="2 rows for user_id 4"):
        read_split(doubled, split_bounds(doubled), "test", 20)


def test_held_out_rows_follow_leave_last_out_and_see_the_whole_history(build):
    seqs = {7: [5, 6, 8, 9, 3], 8: [1, 2]}
    test, valid = (build.split(seqs, s, max_len=2) for s in ("test", "valid"))
    assert test.user_ids.tolist() == [7] and valid.user_ids.tolist() == [7]  # 8 holds nothing out
    assert test.targets.tolist() == [3] and test.histories[0].tolist() == [8, 9]
    assert valid.targets.tolist() == [9] and valid.histories[0].tolist() == [6, 8]
    assert test.seen[0].tolist() == [5, 6, 8, 9] and valid.seen[0].tolist() == [5, 6, 8]
    with pytest.raises(EvaluationError, match="'valid' or 'test'"):
        build.split(seqs, "train")


def test_complete_report_is_not_recomputed(tmp_path, build):
    cfg, run, _, _ = _run(tmp_path, build)
    run_evaluate(cfg)
    first = run.manifest("report")["created_at"]
    path = tmp_path / "run" / "report" / "metrics.json"
    before = path.stat().st_mtime_ns
    run_evaluate(cfg)
    assert run.manifest("report")["created_at"] == first and path.stat().st_mtime_ns == before


def test_ragged_ids_hold_the_rows_of_an_arrow_list_column_and_share_one_array():
    lists = pa.chunked_array([pa.array([[1, 2, 3], [], None], pa.list_(pa.int32())),
                              pa.array([[9, 8], [7], [5, 6, 4, 3]], pa.list_(pa.int32())).slice(1)])
    rows = RaggedIds.from_arrow(lists)
    expect = [[1, 2, 3], [], [], [7], [5, 6, 4, 3]]
    assert [r.tolist() for r in rows] == expect and len(rows) == 5
    assert rows[-1].tolist() == [5, 6, 4, 3] and rows[0].dtype == np.int32  # the column's own buffer
    part = rows[3:]
    assert isinstance(part, RaggedIds) and [r.tolist() for r in part] == expect[3:]
    assert part.values is rows.values  # slicing, take and trim move bounds, never copy ids
    picked = rows.take(np.array([4, 0]))
    assert [r.tolist() for r in picked] == [[5, 6, 4, 3], [1, 2, 3]] and picked.values is rows.values
    assert [r.tolist() for r in rows.trim(head=1, tail=1)] == [[2], [], [], [], [6, 4]]
    assert rows.right_aligned(3, offset=1).tolist() == [[2, 3, 4], [0, 0, 0], [0, 0, 0], [0, 0, 8], [7, 5, 4]]
    assert [r.tolist() for r in RaggedIds.from_lists(expect)] == expect


def test_split_rows_take_plain_lists_and_restrict_keeps_the_order():
    rows = SplitRows("test", np.array([5, 6, 7]), [[1], [2, 3], []], np.array([4, 4, 4]), [[0, 1], [2, 3], [9]])
    assert isinstance(rows.histories, RaggedIds) and isinstance(rows.seen, RaggedIds)
    kept = rows.restrict(np.array([7, 5]))
    assert kept.user_ids.tolist() == [5, 7]
    assert [h.tolist() for h in kept.histories] == [[1], []] and [h.tolist() for h in kept.seen] == [[0, 1], [9]]

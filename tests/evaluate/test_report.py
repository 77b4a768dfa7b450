"""The report renders from a tiny hand-made run: files exist and report.md shows the JSON's numbers."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import RunDir
from semconv.codes import item_codes_table
from semconv.config import load_config
from semconv.evaluate.protocol import rankings_from_precache, read_split
from semconv.evaluate.report import fmt, metric_columns
from semconv.evaluate.stage import run_evaluate
from semconv.metrics import prefix_hit_rates

N_USERS, N_ITEMS = 30, 25
CODEBOOK = {"items": N_ITEMS, "levels": 3, "codes_per_level": 8, "collision_rate": 0.04,
            "utilisation": [1.0, 0.875, 0.5], "perplexity": [7.1, 5.2, 3.3]}
TRAIN = {"train_loss": [3.2, 2.5, 2.1, 1.9], "train_steps": [1, 2, 3, 4],
         "eval_loss": [2.8, 2.2], "eval_steps": [2, 4], "train_time_s": 12.5}


def tiny_run(tmp_path, build, codebook=True, training=True):
    seqs = build.random_sequences(N_USERS, N_ITEMS, seed=2)
    run = RunDir(tmp_path / "run")
    build.write_items(run, N_ITEMS)
    build.write_histories(run, seqs)
    rng = np.random.default_rng(0)
    others = [np.setdiff1d(np.arange(N_ITEMS), [seqs[u][-1]]) for u in range(N_USERS)]
    ranked = np.stack([rng.permutation(o)[:10] for o in others])  # no target anywhere...
    for u in range(0, N_USERS, 3):  # ...except a third of the users, at rank u % 10 + 1
        ranked[u, u % 10] = seqs[u][-1]
    build.write_precache(run, list(range(N_USERS)), ranked, k=10)
    if codebook:
        with run.writing("codebook", {"levels": 3}) as d:
            (d / "metrics.json").write_text(json.dumps(CODEBOOK))
    if training:
        with run.writing("model", {"base_model": "tiny"}) as d:
            (d / "train_metrics.json").write_text(json.dumps(TRAIN))
    cfg = load_config(None, [f"run_dir={run.root}", "evaluate.baselines=[popularity]"])
    return cfg, run


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """``{row label: cells}`` of the tables in the section under ``heading``."""
    section = markdown.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_report_files_exist_and_markdown_matches_the_json(tmp_path, build):
    cfg, run = tiny_run(tmp_path, build)
    out = run_evaluate(cfg)
    report = tmp_path / "run" / "report"
    assert out == {"report": run.path("report")}
    for name in ("metrics.json", "report.md", "metrics.png", "training_curve.png", "codebook_utilisation.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    assert (report / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((report / "metrics.json").read_text())
    md = (report / "report.md").read_text()
    assert metrics["config_hash"] == cfg.config_hash() and cfg.config_hash() in md
    assert metrics["users"] == N_USERS and metrics["split"] == "test"
    assert set(metrics["systems"]) == {"semconv", "popularity"}
    cols = metric_columns(cfg.evaluate.ks)
    assert cols == ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]  # the paper's Table 1 columns
    rows = table_rows(md, "## Results (test)")
    header = rows.pop("system")
    assert header == cols
    labels = {"Ours (semconv)": "semconv", "Most popular": "popularity"}
    assert set(rows) == set(labels)
    for label, cells in rows.items():
        for col, cell in zip(cols, cells):
            assert cell == fmt(metrics["systems"][labels[label]][col])
    assert metrics["systems"]["semconv"]["HR@10"] == pytest.approx(10 / N_USERS)
    # Codebook and training sections carry the upstream numbers, not made-up ones.
    assert metrics["codebook"] == CODEBOOK
    levels = table_rows(md, "## Codebook")
    assert levels["utilisation"] == [fmt(x) for x in CODEBOOK["utilisation"]]
    assert metrics["training"]["train_loss_last"] == 1.9 and metrics["training"]["eval_loss_min"] == 2.2
    assert "![training curve](training_curve.png)" in md


def brute_force_prefix_hits(rankings, targets, codes, k):
    """Per level, the share of users with an item of the same leading codes as the target in the top k."""
    levels = codes.shape[1]
    return [float(np.mean([any(tuple(codes[i][: l + 1]) == tuple(codes[t][: l + 1]) for i in r[:k] if i >= 0)
                           for r, t in zip(rankings, targets)])) for l in range(levels)]


def test_code_prefix_hits_per_system_match_a_brute_force_count(tmp_path, build):
    cfg, run = tiny_run(tmp_path, build)
    rng = np.random.default_rng(3)
    codes = np.stack([rng.integers(0, 3, N_ITEMS), rng.integers(0, 3, N_ITEMS), np.arange(N_ITEMS)], axis=1)
    run.write_table("item_codes", item_codes_table(np.arange(N_ITEMS), codes))
    run_evaluate(cfg)
    report = tmp_path / "run" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    hits = metrics["code_prefix_hits"]
    assert hits["k"] == 10 and set(hits["systems"]) == {"semconv", "popularity"}
    test = read_split(run.read_table("sequences"), run.read_table("splits"), "test", 20)
    ours, _ = rankings_from_precache(run.read_table("precache"), test.user_ids, 10)
    assert hits["systems"]["semconv"] == pytest.approx(brute_force_prefix_hits(ours, test.targets, codes, 10))
    for name, rates in hits["systems"].items():  # every item has its own codes: the last level is HR@10
        assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]
        assert rates[-1] == pytest.approx(metrics["systems"][name]["HR@10"])
    rows = table_rows((report / "report.md").read_text(), "## Code prefixes in the top 10")
    assert rows.pop("system") == ["level 1", "level 2", "level 3"]
    assert rows["Ours (semconv)"] == [fmt(x) for x in hits["systems"]["semconv"]]


def test_item_codes_missing_an_item_leave_the_prefix_section_out_and_the_rest_scored(tmp_path, build):
    cfg, run = tiny_run(tmp_path, build)
    ids = np.arange(N_ITEMS - 1)  # the last item has no codes
    run.write_table("item_codes", item_codes_table(ids, np.stack([ids % 3, ids], axis=1)))
    run_evaluate(cfg)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert "code_prefix_hits" not in metrics and set(metrics["systems"]) == {"semconv", "popularity"}
    assert "## Code prefixes" not in (tmp_path / "run" / "report" / "report.md").read_text()


def test_prefix_hit_rates_by_hand_and_bad_input():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    # user 0: item 1 shares the first code of target 0; user 1: nothing; user 2: padding only
    assert prefix_hit_rates([[1], [2, 3], [-1]], [0, 0, 3], codes, k=2) == pytest.approx([1 / 3, 0])
    assert prefix_hit_rates(np.array([[3, 0], [0, 3]]), [0, 0], codes, k=1) == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="target item 7 has no codes"):
        prefix_hit_rates([[0]], [7], codes, k=1)
    with pytest.raises(ValueError, match="2 rankings for 1 targets"):
        prefix_hit_rates([[0], [1]], [0], codes, k=1)


def test_missing_optional_inputs_leave_their_sections_out(tmp_path, build):
    cfg, run = tiny_run(tmp_path, build, codebook=False, training=False)
    run_evaluate(cfg)
    report = tmp_path / "run" / "report"
    md = (report / "report.md").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    assert "## Codebook" not in md and "## Fine-tuning" not in md and "## Code prefixes" not in md
    assert "codebook" not in metrics and "training" not in metrics and "code_prefix_hits" not in metrics
    assert not (report / "codebook_utilisation.png").exists()
    assert not (report / "training_curve.png").exists()


def test_a_baseline_without_inputs_is_reported_as_skipped_not_scored(tmp_path, build):
    cfg, run = tiny_run(tmp_path, build)
    cfg = load_config(None, [f"run_dir={run.root}", "evaluate.baselines=[popularity,cf]",
                             "evaluate.plots=false"])
    run_evaluate(cfg)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert "cf" not in metrics["systems"] and "item_emb" in metrics["skipped"]["cf"]
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert re.search(r"CF .* not evaluated: item_emb/ is missing", md)


def test_cf_baseline_ranks_with_the_saved_stage1_model(tmp_path, build):
    from semconv.embed.cf import CFRecommender
    from semconv.metrics import ranking_metrics

    cfg, run = tiny_run(tmp_path, build, codebook=False, training=False)
    rng = np.random.default_rng(5)
    rec = CFRecommender(np.arange(N_USERS, dtype=np.int64), rng.normal(size=(N_USERS, 4)).astype(np.float32),
                        rng.normal(size=(N_ITEMS, 4)).astype(np.float32), {"dim": 4})
    with run.writing("item_emb", {"source": "lightgcn", "dim": 4}) as d:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(rec.item_embedding.ravel()), 4)
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"item_id": pa.array(range(N_ITEMS), pa.int64()), "embedding": emb}),
                       d / "part-00000.parquet")
        rec.save_pretrained(d / "cf_model")
        (d / "metrics.json").write_text(json.dumps({"model": "lightgcn", "train_loss": [0.7, 0.6]}))
    cfg = load_config(None, [f"run_dir={run.root}", "evaluate.baselines=[cf]", "evaluate.plots=false"])
    run_evaluate(cfg)
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    test = read_split(run.read_table("sequences"), run.read_table("splits"), "test", 20)
    expected = ranking_metrics(rec.recommend(test.user_ids, 10), test.targets.tolist())
    assert metrics["systems"]["cf"] == pytest.approx(expected)
    assert metrics["valid"]["systems"]["cf"].keys() == expected.keys()
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "embed stage" not in md  # one CF figure per split: the embed stage scores nothing

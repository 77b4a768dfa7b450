"""The pieces of ``bench/quality.py``: the quick sample, the config it builds, the ratio table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import quality


def test_quick_sample_keeps_whole_histories_of_every_nth_user(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    inter = {str(u): [u, u + 1, u + 2] for u in range(10)}
    (src / "Scientific.inter.json").write_text(json.dumps(inter))
    (src / "Scientific.item.json").write_text(json.dumps({str(i): {"title": f"t{i}"} for i in range(12)}))
    dst = quality.subset_dataset(src, tmp_path / "dst", users=3)
    sample = json.loads((dst / "Scientific.inter.json").read_text())
    assert sample == {"0": [0, 1, 2], "3": [3, 4, 5], "6": [6, 7, 8]}
    assert (dst / "Scientific.item.json").read_text() == (src / "Scientific.item.json").read_text()


def test_quick_config_is_valid_and_points_at_the_sample(tmp_path):
    args = argparse.Namespace(quick=True, users=50, run_dir=str(tmp_path / "q"), config=None,
                              overrides=["seed=3"])
    cfg, overrides = quality.build_config(args)
    assert cfg.prepare.dataset == str(tmp_path / "q" / "_data" / "Scientific")
    assert len(json.loads((Path(cfg.prepare.dataset) / "Scientific.inter.json").read_text())) == 50
    assert cfg.finetune.max_steps == 20 and cfg.seed == 3 and cfg.run_dir == str(tmp_path / "q")
    assert all(o in overrides for o in quality.QUICK_OVERRIDES)


def test_table_prints_ratios_to_baselines_measured_in_the_same_run():
    systems = {
        "semconv": {"HR@1": 0.02, "HR@5": 0.06, "HR@10": 0.09, "NDCG@5": 0.04, "NDCG@10": 0.05},
        "popularity": {"HR@1": 0.01, "HR@5": 0.02, "HR@10": 0.03, "NDCG@5": 0.01, "NDCG@10": 0.02},
        "sasrec": {"HR@1": 0.0, "HR@5": 0.03, "HR@10": 0.045, "NDCG@5": 0.02, "NDCG@10": 0.025},
    }
    r = quality.ratios(systems, "popularity")
    assert r["semconv"]["HR@10"] == pytest.approx(3.0) and r["semconv"]["NDCG@10"] == pytest.approx(2.5)
    assert quality.ratios(systems, "sasrec")["semconv"]["HR@1"] is None  # baseline scored 0
    table = quality.format_table(systems).splitlines()
    assert table[0].split()[:6] == ["system", "HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10"]
    ours = table[2].split()
    assert ours[0] == "semconv" and ours[3] == "0.0900" and ours[6:] == ["3.00x", "2.50x", "2.00x", "2.00x"]

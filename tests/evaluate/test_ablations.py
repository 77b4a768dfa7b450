"""Ablations are config overrides; each runs in a sibling run dir reusing unchanged artifacts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from semconv.artifacts import RunDir
from semconv.config import PipelineConfig, load_config
from semconv.evaluate.ablations import (
    ABLATIONS,
    AblationError,
    ablation_config,
    expand_names,
    link_artifact,
    reused_artifacts,
    run_ablations,
)
from semconv.evaluate.stage import run_evaluate

UPSTREAM = ["items", "sequences", "splits", "item_emb", "item_text_emb"]


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_parses_into_a_valid_config(name):
    cfg = load_config(None, ABLATIONS[name])
    default = PipelineConfig().model_dump()
    changed = {o.split("=")[0] for o in ABLATIONS[name]}
    for key in changed:
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        assert str(value).lower() == dict(o.split("=") for o in ABLATIONS[name])[key]
    if name not in ("neg_ratio_3", "levels_4", "wo_sa_init"):  # defaults: part of sweeps, or off
        assert cfg.model_dump() != default


def test_paper_ablations_are_the_named_switches():
    assert ABLATIONS["wo_llm_alignment"] == ["tokenize.llm_alignment=false"]
    assert ABLATIONS["wo_negative"] == ["tasks.negative=false"]
    assert ABLATIONS["ed_tokenizer"] == ["tokenize.encoder_decoder=true"]
    assert expand_names(["neg_ratio"]) == [f"neg_ratio_{r}" for r in range(6)]
    assert expand_names(["levels", "levels_3"]) == [f"levels_{n}" for n in range(2, 6)]
    assert expand_names(["ts_rec"]) == ["sa_init", "ts_align", "ts_rec"]
    with pytest.raises(AblationError, match="unknown ablation 'wo_everything'"):
        expand_names(["wo_everything"])


def test_ablation_runs_in_a_sibling_dir_and_reuses_upstream_of_the_changed_stage(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}/main"])
    tok = ablation_config(cfg, "wo_llm_alignment")
    assert tok.run_dir == f"{tmp_path}/main/ablations/wo_llm_alignment"
    assert tok.tokenize.llm_alignment is False and tok.evaluate.baselines == []
    assert reused_artifacts(cfg, tok) == UPSTREAM
    tasks = ablation_config(cfg, "wo_negative")
    assert reused_artifacts(cfg, tasks) == UPSTREAM + ["codebook", "item_codes"]


def test_link_artifact_hard_links_complete_artifacts_only(tmp_path, build):
    src, dst = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    run_table = build.splits_table({1: [1, 2, 3, 4]})
    src.write_table("splits", run_table)
    assert link_artifact(src, dst, "splits") and dst.is_complete("splits")
    a, b = (os.stat(next((tmp_path / d / "splits").glob("*.parquet"))) for d in "ab")
    assert a.st_ino == b.st_ino  # a link, not a copy
    assert dst.read_table("splits").equals(src.read_table("splits"))
    assert not link_artifact(src, dst, "codebook") and not dst.is_complete("codebook")


def test_run_ablations_collects_each_runs_metrics(tmp_path, build):
    """A pipeline whose precache puts every target at rank ``negative_ratio + 1``."""
    seqs = build.random_sequences(12, 20, seed=4)
    calls = []

    def pipeline(cfg: PipelineConfig) -> None:
        run = RunDir(cfg.run_dir)
        calls.append((cfg.run_dir, sorted(n for n in UPSTREAM if run.is_complete(n))))
        if not run.is_complete("splits"):
            build.write_items(run, 20)
            build.write_histories(run, seqs)
        rank = cfg.tasks.negative_ratio
        ranked = []
        for u in range(12):
            others = [i for i in range(20) if i != seqs[u][-1]][:10]
            ranked.append(others[:rank] + [seqs[u][-1]] + others[rank:9])
        if not run.is_complete("precache"):
            build.write_precache(run, list(range(12)), np.array(ranked), k=10)
        run_evaluate(cfg)

    cfg = load_config(None, [f"run_dir={tmp_path}/main", "evaluate.baselines=[popularity]",
                             "evaluate.plots=false"])
    rows = run_ablations(cfg, ["neg_ratio_0", "neg_ratio_3", "neg_ratio_5"], pipeline=pipeline)
    by = {r["ablation"]: r for r in rows}
    assert [r["ablation"] for r in rows] == ["full", "neg_ratio_0", "neg_ratio_3", "neg_ratio_5"]
    assert by["full"]["HR@1"] == 0 and by["full"]["HR@5"] == 1  # default ratio 3: rank 4
    assert by["neg_ratio_0"]["HR@1"] == 1 and by["neg_ratio_5"]["HR@5"] == 0 and by["neg_ratio_5"]["HR@10"] == 1
    assert by["neg_ratio_3"]["same_as"] == "full" and by["neg_ratio_3"]["HR@5"] == 1
    # Sibling runs found items/ and splits/ already there (linked), and ran no baselines.
    sib = f"{tmp_path}/main/ablations/neg_ratio_0"
    linked = ["items", "sequences", "splits"]
    assert (sib, linked) in calls and by["neg_ratio_0"]["reused"] == linked
    sib_metrics = json.loads((tmp_path / "main/ablations/neg_ratio_0/report/metrics.json").read_text())
    assert set(sib_metrics["systems"]) == {"semconv"}
    summary = json.loads((tmp_path / "main/ablations/summary.json").read_text())
    assert [r["ablation"] for r in summary] == [r["ablation"] for r in rows]
    assert "| neg_ratio_0 | tasks.negative_ratio=0 | 1.0000 |" in (tmp_path / "main/ablations/summary.md").read_text()

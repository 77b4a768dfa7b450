"""Ranking on a GPU gives the CPU's answer (skipped without CUDA; ``pytest -m gpu`` on a GPU)."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from semconv.artifacts import RunDir
from semconv.config import PipelineConfig
from semconv.inference.ranker import GenerativeRanker
from semconv.inference.stage import PRECACHE, run_precache

from .conftest import random_histories, random_item_codes
from .test_stage import _make_run_dir

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_constrained_beam_search_on_gpu_matches_cpu(code_lm):
    model, tok = code_lm
    items = random_item_codes(40, seed=1)
    histories = random_histories(9, 40, seed=5)
    want, want_scores = GenerativeRanker(model, tok, items, num_beams=12, top_k=10, batch_size=4).rank(
        histories, exclude_history=True)
    gpu_model = copy.deepcopy(model).to("cuda")
    got, got_scores = GenerativeRanker(gpu_model, tok, items, num_beams=12, top_k=10, batch_size=4).rank(
        histories, exclude_history=True)
    assert got.tolist() == want.tolist()
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-3)


def test_history_pruning_on_gpu_matches_cpu_and_fills_every_slot(code_lm):
    """The dead-node tables of history exclusion live on the model's device."""
    model, tok = code_lm
    items = random_item_codes(40, seed=1)
    rng = np.random.default_rng(3)
    histories = [[i for i in range(40) if i not in set(rng.choice(40, size=n, replace=False).tolist())]
                 for n in (10, 12, 15, 4)]
    want, want_scores = GenerativeRanker(model, tok, items, num_beams=10, top_k=10, batch_size=4).rank(
        histories, exclude_history=True)
    gpu_model = copy.deepcopy(model).to("cuda")
    got, got_scores = GenerativeRanker(gpu_model, tok, items, num_beams=10, top_k=10, batch_size=4).rank(
        histories, exclude_history=True)
    assert (got[:3] >= 0).all() and (got[3][:4] >= 0).all() and (got[3][4:] == -1).all()
    assert got.tolist() == want.tolist()
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-3)


def test_precache_stage_on_a_gpu_actor_matches_the_cpu_run(ray_local, tiny_lm_dir, tmp_path):
    _make_run_dir(tmp_path / "cpu", tiny_lm_dir)  # code-token rows are random: one model for both runs
    shutil.copytree(tmp_path / "cpu", tmp_path / "gpu")
    tables = {}
    for name, use_gpu in (("cpu", False), ("gpu", True)):
        run = RunDir(tmp_path / name)
        cfg = PipelineConfig(run_dir=str(tmp_path / name), finetune={"base_model": str(tiny_lm_dir)},
                             precache={"bf16": False, "num_beams": 8, "top_k": 5, "users_per_shard": 50,
                                       "batch_size": 8, "use_gpu": use_gpu})
        run_precache(cfg)
        tables[name] = sorted(run.read_table(PRECACHE).to_pylist(), key=lambda r: r["user_id"])
    assert len(tables["gpu"]) == len(tables["cpu"]) > 0
    for g, c in zip(tables["gpu"], tables["cpu"]):
        assert g["user_id"] == c["user_id"]
        np.testing.assert_allclose(g["scores"], c["scores"], atol=1e-4)
        # A random tiny model scores many items alike: ranks may swap only between float ties.
        s = np.asarray(c["scores"])
        for j in np.flatnonzero(np.asarray(g["items"]) != np.asarray(c["items"])):
            assert np.abs(np.delete(s, j) - s[j]).min() < 1e-4, (g, c)

"""The ``scratch`` baseline: a random-init decoder trained by our loop on our ``sft/`` rows and
decoded by our constrained search learns a planted sequential rule, end to end through the
evaluate stage's entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from semconv.artifacts import RunDir
from semconv.codes import item_codes_table
from semconv.config import PipelineConfig
from semconv.evaluate.baselines import BaselineUnavailable
from semconv.evaluate.protocol import SplitRows
from semconv.evaluate.scratch import random_decoder, rank_scratch
from semconv.tasks.history import history_rows

from ..finetune.conftest import K, LEVELS, N_ITEMS, item_codes, next_item, planted_histories

CODES = np.array([item_codes(i) for i in range(N_ITEMS)])


def _config(run_dir: Path, base: Path, **scratch) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "run_dir": str(run_dir), "seed": 0, "tokenize": {"levels": LEVELS, "codes_per_level": K},
        "finetune": {"base_model": str(base), "pack_len": 64},
        "precache": {"num_beams": 4, "top_k": 3, "batch_size": 16},
        "evaluate": {"scratch": {"hidden": 64, "layers": 2, "heads": 4, "lr": 5e-3, "batch_size": 8,
                                 "warmup_steps": 10, "max_steps": 200, **scratch}},
    })


def _planted_run(run_dir: Path) -> RunDir:
    histories = planted_histories(128, seed=0)
    run = RunDir(run_dir)
    run.write_table("sft", history_rows(list(range(len(histories))), histories, CODES, max_len=20),
                    manifest={"tasks_config": {"sequential_objective": "history"}})
    run.write_table("item_codes", item_codes_table(np.arange(N_ITEMS), CODES))
    return run


def test_the_random_decoder_has_the_bases_tokenizer_and_the_configured_size(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _config(tmp_path, tiny_lm_dir).evaluate.scratch
    out = random_decoder(tiny_lm_dir, tmp_path / "base", cfg, seed=0)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny_lm_dir).get_vocab()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    assert not torch.equal(model.get_input_embeddings().weight[:10, :8], base.get_input_embeddings().weight[:10, :8])


def test_the_scratch_baseline_learns_a_planted_sequential_rule(tiny_lm_dir, tmp_path, one_thread):
    run = _planted_run(tmp_path / "run")
    cfg = _config(tmp_path / "run", tiny_lm_dir)
    starts = [[i, next_item(i)] for i in range(N_ITEMS)]
    hist = [np.array(h) for h in starts]
    rows = {"test": SplitRows("test", np.arange(N_ITEMS), hist, np.array([next_item(h[-1]) for h in starts]), hist)}
    ranked, info = rank_scratch(cfg, run, rows, k=3, exclude_history=True)
    assert info["steps"] == 200 and info["layers"] == 2 and info["final_train_loss"] < 1.0
    items = ranked["test"]
    assert items.shape == (N_ITEMS, 3)
    hits = sum(int(items[i, 0]) == next_item(h[-1]) for i, h in enumerate(starts))
    assert hits / N_ITEMS >= 0.9, f"next-item accuracy {hits}/{N_ITEMS}"
    # the history is excluded inside the search, as ours does
    assert all(not set(items[i].tolist()) & set(h) for i, h in enumerate(starts))


def test_without_sft_the_baseline_is_skipped_with_a_reason(tiny_lm_dir, tmp_path):
    with pytest.raises(BaselineUnavailable, match="sft/ is missing"):
        rank_scratch(_config(tmp_path, tiny_lm_dir), RunDir(tmp_path), {}, k=3, exclude_history=True)

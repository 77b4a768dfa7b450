"""The pieces of ``bench/learning_curve.py``: full fine-tuning from the LoRA start, the valid
sample, a point at a budget, and one scored curve on a tiny model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from bench import learning_curve
from semconv.artifacts import RunDir
from semconv.finetune.model import build_finetune_model
from semconv.protocol import split_bounds

from .conftest import K, LEVELS, item_codes, next_item


def test_a_variant_changes_only_its_keys_and_is_validated_like_the_config_file(tmp_path):
    import pytest
    from pydantic import ValidationError

    from semconv.config import PipelineConfig

    cfg = PipelineConfig.model_validate({"run_dir": str(tmp_path)})
    v = learning_curve.variant_config(cfg, "num_layers=12+lr=2e-3+objective=prompt")
    assert v.finetune.num_layers == 12 and v.finetune.lr == 2e-3 and v.tasks.sequential_objective == "prompt"
    assert v.finetune.lora_r == cfg.finetune.lora_r and cfg.finetune.num_layers is None  # the demo's is untouched
    assert learning_curve.variant_config(cfg, "default") == cfg
    v3 = learning_curve.variant_config(cfg, "levels=3+lora_r=32")
    assert v3.tokenize.levels == 3 and v3.finetune.lora_r == 32 and cfg.tokenize.levels == 4
    assert v3.tokenize.codes_per_level == cfg.tokenize.codes_per_level
    assert learning_curve.variant_config(cfg, "steps=300") == cfg  # the bench's budget, no config key
    with pytest.raises(ValidationError, match="num_layers"):
        learning_curve.variant_config(cfg, "num_layers=0")
    with pytest.raises(SystemExit, match="key=value"):
        learning_curve.parse_variant("num_layers")


def test_valid_sample_is_seeded_and_at_picks_the_nearest_point(tmp_path):
    seqs = pa.table({"user_id": pa.array([0, 1, 2, 3], pa.int64()),
                     "history": pa.array([[1, 2, 4, 8], [3, 7, 5], [5, 6, 9, 1], [2, 3]], pa.list_(pa.int64()))})
    RunDir(tmp_path).write_table("sequences", seqs)
    RunDir(tmp_path).write_table("splits", split_bounds(seqs), manifest={"max_len": 20})
    a = learning_curve.valid_sample(RunDir(tmp_path), 2, seed=0)
    assert a == learning_curve.valid_sample(RunDir(tmp_path), 2, seed=0)
    assert len(a[0]) == 2 and set(a[1]) <= {4, 7, 9}
    points = [{"train_seconds": s} for s in (0.0, 91.0, 183.0)]
    assert learning_curve.at(points, 180)["train_seconds"] == 183.0
    assert learning_curve.at(points, 60)["train_seconds"] == 91.0


def test_score_decodes_in_the_variants_prompt_format(tiny_lm_dir):
    model, tok, _ = build_finetune_model(tiny_lm_dir, LEVELS, K)
    codes = np.array([item_codes(i) for i in range(16)])
    histories = [[i] for i in range(16)]
    targets = [next_item(i) for i in range(16)]
    out = learning_curve.score(model, tok, codes, "history", "level", histories, targets, beams=10, batch_size=4)
    assert set(out) == {"HR@10", "NDCG@10"} and 0 <= out["NDCG@10"] <= out["HR@10"] <= 1
    assert model.training  # handed back in train mode

"""The pieces of ``bench/learning_curve.py``: full fine-tuning from the LoRA start, the valid
sample, a point at a budget, and one scored curve on a tiny model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from bench import learning_curve
from semconv.artifacts import RunDir
from semconv.finetune.model import build_finetune_model

from .conftest import K, LEVELS, item_codes, next_item


def test_full_variant_starts_from_the_same_function_with_every_weight_trainable(tiny_lm_dir):
    torch.manual_seed(0)
    lora, _, _ = build_finetune_model(tiny_lm_dir, LEVELS, K)
    ids = torch.tensor([[5, 9, 2, 7]])
    before = lora(input_ids=ids).logits.detach()
    n_lora = sum(p.requires_grad for p in lora.parameters())
    full = learning_curve.full_model(lora)
    assert all(p.requires_grad for p in full.parameters()) and sum(1 for _ in full.parameters()) != n_lora
    assert torch.allclose(full(input_ids=ids).logits, before, atol=1e-5)


def test_valid_sample_is_seeded_and_at_picks_the_nearest_point(tmp_path):
    splits = pa.table({"split": ["train", "valid", "valid", "test", "valid"], "user_id": [0, 0, 1, 0, 2],
                       "history": [[1], [1, 2], [3], [1, 2, 4], [5, 6]], "target": [2, 4, 7, 8, 9]})
    RunDir(tmp_path).write_table("splits", splits)
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

"""The training budget's warmup + decay schedule, the LR groups, and the DeepSpeed ZeRO-2 file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semconv.finetune.optim import DeepSpeedConfigError, TrainBudget, deepspeed_config

REPO = Path(__file__).resolve().parents[2]
ZERO2 = REPO / "configs" / "deepspeed_zero2.json"


def test_warmup_then_cosine_decay_to_the_floor():
    budget = TrainBudget(max_steps=110, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    f = [budget.lr_factor(s, 0.0) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.55, abs=1e-6)  # halfway through the decay
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert budget.lr_factor(110, 0.0) == pytest.approx(0.1)


def test_linear_decay_without_warmup():
    budget = TrainBudget(max_steps=100, kind="linear")
    assert budget.lr_factor(0, 0.0) == pytest.approx(1.0)
    assert budget.lr_factor(50, 0.0) == pytest.approx(0.5)
    assert budget.lr_factor(100, 0.0) == pytest.approx(0.0)


def test_zero2_file_validates_with_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads(ZERO2.read_text())
    assert raw["zero_optimization"]["stage"] == 2 and raw["bf16"]["enabled"] is True
    cfg = deepspeed_config(ZERO2, micro_batch=8, grad_accum=4, world_size=1, grad_clip=0.5)
    assert cfg["train_batch_size"] == 32 and cfg["gradient_clipping"] == 0.5
    ds = DeepSpeedConfig(cfg)  # DeepSpeed's own checks (batch arithmetic, known keys)
    assert ds.zero_optimization_stage == 2
    assert ds.bfloat16_config.enabled
    assert ds.train_micro_batch_size_per_gpu == 8 and ds.gradient_accumulation_steps == 4


def test_inconsistent_batch_sizes_are_rejected(tmp_path):
    bad = json.loads(ZERO2.read_text()) | {"train_micro_batch_size_per_gpu": 16}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DeepSpeedConfigError, match="train_micro_batch_size_per_gpu = 16"):
        deepspeed_config(path, micro_batch=8, grad_accum=1, world_size=2)
    stage3 = json.loads(ZERO2.read_text()) | {"zero_optimization": {"stage": 3}}
    path.write_text(json.dumps(stage3))
    with pytest.raises(DeepSpeedConfigError, match="stage = 3"):
        deepspeed_config(path, 8, 1, 1)
    with pytest.raises(DeepSpeedConfigError, match="not found"):
        deepspeed_config(tmp_path / "missing.json", 8, 1, 1)


def test_code_token_rows_get_their_own_scaled_learning_rate():
    import torch

    from semconv.finetune.optim import CODE_ROWS, build_optimizer, set_lr

    lora = torch.nn.Parameter(torch.zeros(3))
    rows = torch.nn.Parameter(torch.zeros(3))
    frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    named = [("layer.lora_A.weight", lora), ("embed.token_adapter.trainable_tokens_delta", rows), ("w", frozen)]
    opt = build_optimizer(named, lr=1e-3, weight_decay=0.0, code_token_lr_scale=10.0)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]
    assert opt.param_groups[0]["params"] == [lora] and opt.param_groups[1]["params"] == [rows]
    set_lr(opt, 0.5)
    for p in (lora, rows):
        p.grad = torch.ones(3)
    opt.step()
    # Adam's first step moves each weight by ~lr: the rows move 10x as far, and keep 10x the LR
    torch.testing.assert_close(rows.detach() / lora.detach(), torch.full((3,), 10.0))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(5e-4), pytest.approx(5e-3)]
    # the code-rows-only phase: every other group at LR 0, so AdamW moves nothing there
    before = lora.detach().clone()
    assert set_lr(opt, 1.0, only=CODE_ROWS) == 0.0
    for p in (lora, rows):
        p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(lora.detach(), before) and opt.param_groups[1]["lr"] == pytest.approx(1e-2)
    # plain parameters (no names) all share one group, as before
    assert len(build_optimizer([lora, rows], lr=1e-3, weight_decay=0.0).param_groups) == 1


def test_a_time_budget_decays_the_schedule_with_whichever_runs_out_first():
    budget = TrainBudget(max_steps=100, max_seconds=60.0, warmup_steps=2, kind="linear", min_lr_ratio=0.1)
    assert budget.lr_factor(0, 50.0) == pytest.approx(0.5)  # warmup goes by steps only
    assert budget.lr_factor(2, 30.0) == pytest.approx(0.1 + 0.9 * 0.5)  # half the time gone: half way
    assert budget.lr_factor(2, 60.0) == pytest.approx(0.1)  # at the floor when time is up
    assert budget.lr_factor(51, 0.0) == pytest.approx(0.1 + 0.9 * (1 - 49 / 98))  # steps further on: steps lead
    assert not budget.done(99, 59.9) and budget.done(100, 0.0) and budget.done(3, 60.0)
    assert budget.progress(10, 30.0) == pytest.approx(0.5) and TrainBudget(10).progress(5, 1e9) == 0.5

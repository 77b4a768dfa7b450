"""The fine-tuning loop in one process (``train(recipe, data, Session())``): its checkpoints go
through the harness and a resumed run ends exactly where the uninterrupted one does, a run restored
after its last step publishes the final payload again, and the strategy is DeepSpeed only on GPUs
with its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dataclasses

from semconv import training
from semconv.artifacts import RunDir
from semconv.finetune import checkpoint as ckpt
from semconv.finetune.recipe import train, train_func
from semconv.finetune.stage import read_data, recipe_of
from semconv.finetune.strategy import DDP, strategy_for
from semconv.training import Session

from .conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def loop_config(run_dir: Path, base: Path, **finetune) -> dict:
    """What the stage hands each Ray Train worker: the typed recipe and the rows in memory."""
    cfg = tiny_config(run_dir, base, **finetune)
    return {"recipe": recipe_of(cfg, base, None),
            "data": read_data(RunDir(run_dir), cfg.tokenize.levels, cfg.tokenize.codes_per_level)}


def test_checkpoints_go_through_the_harness_and_resume_where_they_stopped(planted_run_dir, tiny_lm_dir, tmp_path):
    config = loop_config(planted_run_dir, tiny_lm_dir, max_steps=2, eval_every=2)
    train_func(config, Session(checkpoint_dir=tmp_path / "full"))
    full = tmp_path / "full" / "checkpoint_000002"
    assert {p.name for p in full.iterdir()} == {  # the harness's parts (trainable weights only) + model/
        training.WEIGHTS, training.OPTIMIZER, training.STATE, training.PROGRESS, ckpt.FINAL}

    train_func(config, Session(checkpoint_dir=tmp_path / "resumed", restored=tmp_path / "full" / "checkpoint_000001"))
    resumed = tmp_path / "resumed" / "checkpoint_000002"
    a, b = training.load_state(full), training.load_state(resumed)
    assert b["resumed_from_step"] == [1] and a["resumed_from_step"] == []
    assert b["train_steps"] == [1, 2] and b["eval_steps"] == [2]
    assert b["train_loss"] == a["train_loss"] and b["eval_loss"] == a["eval_loss"] and b["lr"] == a["lr"]
    wa, wb = load_file(str(full / training.WEIGHTS)), load_file(str(resumed / training.WEIGHTS))
    assert wa.keys() == wb.keys() and all("lora_" in n or "trainable_tokens" in n for n in wa)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0)
    assert json.loads((resumed / ckpt.FINAL / "train_metrics.json").read_text())["resumed_from_step"] == [1]


def test_a_run_restored_after_its_last_step_publishes_the_final_payload_again(planted_run_dir, tiny_lm_dir,
                                                                               tmp_path):
    config = loop_config(planted_run_dir, tiny_lm_dir, max_steps=2, checkpoint_every=2, eval_every=2)
    train_func(config, Session(checkpoint_every=2, checkpoint_dir=tmp_path / "first"))
    train_func(config, Session(checkpoint_dir=tmp_path / "again", restored=tmp_path / "first" / "checkpoint_000002"))
    again = tmp_path / "again" / "checkpoint_000002"
    metrics = json.loads((again / ckpt.FINAL / "train_metrics.json").read_text())
    assert metrics["train_steps"] == [1, 2] and metrics["resumed_from_step"] == [2]  # no step ran twice
    first = load_file(str(tmp_path / "first" / "checkpoint_000002" / ckpt.FINAL / "adapter_model.safetensors"))
    for name, value in load_file(str(again / ckpt.FINAL / "adapter_model.safetensors")).items():
        torch.testing.assert_close(value, first[name], rtol=0, atol=0)


def test_deepspeed_only_on_gpus_with_a_deepspeed_config(planted_run_dir, tiny_lm_dir):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recipe = loop_config(planted_run_dir, tiny_lm_dir)["recipe"]
    # a DeepSpeed config without GPUs (or GPUs without one) trains with plain DDP
    for use_gpu, deepspeed in ((False, {"zero_optimization": {"stage": 2}}), (True, None)):
        strategy = strategy_for(dataclasses.replace(recipe, use_gpu=use_gpu, deepspeed=deepspeed), model, opt,
                                Session())
        assert isinstance(strategy, DDP) and strategy.runner is model


def test_the_frozen_phase_changes_only_the_code_token_rows(planted_run_dir, tiny_lm_dir):
    """``finetune.code_rows_first``: the first part of the budget trains the code rows alone."""
    config = loop_config(planted_run_dir, tiny_lm_dir, max_steps=4, code_rows_first=0.5, eval_every=100)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(step, seconds, model, tokenizer):
        seen[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    start = _initial(config["recipe"])
    trained = train(config["recipe"], config["data"], Session(checkpoint_every=100), probes=[snapshot])
    assert trained.history["train_steps"] == [1, 2, 3, 4]
    rows = [n for n in seen[2] if "trainable_tokens_delta" in n]
    others = [n for n in seen[2] if n not in rows]
    assert rows and others and all("lora_" in n for n in others)
    for n in others:  # LoRA untouched through the frozen phase (steps 1-2) ...
        assert torch.equal(seen[2][n], start[n]), n
    assert all(not torch.equal(seen[2][n], start[n]) for n in rows)  # ... while the code rows learned
    assert any(not torch.equal(seen[4][n], start[n]) for n in others if "lora_B" in n)  # then LoRA too


def _initial(recipe) -> dict[str, torch.Tensor]:
    """The trainable weights a recipe starts from (its build is seeded)."""
    from semconv.finetune.recipe import build_model

    lm, _ = build_model(recipe)
    return {n[len("model."):]: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}


def test_log_lines_and_bar_carry_the_recipes_name(planted_run_dir, tiny_lm_dir, monkeypatch, capfd):
    """The scratch baseline runs this loop too: its lines must not read as the fine-tune's."""
    from semconv.finetune import recipe as recipe_module

    bars: list[str] = []
    real = recipe_module.progress
    monkeypatch.setattr(recipe_module, "progress", lambda desc, *a, **k: bars.append(desc) or real(desc, *a, **k))
    config = loop_config(planted_run_dir, tiny_lm_dir, max_steps=1, eval_every=100)
    train(dataclasses.replace(config["recipe"], name="scratch"), config["data"], Session(checkpoint_every=100))
    out = capfd.readouterr().out
    assert bars == ["scratch"]
    assert "[scratch] " in out and "[finetune]" not in out

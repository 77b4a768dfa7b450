"""``run_finetune`` on Ray Train: a complete ``model/``, loadable for decoding (resuming after a killed
worker is the harness's, ``tests/test_training.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from semconv.artifacts import RunDir
from semconv.hardware import cpu_bf16_supported
from semconv.finetune.data import split_examples
from semconv.finetune.model import load_for_inference
from semconv.finetune.stage import FinetuneInputError, run_finetune

from .conftest import held_out_loss, sft_table, tiny_config


def test_run_finetune_writes_a_complete_model_that_loads(ray_local, planted_run_dir, tiny_lm_dir):
    cfg = tiny_config(planted_run_dir, tiny_lm_dir, max_steps=4, eval_every=2, checkpoint_every=2, merge=True)
    out = run_finetune(cfg)
    model_dir = Path(out["model"])
    rd = RunDir(planted_run_dir)
    assert rd.is_complete("model")
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "train_metrics.json",
                 "train_curve.png", "merged/config.json"):
        assert (model_dir / name).is_file(), name
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert metrics["train_steps"] == [1, 2, 3, 4] and len(metrics["train_loss"]) == 4
    assert metrics["eval_steps"] == [2, 4] and all(x > 0 for x in metrics["eval_loss"])
    # 4 packs of 128 tokens a step, each holding one planted row or more
    assert 4 * 4 <= metrics["samples"] <= 4 * 64 and metrics["samples_per_s"] > 0 and metrics["tokens_per_s"] > 0
    # The adapter holds the code rows but not the whole resized vocabulary.
    assert (model_dir / "adapter_model.safetensors").stat().st_size < 200_000
    assert list((planted_run_dir / "_checkpoints").glob("finetune-*/checkpoint_*"))

    model, tok = load_for_inference(model_dir, str(tiny_lm_dir))
    valid = split_examples(rd.read_table("sft"), "valid")  # the run's whole held-out sample
    loss = held_out_loss(model, tok, valid, code_softmax=cfg.finetune.code_softmax)
    # the saved model is the one the run evaluated last (fp32 here; bf16 autocast where native)
    assert loss == pytest.approx(metrics["eval_loss"][-1], rel=2e-2 if cpu_bf16_supported() else 1e-4)
    (prompt,), (label,), _ = valid.texts(0, 1)
    ids = torch.tensor([tok(prompt + label)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(_logits(model_dir / "merged", ids), model(input_ids=ids).logits, atol=1e-4)

    before = (model_dir / "_SUCCESS").read_text()
    assert run_finetune(cfg) == out and (model_dir / "_SUCCESS").read_text() == before  # complete: skipped


def _logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits


def test_codes_outside_the_configured_vocabulary_are_rejected(tmp_path, tiny_lm_dir):
    run = tmp_path / "run"
    table = sft_table(4, 2)
    bad = table.set_column(2, "label", pa.array(["<a_1><b_9><c_0><d_0>"] * table.num_rows))
    RunDir(run).write_table("sft", bad)
    with pytest.raises(FinetuneInputError, match=r"row 0 label uses <b_9>"):
        run_finetune(tiny_config(run, tiny_lm_dir))
    cfg = tiny_config(run, tiny_lm_dir)
    cfg.tasks.sa_init = True
    RunDir(run).write_table("sft", table)
    with pytest.raises(FinetuneInputError, match="sa_init.json"):
        run_finetune(cfg)


@pytest.mark.slow  # a second fine-tune on Ray Train: ~30 s on 2 cores
def test_a_time_budget_stops_training_and_still_publishes_the_model(ray_local, planted_run_dir, tiny_lm_dir):
    # 50 steps allowed, but a budget (0.006 s) that the first step already uses up
    cfg = tiny_config(planted_run_dir, tiny_lm_dir, max_steps=50, max_minutes=1e-4, eval_every=25)
    model_dir = Path(run_finetune(cfg)["model"])
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["train_steps"] == [1]
    assert metrics["eval_steps"] == [1]  # the last step is evaluated, as at max_steps
    # the planted sft/ has per-prompt rows and no tasks manifest: decoded as instruction prompts
    assert json.loads((model_dir / "recommender.json").read_text()) == {
        "prompt_format": "instruction", "code_softmax": "level"}
    assert RunDir(planted_run_dir).manifest("model")["steps"] == 1

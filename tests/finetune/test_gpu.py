"""Fine-tuning on a GPU worker, with and without DeepSpeed ZeRO-2 (skipped without CUDA; run on a
GPU machine with ``pytest -m gpu``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semconv.artifacts import RunDir
from semconv.finetune.data import split_examples
from semconv.finetune.model import load_for_inference
from semconv.finetune.stage import run_finetune

from .conftest import held_out_loss, sft_table, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ZERO2 = Path(__file__).resolve().parents[2] / "configs" / "deepspeed_zero2.json"


@pytest.mark.parametrize("deepspeed", [True, False], ids=["zero2", "ddp"])
def test_finetune_on_a_gpu_worker_learns_and_writes_a_loadable_model(ray_local, tmp_path, tiny_lm_dir, deepspeed):
    run_dir = tmp_path / "run"
    RunDir(run_dir).write_table("sft", sft_table(256, 16))
    cfg = tiny_config(run_dir, tiny_lm_dir, max_steps=40, batch_size=8, eval_every=20, checkpoint_every=20,
                      use_gpu=True, deepspeed_config=str(ZERO2) if deepspeed else None, merge=True)
    out = run_finetune(cfg)
    model_dir = Path(out["model"])
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    assert metrics["train_steps"] == list(range(1, 41)) and metrics["eval_steps"] == [20, 40]
    first, last = sum(metrics["train_loss"][:5]) / 5, sum(metrics["train_loss"][-5:]) / 5
    assert last < 0.7 * first, metrics["train_loss"]
    ckpts = sorted((run_dir / "_checkpoints").glob("finetune-*/checkpoint_*"))
    assert ckpts and (not deepspeed or any((c / "deepspeed").is_dir() for c in ckpts))

    model, tok = load_for_inference(model_dir, str(tiny_lm_dir))
    loss = held_out_loss(model.cpu().float(), tok, split_examples(RunDir(run_dir).read_table("sft"), "valid"))
    assert abs(loss - metrics["eval_loss"][-1]) < 0.25  # the adapter saved is the model trained

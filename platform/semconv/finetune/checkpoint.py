"""Resume points of a fine-tuning run: trainable weights, optimizer, schedule, loss history.

Only the weights that learn are saved (LoRA + code-token rows, a few MB), never the frozen
base, so checkpointing every few dozen steps is cheap. The final checkpoint also holds the
``model/`` payload (peft adapter, tokenizer, metrics) that the stage publishes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from semconv.finetune.model import trainable_state

STATE = "train_state.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
FINAL = "final"
DEEPSPEED_TAG = "deepspeed"


def new_history() -> dict[str, Any]:
    """Everything the run accumulates, in step order; survives restarts via checkpoints."""
    return {"step": 0, "train_loss": [], "train_steps": [], "lr": [], "eval_loss": [], "eval_steps": [],
            "samples": 0, "train_time_s": 0.0, "resumed_from_step": []}


def save_state(path: Path, model: Any, optimizer: Any, scheduler: Any, history: dict[str, Any]) -> None:
    """Write a resume point for the plain (DDP) path into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(path / TRAINABLE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / OPTIMIZER)
    (path / STATE).write_text(json.dumps(history))


def load_state(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a resume point written by :func:`save_state`; returns the history."""
    weights = load_file(str(path / TRAINABLE))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise RuntimeError(f"checkpoint {path} holds weights the model lacks, e.g. {unknown[0]!r}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    opt = torch.load(path / OPTIMIZER, weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return read_history(path)


def read_history(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE).read_text())


def save_final(path: Path, model: Any, tokenizer: Any, metrics: dict[str, Any]) -> None:
    """The ``model/`` payload: peft adapter (code rows included, full vocab not), tokenizer, metrics.

    ``save_embedding_layers=False``: the resized embedding matrix is not stored; loading resizes the
    base again and the trainable-token rows overwrite the new tokens, so the adapter stays small.
    """
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), save_embedding_layers=False)
    tokenizer.save_pretrained(str(path))
    (path / "train_metrics.json").write_text(json.dumps(metrics, indent=2))


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / STATE).exists()

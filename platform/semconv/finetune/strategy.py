"""How one optimizer step runs and how it is checkpointed: plain DDP, or DeepSpeed ZeRO.

The fine-tuning loop (:func:`semconv.finetune.recipe.train`) is the same for both; a strategy
owns what differs. ``runner`` is what forward passes go through (the DDP module, or the DeepSpeed
engine, around the :class:`~semconv.finetune.lm.PackedLM`), ``step`` takes one optimizer step over
packed micro-batches, ``save``/``load`` write and read the weights and optimizer of a resume
point. The loop sets the LR on the optimizer's groups before each step, for both.

- :class:`DDP` (CPU over gloo, or GPUs without a DeepSpeed config): our own accumulation loop
  (:func:`~semconv.finetune.step.optimizer_step`); rank 0 saves only the trainable weights.
- :class:`DeepSpeed` (GPUs with ``finetune.deepspeed_config``, ZeRO 0-2): the engine accumulates,
  clips and steps; its checkpoint is collective, every rank writes its optimizer partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from semconv import training
from semconv.finetune.checkpoint import DEEPSPEED_TAG
from semconv.finetune.model import trainable_state
from semconv.finetune.step import autocast, label_count, optimizer_step, packed_loss
from semconv.training import Session


class DDP:
    """Data parallel with PyTorch DDP (``prepare_model``); fp32 master weights, bf16 autocast."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, session: Session, grad_clip: float, bf16: bool):
        self.model, self.optimizer = model, optimizer
        self.session, self.grad_clip, self.bf16 = session, grad_clip, bf16
        self.params = [p for p in model.parameters() if p.requires_grad]
        model.to(session.device)
        self.runner = session.prepare_model(model, move_to_device=False)

    def step(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> tuple[float, int]:
        return optimizer_step(self.runner, micro_batches, self.optimizer, self.params, self.grad_clip,
                              self.bf16, self.session.device)

    def save(self, path: Path) -> None:
        if self.session.rank == 0:  # the LR is a function of the step and time, which the history holds
            training.save_checkpoint(path, trainable_state(self.model), self.optimizer)

    def load(self, path: Path) -> None:
        training.load_weights(path, self.model, partial=True)
        training.load_optimizer(path, self.optimizer)


class DeepSpeed:
    """A DeepSpeed engine (ZeRO 0-2 per the config file): it owns accumulation, clipping, bf16."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, session: Session, config: dict[str, Any], bf16: bool):
        import deepspeed

        self.session, self.bf16 = session, bf16
        model.to(session.device)
        self.runner, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def step(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> tuple[float, int]:
        total = max(1, sum(label_count(b) for b in micro_batches))
        loss_sum = 0.0
        for batch in micro_batches:  # the engine steps the optimizer at its accumulation boundary
            with autocast(self.session.device, self.bf16):
                loss = packed_loss(self.runner, batch, self.session.device)
            # the engine divides by its accumulation steps; scale so the step's loss is the mean per label token
            self.runner.backward(loss * len(micro_batches) / total)
            self.runner.step()
            loss_sum += float(loss.detach())
        return loss_sum / total, total

    def save(self, path: Path) -> None:  # collective: every rank writes its partition
        self.runner.save_checkpoint(str(path), tag=DEEPSPEED_TAG)

    def load(self, path: Path) -> None:
        self.runner.load_checkpoint(str(path), tag=DEEPSPEED_TAG)


def strategy_for(recipe: Any, model: torch.nn.Module, optimizer: Any, session: Session) -> DDP | DeepSpeed:
    """DeepSpeed when the run is on GPUs with a DeepSpeed config (``recipe.deepspeed``), else DDP."""
    if recipe.use_gpu and recipe.deepspeed:
        return DeepSpeed(model, optimizer, session, dict(recipe.deepspeed), bool(recipe.bf16))
    return DDP(model, optimizer, session, recipe.grad_clip, bool(recipe.bf16))

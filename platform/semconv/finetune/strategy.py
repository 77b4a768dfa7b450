"""How one optimizer step runs and how it is checkpointed: plain DDP, or DeepSpeed ZeRO.

The fine-tuning loop (:func:`semconv.finetune.train.train_func`) is the same for both; a strategy
owns what differs. ``runner`` is what forward passes go through (the DDP module, or the DeepSpeed
engine), ``step`` takes one optimizer step over accumulated micro-batches, ``save``/``load`` write
and read the weights and optimizer of a resume point.

- :class:`DDP` (CPU over gloo, or GPUs without a DeepSpeed config): our own accumulation loop
  (:func:`~semconv.finetune.train.optimizer_step`); rank 0 saves only the trainable weights.
- :class:`DeepSpeed` (GPUs with ``finetune.deepspeed_config``, ZeRO 0-2): the engine accumulates,
  clips and steps; its checkpoint is collective, every rank writes its optimizer partition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from semconv.finetune import checkpoint as ckpt
from semconv.training import Session

LossFn = Callable[[Any, dict[str, torch.Tensor], torch.device], torch.Tensor]


class DDP:
    """Data parallel with PyTorch DDP (``prepare_model``); fp32 master weights, bf16 autocast."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, session: Session, grad_clip: float,
                 bf16: bool):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.session, self.grad_clip, self.bf16 = session, grad_clip, bf16
        self.params = [p for p in model.parameters() if p.requires_grad]
        model.to(session.device)
        self.runner = session.prepare_model(model, move_to_device=False)

    def step(self, micro_batches: Sequence[dict[str, torch.Tensor]], loss_fn: LossFn) -> float:
        from semconv.finetune.train import optimizer_step

        return optimizer_step(self.runner, micro_batches, self.optimizer, self.scheduler, self.params,
                              self.grad_clip, self.bf16, self.session.device, loss_fn)

    def save(self, path: Path) -> None:
        if self.session.rank == 0:
            ckpt.save_state(path, self.model, self.optimizer, self.scheduler)

    def load(self, path: Path) -> None:
        ckpt.load_state(path, self.model, self.optimizer, self.scheduler)


class DeepSpeed:
    """A DeepSpeed engine (ZeRO 0-2 per the config file): it owns accumulation, clipping, bf16."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, session: Session, config: dict[str, Any],
                 bf16: bool):
        import deepspeed

        self.session, self.bf16 = session, bf16
        model.to(session.device)
        self.runner, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)

    def step(self, micro_batches: Sequence[dict[str, torch.Tensor]], loss_fn: LossFn) -> float:
        from semconv.finetune.train import autocast

        losses = []
        for batch in micro_batches:  # the engine steps the optimizer at its accumulation boundary
            with autocast(self.session.device, self.bf16):
                loss = loss_fn(self.runner, batch, self.session.device)
            self.runner.backward(loss)
            self.runner.step()
            losses.append(float(loss.detach()))
        return sum(losses) / len(losses)

    def save(self, path: Path) -> None:  # collective: every rank writes its partition
        self.runner.save_checkpoint(str(path), tag=ckpt.DEEPSPEED_TAG)

    def load(self, path: Path) -> None:
        self.runner.load_checkpoint(str(path), tag=ckpt.DEEPSPEED_TAG)


def strategy_for(config: dict[str, Any], model: Any, optimizer: Any, scheduler: Any,
                 session: Session) -> DDP | DeepSpeed:
    """DeepSpeed when the run is on GPUs with a DeepSpeed config (``config["deepspeed"]``), else DDP."""
    if config.get("use_gpu") and config.get("deepspeed"):
        return DeepSpeed(model, optimizer, scheduler, session, config["deepspeed"], bool(config["bf16"]))
    return DDP(model, optimizer, scheduler, session, config["grad_clip"], bool(config["bf16"]))

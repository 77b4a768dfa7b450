"""One optimizer step over packed micro-batches, and the held-out loss.

A step's loss is the mean over every label token of the step (all micro-batches together), so
accumulating micro-batches of different label counts gives the gradient of one big batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from semconv.finetune.packing import EncodedRows, collate_packs
from semconv.hardware import cpu_bf16_supported


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked and supported, else a no-op (fp32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if bf16 and device.type == "cpu" and cpu_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def label_count(batch: dict[str, torch.Tensor]) -> int:
    """Label tokens the loss of a packed batch is taken over (as :class:`~semconv.finetune.lm.PackedLM`)."""
    return int(((batch["labels"][:, 1:] != -100) & (batch["position_ids"][:, 1:] != 0)).sum())


def packed_loss(runner: Any, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Summed label loss of one packed batch through ``runner`` (a PackedLM, or DDP/DeepSpeed around one)."""
    return runner(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})


def optimizer_step(
    runner: Any, micro_batches: Sequence[dict[str, torch.Tensor]], optimizer: Any,
    params: Sequence[torch.nn.Parameter], grad_clip: float, bf16: bool, device: torch.device,
) -> tuple[float, int]:
    """One step over ``micro_batches``; ``(mean loss, label tokens)``. The code-rows-only phase
    needs nothing here: its other groups run at LR 0 (:func:`~semconv.finetune.optim.set_lr`)."""
    total = max(1, sum(label_count(b) for b in micro_batches))
    loss_sum = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(runner, "no_sync") else runner.no_sync()
        with sync:
            with autocast(device, bf16):
                loss = packed_loss(runner, batch, device)
            (loss / total).backward()
        loss_sum += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total, total


@torch.no_grad()
def evaluation_loss(runner: Any, rows: EncodedRows, packs: Sequence[Sequence[int]], pack_len: int, pad_id: int,
                    per_batch: int, bf16: bool, device: torch.device) -> tuple[float, int]:
    """Summed label loss and label-token count over the held-out ``packs`` (callers all-reduce,
    then divide)."""
    was_training = runner.training
    runner.eval()
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(packs), per_batch):
        batch = collate_packs(rows, packs[start : start + per_batch], pack_len, pad_id)
        with autocast(device, bf16):
            loss_sum += float(packed_loss(runner, batch, device))
        tokens += label_count(batch)
    runner.train(was_training)
    return loss_sum, tokens

"""Alignment-task fine-tuning loop: a plain ``train_func(config, session)`` (:mod:`semconv.training`).

Reads top to bottom like the procedure: build base + code tokens + LoRA, read ``sft/``, restore
the latest checkpoint if the run was restarted, then optimizer steps over a deterministic batch
plan with periodic held-out loss, checkpoints and progress reports. How a step runs is the
strategy's (:mod:`semconv.finetune.strategy`): DDP (on CPU over gloo, bf16 autocast with fp32
master weights), or on GPUs with a DeepSpeed config, ZeRO-2 in bf16.

``config`` is a plain dict (built by :func:`semconv.finetune.stage.train_config`), so the same
function runs in one process (``Session()``: tests) or on N Ray workers (:func:`semconv.training.fit`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from semconv.finetune import checkpoint as ckpt
from semconv.finetune.data import BatchPlan, SftExamples, encode_batch, eval_sample, split_examples
from semconv.finetune.model import build_finetune_model
from semconv.finetune.optim import build_optimizer, build_scheduler
from semconv.finetune.strategy import strategy_for
from semconv.hardware import cpu_bf16_supported
from semconv.training import Session


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked and supported, else a no-op (fp32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if bf16 and device.type == "cpu" and cpu_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def label_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is taken over (shifted labels that are not masked)."""
    return int((batch["labels"][:, 1:] != -100).sum())


def masked_logits_supported() -> bool:
    """Whether the installed transformers takes a boolean ``(B, S)`` ``logits_to_keep``."""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


def code_level_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, code_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy where a code-token target competes only with its level's code tokens.

    ``logits`` (N, V), ``targets`` (N,), ``code_ids`` (L, K): the vocabulary ids of the code tokens,
    level-major. A target that is a code token of level ``l`` is scored by a softmax over
    ``code_ids[l]``: the K tokens the constrained beam search chooses among at that step, so the
    loss trains exactly the distribution decoding reads (``semconv.decoding``, ``level``). Other
    targets (EOS, the words of a title) keep the full-vocabulary softmax.
    """
    k = code_ids.shape[1]
    flat = code_ids.reshape(-1).to(logits.device)
    slot = torch.full((logits.shape[-1],), -1, dtype=torch.long, device=logits.device)
    slot[flat] = torch.arange(flat.numel(), device=logits.device)
    slot = slot[targets]
    code = slot >= 0
    total = logits.new_zeros(())
    if code.any():
        rows = flat.view(-1, k)[slot[code] // k]  # (n, K) the target level's code ids
        total = total + torch.nn.functional.cross_entropy(
            logits[code].gather(1, rows), slot[code] % k, reduction="sum")
    if not code.all():
        total = total + torch.nn.functional.cross_entropy(logits[~code], targets[~code], reduction="sum")
    return total / max(targets.numel(), 1)


def label_loss(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device, code_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the label tokens, projecting only those positions.

    Equal to the model's own ``labels=`` loss, but the vocabulary projection (49k+ rows for
    SmolLM2, ~25% of a CPU step) runs on the few label positions (a recommendation label is 4
    codes + EOS) instead of every prompt token: ``logits_to_keep`` with a boolean ``(B, S)``
    mask, which Hugging Face causal LMs take from transformers 5.2x (``slice_logits_to_keep``).
    Older releases index with the mask and fail, so there it falls back to the ``labels=`` loss:
    the same value, at the full projection's cost. With ``code_ids`` (``finetune.code_softmax:
    level``) code-token labels are scored by :func:`code_level_cross_entropy`.
    """
    labels = batch["labels"].to(device)
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    if masked_logits_supported():
        logits = model(**inputs, logits_to_keep=keep).logits
    elif code_ids is None:
        return model(**inputs, labels=labels).loss
    else:
        logits = model(**inputs).logits[keep]
    targets = labels[:, 1:][keep[:, :-1]]
    if code_ids is not None:
        return code_level_cross_entropy(logits.float(), targets, code_ids)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def training_loss(
    code_softmax: str, code_ids: Sequence[int], levels: int,
) -> Callable[[Any, dict[str, torch.Tensor], torch.device], torch.Tensor]:
    """The loss ``finetune.code_softmax`` names: :func:`label_loss` over the whole vocabulary, or
    with code labels normalised over their level (``level``)."""
    if code_softmax == "vocabulary":
        return label_loss
    if code_softmax != "level":
        raise ValueError(f"finetune.code_softmax must be 'level' or 'vocabulary', not {code_softmax!r}")
    table = torch.tensor(list(code_ids), dtype=torch.long).view(levels, -1)
    return functools.partial(label_loss, code_ids=table)


def optimizer_step(
    model: Any, micro_batches: Sequence[dict[str, torch.Tensor]], optimizer: Any, scheduler: Any,
    params: Sequence[torch.nn.Parameter], grad_clip: float, bf16: bool, device: torch.device,
    loss_fn: Callable[[Any, dict[str, torch.Tensor], torch.device], torch.Tensor] | None = None,
) -> float:
    """One optimizer step over ``len(micro_batches)`` accumulated micro-batches; mean loss.
    ``loss_fn`` defaults to :func:`label_loss` (benchmarks pass the full-logits loss)."""
    loss_fn = loss_fn or label_loss
    total = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, bf16):
                loss = loss_fn(model, batch, device)
            (loss / len(micro_batches)).backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(micro_batches)


@torch.no_grad()
def evaluation_loss(
    model: Any, tokenizer: Any, examples: SftExamples, index: Sequence[int], batch_size: int,
    max_len: int, bf16: bool, device: torch.device,
    loss_fn: Callable[[Any, dict[str, torch.Tensor], torch.device], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """Summed label-token loss and token count over ``index`` (callers all-reduce, then divide)."""
    loss_fn = loss_fn or label_loss
    was_training = model.training
    model.eval()
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(index), batch_size):
        batch = encode_batch(tokenizer, examples, index[start : start + batch_size], max_len)
        with autocast(device, bf16):
            loss = loss_fn(model, batch, device)
        n = label_tokens(batch)
        loss_sum += float(loss) * n
        tokens += n
    model.train(was_training)
    return loss_sum, tokens


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _log(rank: int, msg: str) -> None:
    """Progress on the worker's real stdout: Ray Train patches ``print`` to tee into its logger,
    which Ray forwards as well, so a plain ``print`` reached the driver twice."""
    if rank == 0:
        print(f"[finetune] {msg}", file=sys.__stdout__, flush=True)


def train_func(config: dict[str, Any], session: Session) -> None:
    """Fine-tune on ``sft/`` of ``config['run_dir']``; reports and checkpoints through ``session``."""
    rank, world, device = session.rank, session.world, session.device
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(config["seed"])
    bf16 = bool(config["bf16"])

    # model: base + code tokens + LoRA, and the loss finetune.code_softmax names
    model, tokenizer, code_ids = build_finetune_model(
        config["base_path"], config["levels"], config["codes_per_level"], lora=config["lora"],
        sa_init=config.get("sa_init"),
    )
    loss_fn = training_loss(config.get("code_softmax", "vocabulary"), code_ids, config["levels"])

    # data: sft/ rows, a deterministic batch plan, this worker's share of the held-out sample
    from semconv.artifacts import RunDir

    table = RunDir(config["run_dir"]).read_table("sft", columns=["task", "prompt", "label", "split"])
    train, valid = split_examples(table, "train"), split_examples(table, "valid")
    bs, accum, max_len = config["batch_size"], config["grad_accum"], config["max_seq_len"]
    plan = BatchPlan(train.lengths(), bs, config["seed"], config["bucket_by_length"])
    eval_idx = eval_sample(valid, config["eval_samples"], config["seed"])[rank::world]

    # optimizer, schedule (under a time budget it also follows the training seconds), strategy
    budget = config.get("max_train_seconds")
    clock = {"train_s": 0.0}
    optimizer = build_optimizer(model.named_parameters(), config["lr"], config["weight_decay"],
                                config.get("code_token_lr_scale", 1.0))
    scheduler = build_scheduler(optimizer, config["warmup_steps"], config["max_steps"],
                                config["lr_schedule"], config["min_lr_ratio"],
                                progress=(lambda: clock["train_s"] / budget) if budget else None)
    strategy = strategy_for(config, model, optimizer, scheduler, session)
    history = ckpt.new_history()
    if session.restored is not None:
        strategy.load(session.restored)
        history = ckpt.read_history(session.restored)
        history["resumed_from_step"] = session.resumed_from
        _log(rank, f"resumed from step {session.start_step}")
    strategy.runner.train()

    def save(path: Path, final: bool = False) -> None:
        strategy.save(path)
        if rank == 0:
            ckpt.write_history(path, history)
            if final:
                ckpt.save_final(path / ckpt.FINAL, model, tokenizer, final_metrics(history, world))

    time_before, t0 = history["train_time_s"], time.perf_counter()
    clock["train_s"] = time_before
    samples_here = 0
    out_of_time = budget is not None and time_before >= budget
    step = session.start_step
    while step < config["max_steps"] and not out_of_time:
        batches = [encode_batch(tokenizer, train, plan.micro_batch(step, a, accum, rank, world), max_len)
                   for a in range(accum)]
        loss = strategy.step(batches, loss_fn)
        step += 1
        # every worker gets the same mean time, so all stop at the same step under a time budget
        loss, n_samples, elapsed = _all_reduce(
            [loss, float(sum(len(b["input_ids"]) for b in batches)), time.perf_counter() - t0], device)
        loss, elapsed = loss / world, elapsed / world
        samples_here += int(n_samples)
        clock["train_s"] = time_before + elapsed
        out_of_time = budget is not None and clock["train_s"] >= budget
        last = step == config["max_steps"] or out_of_time
        history.update(step=step, samples=history["samples"] + int(n_samples), train_time_s=clock["train_s"])
        history["train_loss"].append(loss)
        history["train_steps"].append(step)
        history["lr"].append(strategy.scheduler.get_last_lr()[0])
        metrics = {"step": step, "train_loss": loss, "lr": history["lr"][-1],
                   "samples_per_s": samples_here / max(elapsed, 1e-9)}
        if out_of_time and step < config["max_steps"]:
            _log(rank, f"time budget of {budget:.0f}s reached after step {step}: finishing here")
        if len(valid) and (step % config["eval_every"] == 0 or last):
            loss_sum, tokens = _all_reduce(list(evaluation_loss(
                strategy.runner, tokenizer, valid, eval_idx, bs, max_len, bf16, device, loss_fn)), device)
            metrics["eval_loss"] = loss_sum / max(tokens, 1)
            history["eval_loss"].append(metrics["eval_loss"])
            history["eval_steps"].append(step)
        if session.report(step, metrics, functools.partial(save, final=last), last=last):
            _log(rank, f"step {step}/{config['max_steps']} loss {loss:.4f} lr {metrics['lr']:.2e} "
                       f"{metrics['samples_per_s']:.2f} samples/s"
                       + (f" eval_loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""))
    session.finish(functools.partial(save, final=True))  # restored after the last step: publish again


def final_metrics(history: dict[str, Any], world: int) -> dict[str, Any]:
    """``train_metrics.json``: losses in step order plus throughput and wall time."""
    out = dict(history)
    out["steps"] = history["step"]
    out["workers"] = world
    out["samples_per_s"] = history["samples"] / history["train_time_s"] if history["train_time_s"] else None
    return out

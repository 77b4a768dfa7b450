"""The Alignment-Tasks fine-tune as one recipe: a typed :class:`Recipe`, in-memory examples, one loop.

:func:`train` reads top to bottom like the procedure: build base + code tokens + LoRA, tokenize and
pack the rows, restore the latest checkpoint if the run was restarted, then optimizer steps over
a deterministic pack plan, with the LR set from the :class:`~semconv.finetune.optim.TrainBudget`
before each step, a periodic held-out loss, checkpoints and progress reports. How a step runs is
the strategy's (:mod:`semconv.finetune.strategy`): DDP (on CPU over gloo, bf16 autocast with fp32
master weights), or on GPUs with a DeepSpeed config, ZeRO-2 in bf16.

It is the same function in one process (``Session()``: tests, ``bench/learning_curve.py``,
``bench/train_throughput.py``) and on N Ray Train workers (:func:`train_func` through
:func:`semconv.training.run_on_ray`); the stage reads ``sft/`` at the edge
(:func:`semconv.finetune.stage.run_finetune`) and hands the rows over in :class:`FinetuneData`.

Options that buy epochs in a CPU budget: ``num_layers`` (the base's first N layers),
``code_rows_first`` (a first phase that trains only the code-token rows, the LLM frozen, as
OpenOneRec and OneRec-Think do), ``method: full``; see ``bench/RESULTS.md`` for their curves.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from semconv import training
from semconv.console import progress
from semconv.finetune import checkpoint as ckpt
from semconv.finetune.data import SftExamples, eval_sample
from semconv.finetune.lm import PackedLM
from semconv.finetune.model import build_finetune_model
from semconv.finetune.optim import CODE_ROWS, TrainBudget, build_optimizer, set_lr
from semconv.finetune.packing import PackPlan, collate_packs, encode_rows, pack_rows
from semconv.finetune.step import evaluation_loss
from semconv.finetune.strategy import strategy_for
from semconv.training import Session


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Recipe:
    """Everything a fine-tune worker needs (built from ``finetune`` by
    :func:`semconv.finetune.stage.recipe_of`); picklable, no Ray, no run directory."""

    base_path: str
    levels: int
    codes_per_level: int
    seed: int = 0
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = LoraSettings()
    num_layers: int | None = None
    sa_init: Mapping[str, Sequence[str]] | None = None
    code_softmax: Literal["level", "vocabulary"] = "level"
    pack_len: int = 256
    batch_size: int = 4  # packed sequences per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    code_token_lr_scale: float = 1.0
    code_rows_first: float = 0.0  # fraction of the budget that trains only the code-token rows
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    budget: TrainBudget = TrainBudget(max_steps=60)
    eval_every: int = 30
    eval_samples: int = 32
    bf16: bool = True
    use_gpu: bool = False
    deepspeed: Mapping[str, Any] | None = None
    threads: int | None = None
    name: str = "finetune"  # its progress bar and log lines: the scratch baseline runs this loop too

    @property
    def whole_model(self) -> bool:
        """``model/`` holds the merged model (a shallower base, or every weight trained)."""
        return self.num_layers is not None or self.method == "full"


@dataclass(frozen=True)
class FinetuneData:
    """The ``sft/`` rows the loop trains on and evaluates on, in memory."""

    train: SftExamples
    valid: SftExamples = field(default_factory=lambda: SftExamples([], []))


Probe = Callable[[int, float, Any, Any], None]
"""``probe(step, train_seconds, model, tokenizer)``: runs on rank 0 after every step, outside the
training clock; it decides itself when to act (``bench/learning_curve.py`` decodes valid users
every N seconds of training). The model is handed back in train mode."""


@dataclass
class Trained:
    """What :func:`train` leaves in memory: the history, and the model and tokenizer it trained."""

    history: dict[str, Any]
    model: Any
    tokenizer: Any


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _log(rank: int, name: str, msg: str) -> None:
    """Progress on the worker's real stdout: Ray Train patches ``print`` to tee into its logger,
    which Ray forwards as well, so a plain ``print`` reached the driver twice."""
    if rank == 0:
        print(f"[{name}] {msg}", file=sys.__stdout__, flush=True)


def _expected_steps(budget: TrainBudget, step: int, seconds: float) -> int:
    """The step the loop will stop at: ``max_steps``, or sooner at this pace when time runs out first."""
    used = budget.progress(step, seconds)
    return budget.max_steps if used <= 0 else min(budget.max_steps, max(step, round(step / used)))


def build_model(recipe: Recipe) -> tuple[PackedLM, Any]:
    """The trainable model (a :class:`PackedLM` around base + code tokens + LoRA) and its tokenizer."""
    training.seed_everything(recipe.seed)
    model, tokenizer, code_ids = build_finetune_model(
        recipe.base_path, recipe.levels, recipe.codes_per_level, lora=vars(recipe.lora) | {
            "target_modules": list(recipe.lora.target_modules)},
        sa_init=recipe.sa_init, num_layers=recipe.num_layers, method=recipe.method)
    return PackedLM(model, code_ids, recipe.levels, recipe.code_softmax), tokenizer


def train(recipe: Recipe, data: FinetuneData, session: Session, probes: Sequence[Probe] = ()) -> Trained:
    """Fine-tune on ``data``; reports and checkpoints through ``session``."""
    rank, world, device = session.rank, session.world, session.device
    if recipe.threads:
        torch.set_num_threads(int(recipe.threads))
    lm, tokenizer = build_model(recipe)

    # data: every row tokenized once, packed in a seeded order; this worker's share of the held-out rows
    train_rows = encode_rows(tokenizer, data.train, recipe.pack_len)
    plan = PackPlan(train_rows.lengths(), recipe.pack_len, recipe.seed)
    valid_rows = encode_rows(tokenizer, data.valid, recipe.pack_len)
    held_out = eval_sample(len(valid_rows), recipe.eval_samples, recipe.seed)[rank::world]
    eval_packs = pack_rows(valid_rows.lengths(), held_out, recipe.pack_len)
    pad = tokenizer.pad_token_id

    optimizer = build_optimizer(lm.named_parameters(), recipe.lr, recipe.weight_decay, recipe.code_token_lr_scale)
    strategy = strategy_for(recipe, lm, optimizer, session)
    history = ckpt.new_history()
    if session.restored is not None:
        strategy.load(session.restored)
        history = training.load_state(session.restored)
        history["resumed_from_step"] = session.resumed_from
        _log(rank, recipe.name, f"resumed from step {session.start_step}")
    strategy.runner.train()
    _log(rank, recipe.name, f"{len(train_rows)} rows ({plan.tokens_per_epoch} tokens) in {plan.per_epoch} packs of "
               f"{recipe.pack_len} per epoch, {recipe.batch_size * recipe.grad_accum * world} packs a step")

    def save(path: Path, final: bool = False) -> None:
        strategy.save(path)
        if rank == 0:
            training.save_checkpoint(path, state=history)
            if final:
                ckpt.save_final(path / ckpt.FINAL, lm.model, tokenizer, final_metrics(history, world, plan),
                                whole=recipe.whole_model)

    budget, step = recipe.budget, session.start_step
    seconds = history["train_time_s"]
    bar = progress(recipe.name, budget.max_steps, "step", initial=step) if rank == 0 else None
    while not budget.done(step, seconds):
        only = CODE_ROWS if budget.progress(step, seconds) < recipe.code_rows_first else None
        lr = set_lr(optimizer, budget.lr_factor(step, seconds), only)
        packs = [plan.micro_batch(step, a, recipe.grad_accum, rank, world, recipe.batch_size)
                 for a in range(recipe.grad_accum)]
        t0 = time.perf_counter()
        loss, labels = strategy.step([collate_packs(train_rows, p, recipe.pack_len, pad) for p in packs])
        tokens = sum(len(train_rows.ids[i]) for micro in packs for pack in micro for i in pack)
        rows = sum(len(pack) for micro in packs for pack in micro)
        # every worker gets the same mean time, so all stop at the same step under a time budget
        loss, labels, tokens, rows, elapsed = _all_reduce(
            [loss * labels, float(labels), float(tokens), float(rows), time.perf_counter() - t0], device)
        loss, seconds = loss / max(labels, 1), seconds + elapsed / world
        step += 1
        last = budget.done(step, seconds)
        history.update(step=step, tokens=history["tokens"] + int(tokens), samples=history["samples"] + int(rows),
                       train_time_s=seconds)
        history["train_loss"].append(loss)
        history["train_steps"].append(step)
        history["lr"].append(lr)
        metrics = {"step": step, "train_loss": loss, "lr": lr, "tokens_per_s": history["tokens"] / max(seconds, 1e-9),
                   "epoch": step * recipe.batch_size * recipe.grad_accum * world / plan.per_epoch}
        if last and step < budget.max_steps:
            _log(rank, recipe.name,
                 f"time budget of {budget.max_seconds:.0f}s reached after step {step}: finishing here")
        if (step % recipe.eval_every == 0 or last) and len(valid_rows):  # every rank, or all_reduce hangs
            loss_sum, count = _all_reduce(list(evaluation_loss(
                strategy.runner, valid_rows, eval_packs, recipe.pack_len, pad, recipe.batch_size,
                recipe.bf16, device)), device)
            if count:
                metrics["eval_loss"] = loss_sum / count
                history["eval_loss"].append(metrics["eval_loss"])
                history["eval_steps"].append(step)
        if rank == 0 and probes:
            for probe in probes:
                probe(step, seconds, lm.model, tokenizer)
            strategy.runner.train()
        if session.report(step, metrics, functools.partial(save, final=last), last=last):
            _log(rank, recipe.name,
                 f"step {step}/{budget.max_steps} loss {loss:.4f} lr {lr:.2e} epoch {metrics['epoch']:.2f} "
                 f"{metrics['tokens_per_s']:.0f} tokens/s"
                 + (f" eval_loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""))
        if bar is not None:
            bar.total = _expected_steps(budget, step, seconds)
            bar.set_postfix_str(f"loss {loss:.3f}" + (f", eval {history['eval_loss'][-1]:.3f}"
                                                      if history["eval_loss"] else ""), refresh=False)
            bar.update()
    if bar is not None:
        bar.total = step
        bar.close()
    session.finish(functools.partial(save, final=True))  # restored after the last step: publish again
    return Trained(history, lm.model, tokenizer)


def train_func(config: dict[str, Any], session: Session) -> None:
    """The Ray Train entry point: ``config`` holds ``recipe`` and ``data`` (:func:`train`)."""
    train(config["recipe"], config["data"], session)


def final_metrics(history: dict[str, Any], world: int, plan: PackPlan | None = None) -> dict[str, Any]:
    """``train_metrics.json``: losses in step order plus throughput and wall time."""
    out = dict(history)
    out["steps"] = history["step"]
    out["workers"] = world
    seconds = history["train_time_s"]
    out["tokens_per_s"] = history["tokens"] / seconds if seconds else None
    out["samples_per_s"] = history["samples"] / seconds if seconds else None
    if plan is not None:
        out["epochs"] = history["tokens"] / max(plan.tokens_per_epoch, 1)
    return out

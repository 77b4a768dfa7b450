"""One Ray Train harness for the three trainers (codebook, LightGCN, LoRA fine-tune).

A trainer is a plain ``train_func(config, session)``: it builds its model, resumes from
``session.restored`` when there is one, loops from ``session.start_step``, calls
``session.report(step, metrics, save, last)`` after every step and ``session.finish(save)`` at the
end. The :class:`Session` decides the rest, once for all three:

- **cadence**: a checkpoint every ``checkpoint_every`` steps and at the last step; metrics every
  ``report_every`` steps (``None``: only with checkpoints, since each ``ray.train.report`` waits for
  the controller's next poll, about 2 s, which would dominate a small epoch);
- **resume**: every checkpoint carries ``progress.json`` (the step it was taken after and the steps
  earlier attempts resumed from), so a restarted worker group starts after the last checkpointed
  step. A run restored after its last step runs no step, and ``finish`` checkpoints the final state
  again, so the run's latest checkpoint is always the final one;
- **callbacks**: ``after_step(step, rank)`` callables run on every worker after each step. Nothing in
  the package installs one; tests do, with :func:`callbacks`, to kill a worker mid-run.

``save(path)`` runs on every worker (DeepSpeed's checkpoint is collective); each trainer writes its
files from rank 0 only unless its strategy says otherwise. The same ``train_func`` runs in one
process with a plain ``Session()`` (checkpoints in ``checkpoint_dir``, or none) or on N Ray Train
workers through :func:`run_on_ray`, which gives each worker a :class:`RaySession`.

What a checkpoint holds is also decided here, once: :func:`save_checkpoint` writes the model the
``save_pretrained`` way (``model.safetensors``, plus ``config.json`` for a model that saves itself),
the optimizer's state and the trainer's JSON state; :func:`load_weights`, :func:`load_optimizer`
and :func:`load_state` read them back. :func:`unwrap` and :func:`seed_everything` are the other two
things every trainer needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROGRESS = "progress.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "trainer_state.json"

StepCallback = Callable[[int, int], None]
"""``after_step(step, rank)``: runs on every worker after each step's report."""
Save = Callable[[Path], None]
"""Writes this worker's part of a checkpoint into a directory."""

_CALLBACKS: contextvars.ContextVar[tuple[StepCallback, ...]] = contextvars.ContextVar(
    "semconv_training_callbacks", default=())


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA's too), the same on every rank:
    model initialisations that draw from them start alike, and rank 0's broadcast changes nothing."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP (or DeepSpeed) wrapper; ``model`` itself when it is not wrapped."""
    return model.module if isinstance(getattr(model, "module", None), torch.nn.Module) else model


def save_checkpoint(path: Path, model: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, state: Mapping[str, Any] | None = None) -> None:
    """Write a resume point into ``path``: each part given, in a file that loads without unpickling
    code (safetensors, a tensors-only ``torch.save``, JSON).

    ``model``: a module with ``save_pretrained`` saves itself (the codebook: ``config.json`` +
    ``model.safetensors``); another module's ``state_dict``, or a mapping of only the tensors that
    learn (the fine-tune's LoRA and code rows), goes to ``model.safetensors``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, torch.nn.Module) and hasattr(model, "save_pretrained"):
        model.save_pretrained(path)
    elif model is not None:
        tensors = model.state_dict() if isinstance(model, torch.nn.Module) else model
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path / WEIGHTS))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), path / OPTIMIZER)
    if state is not None:
        (path / STATE).write_text(json.dumps(state))


def load_weights(path: Path, model: torch.nn.Module, partial: bool = False) -> None:
    """Copy the checkpoint's ``model.safetensors`` into ``model`` in place (parameter objects, and
    so an optimizer built on them, stay valid). ``partial``: the checkpoint holds only some of the
    model's tensors (the trainable ones); a tensor the model lacks is an error either way."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(path) / WEIGHTS))
    own = model.state_dict(keep_vars=True)
    unknown = sorted(set(weights) - set(own))
    missing = [] if partial else sorted(set(own) - set(weights))
    if unknown or missing:
        raise RuntimeError(f"checkpoint {path} does not fit the model: "
                           + (f"it holds {unknown[0]!r}, which the model lacks" if unknown
                              else f"it lacks the model's {missing[0]!r}"))
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value)


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer's state (tensors and numbers only: ``weights_only=True``)."""
    optimizer.load_state_dict(torch.load(Path(path) / OPTIMIZER, weights_only=True))


def load_state(path: Path) -> dict[str, Any]:
    """The trainer's JSON state (histories, counters) saved with the checkpoint."""
    return json.loads((Path(path) / STATE).read_text())


@contextlib.contextmanager
def callbacks(*hooks: StepCallback) -> Iterator[None]:
    """Run ``hooks`` on every worker of each :func:`run_on_ray` started inside this block.

    The seam for fault injection: a test kills a worker from here, so neither the trainers nor
    their configs (and the fingerprints built from them) carry anything for it. Hooks travel to
    the workers pickled with the worker function (cloudpickle), never in ``train_loop_config``.
    """
    token = _CALLBACKS.set(_CALLBACKS.get() + hooks)
    try:
        yield
    finally:
        _CALLBACKS.reset(token)


@dataclass
class Session:
    """What a training loop needs from its runner: rank, device, resume point and reporting.

    In one process (tests, notebooks) checkpoints go to ``checkpoint_dir/checkpoint_<step>``
    when it is set and are skipped otherwise; pass ``restored`` to resume from one of them.
    """

    rank: int = 0
    world: int = 1
    checkpoint_every: int = 1
    report_every: int | None = None
    restored: Path | None = None
    callbacks: Sequence[StepCallback] = ()
    checkpoint_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    start_step: int = field(init=False, default=0)
    resumed_from: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.restored is not None:
            progress = json.loads((Path(self.restored) / PROGRESS).read_text())
            self.start_step = int(progress["step"])
            self.resumed_from = [*progress["resumed_from"], self.start_step]
        self.step = self.start_step
        self._final_saved = False

    def prepare_model(self, model: torch.nn.Module, move_to_device: bool = True) -> torch.nn.Module:
        """The module forward passes go through: ``model`` itself in one process."""
        return model.to(self.device) if move_to_device else model

    def report(self, step: int, metrics: dict[str, Any], save: Save, last: bool = False) -> bool:
        """After step ``step`` (1-based): checkpoint and/or report per the cadence, then run the
        callbacks. ``last``: the loop ends here. Returns whether anything was published."""
        self.step = step
        checkpoint = last or step % self.checkpoint_every == 0
        published = checkpoint or bool(self.report_every and step % self.report_every == 0)
        if published:
            self._publish(step, metrics, save if checkpoint else None)
        self._final_saved = self._final_saved or last
        for hook in self.callbacks:
            hook(step, self.rank)
        return published

    def finish(self, save: Save) -> None:
        """Checkpoint the final state if this attempt has not: it ran no step (restored after
        the last one, or nothing to train), so the run still ends on its final checkpoint."""
        if not self._final_saved:
            self._publish(self.step, {"step": self.step}, save)
            self._final_saved = True

    def _write(self, path: Path, step: int, save: Save) -> bool:
        """``save`` plus ``progress.json`` (rank 0) into ``path``; whether it holds any file."""
        save(path)
        if self.rank == 0:
            (path / PROGRESS).write_text(json.dumps({"step": step, "resumed_from": self.resumed_from}))
        return any(path.iterdir())

    def _publish(self, step: int, metrics: dict[str, Any], save: Save | None) -> None:
        if save is not None and self.checkpoint_dir is not None:
            path = Path(self.checkpoint_dir) / f"checkpoint_{step:06d}"
            path.mkdir(parents=True, exist_ok=True)
            self._write(path, step, save)


@dataclass
class RaySession(Session):
    """A :class:`Session` on a Ray Train worker: DDP through ``prepare_model`` and
    ``ray.train.report`` with a checkpoint written to a temporary directory."""

    def prepare_model(self, model: torch.nn.Module, move_to_device: bool = True) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=move_to_device)

    def _publish(self, step: int, metrics: dict[str, Any], save: Save | None) -> None:
        import ray.train

        if save is None:  # metrics only: no checkpoint directory to write
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="semconv-ckpt-") as tmp:
            has_files = self._write(Path(tmp), step, save)
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if has_files else None
            ray.train.report(metrics, checkpoint=checkpoint)


def _run_worker(
    train_func: Callable[[dict[str, Any], Session], Any], hooks: tuple[StepCallback, ...],
    checkpoint_every: int, report_every: int | None, config: dict[str, Any],
) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as restored:
        session = RaySession(
            rank=ctx.get_world_rank(), world=ctx.get_world_size(), checkpoint_every=checkpoint_every,
            report_every=report_every, restored=Path(restored) if restored else None, callbacks=hooks,
            device=ray.train.torch.get_device(),
        )
        train_func(config, session)


def run_on_ray(
    train_func: Callable[[dict[str, Any], Session], Any], config: dict[str, Any], *, name: str,
    storage_path: str, num_workers: int, checkpoint_every: int, report_every: int | None = None,
    use_gpu: bool = False, cpus_per_worker: int | None = None, max_failures: int = 2,
) -> Any:
    """Run ``train_func`` on ``num_workers`` Ray Train workers (DDP over gloo, or NCCL on GPUs).

    Checkpoints go to ``<storage_path>/<name>``; a failed worker group restarts from the latest
    one (``max_failures`` times), and a new run with the same name resumes there. Returns the
    ``ray.train.Result``, whose checkpoint is the final one.
    """
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from semconv.ray_env import train_run_config

    worker = functools.partial(_run_worker, train_func, _CALLBACKS.get(), checkpoint_every, report_every)
    trainer = TorchTrainer(
        worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker} if cpus_per_worker else None),
        run_config=train_run_config(name, storage_path, max_failures),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training {name} failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training {name} under {storage_path} finished without a checkpoint")
    return result

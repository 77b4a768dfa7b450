"""Training LightGCN with BPR: a plain loop, a Ray Train ``train_func`` around it, and the trainer.

``train_loop`` is the whole procedure and runs in one process (unit tests) or as one of N DDP
workers. Every worker draws the *same* seeded permutation and negatives each epoch and takes its
strided share of each global batch; each worker's loss is scaled so that DDP's gradient average
equals the gradient of the global batch mean. So N workers follow the same trajectory as one
(up to float summation order), and a run is deterministic given the seed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from semconv.embed.cf import LightGCN, bpr_loss, normalized_adjacency

STATE_NAME = "trainer_state.json"
OPTIM_NAME = "optimizer.pt"
WEIGHTS_NAME = "model.safetensors"

EpochHook = Callable[[int, float, LightGCN, torch.optim.Optimizer, list[float]], None]


def train_loop(
    config: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    resume: dict[str, Any] | None = None,
    on_epoch: EpochHook | None = None,
) -> tuple[LightGCN, list[float]]:
    """Train LightGCN on ``config["users"], config["items"]`` edges; returns (model, epoch losses).

    ``resume`` is :func:`load_checkpoint`'s output; ``on_epoch(epoch, loss, model, opt, losses)``
    runs after each epoch (the Ray wrapper reports and checkpoints there).
    """
    c = config
    users = torch.tensor(np.asarray(c["users"]), dtype=torch.int64)  # a copy: Ray's arrays are read-only
    items = torch.tensor(np.asarray(c["items"]), dtype=torch.int64)
    model = LightGCN(c["num_users"], c["num_items"], c["dim"], c["layers"], seed=c["seed"])
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    start, losses = 0, []
    if resume is not None:
        with torch.no_grad():
            model.embedding.copy_(resume["embedding"])
        opt.load_state_dict(resume["optimizer"])
        start, losses = resume["epoch"], list(resume["losses"])
    net = wrap(model)
    adj = normalized_adjacency(users.numpy(), items.numpy(), c["num_users"], c["num_items"])
    n, bsz = len(users), c["batch_size"]
    for epoch in range(start, c["epochs"]):
        gen = torch.Generator().manual_seed(c["seed"] * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        negs = torch.randint(c["num_items"], (n,), generator=gen)
        total = torch.zeros(())
        for s in range(0, n, bsz):
            idx, neg = perm[s : s + bsz], negs[s : s + bsz]
            mine = slice(rank, None, world_size)
            local = bpr_loss(net, adj, users[idx][mine], items[idx][mine], neg[mine],
                             c["weight_decay"], denom=len(idx))
            opt.zero_grad(set_to_none=True)
            (local * world_size).backward()
            opt.step()
            total += local.detach() * len(idx)
        if world_size > 1:
            torch.distributed.all_reduce(total)
        losses.append(float(total) / n)
        if on_epoch is not None:
            on_epoch(epoch, losses[-1], model, opt, losses)
    return model, losses


def save_checkpoint(path: str | Path, model: LightGCN, opt: torch.optim.Optimizer, losses: list[float]) -> None:
    path = Path(path)
    save_file({"embedding": model.embedding.detach().contiguous()}, str(path / WEIGHTS_NAME))
    torch.save(opt.state_dict(), path / OPTIM_NAME)
    (path / STATE_NAME).write_text(json.dumps({"epoch": len(losses), "losses": losses}))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state = json.loads((path / STATE_NAME).read_text())
    return {
        "embedding": load_file(str(path / WEIGHTS_NAME))["embedding"],
        "optimizer": torch.load(path / OPTIM_NAME, weights_only=True),
        **state,
    }


def train_func(config: dict[str, Any]) -> None:
    """Ray Train entry point: DDP over the workers; report + checkpoint every ``checkpoint_every``."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ckpt = ray.train.get_checkpoint()
    resume = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_checkpoint(d)

    reported = []

    def on_epoch(epoch: int, loss: float, model: LightGCN, opt: torch.optim.Optimizer, losses: list[float]) -> None:
        # Reports only with checkpoints: each report waits for the controller's next poll
        # (about 2 s), which would dominate a small epoch.
        if (epoch + 1) % config["checkpoint_every"] and epoch + 1 != config["epochs"]:
            return
        reported.append(epoch)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(tmp, model, opt, losses)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch + 1, "loss": loss}, checkpoint=checkpoint)

    wrap = (lambda m: DistributedDataParallel(m)) if world > 1 else (lambda m: m)
    model, losses = train_loop(config, rank, world, wrap=wrap, resume=resume, on_epoch=on_epoch)
    if not reported and resume is not None:  # resumed a finished run: report its final state again
        opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
        opt.load_state_dict(resume["optimizer"])
        on_epoch(config["epochs"] - 1, losses[-1], model, opt, losses)


def fit_cf(
    config: dict[str, Any], num_workers: int, cpus_per_worker: int, storage_path: str, name: str
) -> dict[str, Any]:
    """Run :func:`train_func` as a ``TorchTrainer`` job; return the final checkpoint's state.

    Checkpoints go to ``<storage_path>/<name>``; a re-run with the same name resumes from them.
    """
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from semconv.ray_env import train_run_config

    trainer = TorchTrainer(
        train_func,
        train_loop_config=config,
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=train_run_config(name, storage_path, max_failures=2),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"CF training {name} finished without a checkpoint in {storage_path}")
    with result.checkpoint.as_directory() as d:
        return load_checkpoint(d)

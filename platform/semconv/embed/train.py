"""Training LightGCN with BPR: one loop that runs in one process or on N Ray Train workers.

:func:`train_func` is the whole procedure; it takes a :class:`semconv.training.Session` (a plain
one in unit tests, a Ray one under :func:`train_lightgcn`) for its rank, resume point and
checkpoints. Every worker draws the *same* seeded permutation and negatives each epoch and takes its
strided share of each global batch; each worker's loss is scaled so that DDP's gradient average
equals the gradient of the global batch mean. So N workers follow the same trajectory as one (up to
float summation order), and a run is deterministic given the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from semconv import training
from semconv.embed.cf import LightGCN, bpr_loss, normalized_adjacency
from semconv.training import Session


def train_func(config: dict[str, Any], session: Session | None = None) -> tuple[LightGCN, list[float]]:
    """Train LightGCN on ``config["users"], config["items"]`` edges; returns (model, epoch losses).

    Without ``session``: one process, no checkpoints. Reports and checkpoints go through the
    session, at the cadence it was given (:func:`train_lightgcn` passes ``config["checkpoint_every"]``).
    """
    c = config
    session = session or Session()
    rank, world_size = session.rank, session.world
    training.seed_everything(c["seed"])
    users = torch.tensor(np.asarray(c["users"]), dtype=torch.int64)  # a copy: Ray's arrays are read-only
    items = torch.tensor(np.asarray(c["items"]), dtype=torch.int64)
    model = LightGCN(c["num_users"], c["num_items"], c["dim"], c["layers"], seed=c["seed"])
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"])
    losses: list[float] = []
    if session.restored is not None:
        training.load_weights(session.restored, model)
        training.load_optimizer(session.restored, opt)
        losses = list(training.load_state(session.restored)["losses"])

    def save(path: Path) -> None:
        if rank == 0:
            training.save_checkpoint(path, model, opt, {"losses": losses})

    net = session.prepare_model(model)
    adj = normalized_adjacency(users.numpy(), items.numpy(), c["num_users"], c["num_items"])
    n, bsz = len(users), c["batch_size"]
    for epoch in range(session.start_step, c["epochs"]):
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
        session.report(epoch + 1, {"epoch": epoch + 1, "loss": losses[-1]}, save, last=epoch + 1 == c["epochs"])
    session.finish(save)
    return model, losses


def train_lightgcn(
    config: dict[str, Any], num_workers: int, cpus_per_worker: int, storage_path: str, name: str
) -> tuple[LightGCN, list[float]]:
    """Run :func:`train_func` on ``num_workers`` Ray Train workers; return the model and epoch losses
    of the final checkpoint. Checkpoints go to ``<storage_path>/<name>``; a re-run with the same name
    resumes from them."""
    result = training.run_on_ray(
        train_func, config, name=name, storage_path=storage_path, num_workers=num_workers,
        checkpoint_every=config["checkpoint_every"], cpus_per_worker=cpus_per_worker, max_failures=2,
    )
    model = LightGCN(config["num_users"], config["num_items"], config["dim"], config["layers"])
    with result.checkpoint.as_directory() as d:
        training.load_weights(Path(d), model)
        return model, training.load_state(Path(d))["losses"]

"""Codebook training: a ``train_func(config, session)`` that Ray Train runs on N DDP workers, and
a plain ``Session()`` runs in this process (``tokenize.num_workers: 0``, tests) with the same maths.

Each worker reads the inputs, takes its shard (padded to equal length, like
``DistributedSampler``, so every worker takes the same number of steps), and rank 0 runs the
faiss k-means initialisation; DDP then broadcasts rank 0's codebook to every worker. At every
epoch end, code usage and high-error residuals are reduced over workers so every worker
re-seeds the same dead codes. Rank 0 writes a checkpoint (``save_pretrained`` + optimizer
state + history, :func:`semconv.training.save_checkpoint`) every ``checkpoint_every`` epochs; after
a worker failure the harness restarts the group and resumes after the last checkpointed epoch
instead of starting over.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semconv import training
from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook
from semconv.tokenize.config import TokenizeConfig
from semconv.tokenize.losses import total_loss
from semconv.training import Session


def build_codebook(cfg: TokenizeConfig, dim: int, d_llm: int) -> ResidualCodebook:
    """An uninitialised codebook shaped by the stage config (``d_llm=0``: no LLM alignment)."""
    return ResidualCodebook(
        CodebookConfig(
            dim=dim, levels=cfg.levels, codes_per_level=cfg.codes_per_level,
            distance=cfg.distance, commitment_weight=cfg.commitment_weight,
            d_llm=d_llm if cfg.llm_alignment else 0, llm_distance=cfg.llm_distance,
            encoder_decoder=cfg.encoder_decoder, hidden_dim=cfg.ed_hidden_dim,
            latent_dim=cfg.ed_latent_dim,
        )
    )


def shard_indices(n: int, rank: int, world: int, seed: int) -> np.ndarray:
    """This worker's items: a seeded permutation split round-robin, padded to ``ceil(n/world)``."""
    perm = np.random.default_rng(seed).permutation(n)
    per = math.ceil(n / world)
    padded = np.concatenate([perm, perm[: per * world - n]])
    return padded[rank::world]


@torch.no_grad()
def codebook_stats(model: ResidualCodebook, x: torch.Tensor, chunk: int = 65536):
    """Per level: code usage ``(L, K)``, and the ``K`` highest-error inputs with their errors.

    One pass over ``chunk``-row pieces keeping only the running top ``K`` per level, so memory
    is ``O(chunk + K)`` rows, not ``(n, L, d)``; the same ``K`` errors as one global top-k (which
    of several exactly equal errors is kept may differ between chunkings).
    """
    L, K = model.config.levels, model.config.codes_per_level
    usage = torch.zeros(L, K, dtype=torch.int64, device=x.device)
    cand = cerr = None  # (L, m, d), (L, m): the highest-error inputs so far
    for s in range(0, len(x), chunk):
        q = model(x[s : s + chunk])
        for l in range(L):
            usage[l] += torch.bincount(q.codes[:, l], minlength=K)
        errors = (q.residuals - q.selected).pow(2).sum(-1).T  # (L, c)
        residuals = q.residuals.transpose(0, 1)  # (L, c, d)
        if cand is not None:
            errors, residuals = torch.cat([cerr, errors], 1), torch.cat([cand, residuals], 1)
        top = torch.topk(errors, min(K, errors.shape[1]), dim=1).indices  # (L, m)
        cand = torch.stack([residuals[l, top[l]] for l in range(L)])
        cerr = torch.gather(errors, 1, top)
    m = cand.shape[1]
    if m < K:  # pad so every worker contributes equally shaped tensors
        cand = torch.cat([cand, cand.new_zeros(L, K - m, cand.shape[-1])], 1)
        cerr = torch.cat([cerr, cerr.new_full((L, K - m), -math.inf)], 1)
    return usage, cand, cerr


def _gather(t: torch.Tensor, world: int) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=1)


def reseed_across_workers(model: ResidualCodebook, x: torch.Tensor, world: int) -> int:
    """Reduce usage and candidates over workers, then re-seed dead codes identically everywhere."""
    import torch.distributed as dist

    usage, cand, cerr = codebook_stats(model, x)
    if world > 1:
        dist.all_reduce(usage)
        cand, cerr = _gather(cand, world), _gather(cerr, world)
    return model.reseed_dead_codes(usage, cand, cerr)


def run_epoch(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor | None,
    cfg: TokenizeConfig, epoch: int, seed: int, rank: int = 0, world: int = 1,
) -> dict[str, float]:
    """One pass over this worker's items, then (except after the last epoch) dead-code re-seeding."""
    core = training.unwrap(model)
    steps = math.ceil(len(x) / cfg.batch_size)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    sums: dict[str, float] = {}
    for b in range(steps):
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        loss, parts = total_loss(model, x[idx], None if t is None else t[idx], cfg.llm_alignment_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v / steps
    moved = 0
    if cfg.reseed_dead_codes and epoch + 1 < cfg.epochs:
        moved = reseed_across_workers(core, x, world)
    return {"epoch": epoch + 1, "reseeded": moved, **sums}


def _inputs(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    if "embeddings" in config:
        return config["embeddings"], config.get("text_embeddings")
    from semconv.artifacts import RunDir
    from semconv.tokenize.inputs import load_inputs

    cfg = TokenizeConfig(**config["tokenize"])
    inputs = load_inputs(RunDir(config["run_dir"]), need_text=cfg.llm_alignment)
    return inputs.embeddings, inputs.text_embeddings


def train_func(config: dict[str, Any], session: Session | None = None) -> tuple[ResidualCodebook, list[dict]]:
    """The worker loop (see :mod:`semconv.training`); returns this worker's codebook and history.
    ``config``: ``tokenize`` (dict), ``seed``, and either ``run_dir`` or ``embeddings`` [+
    ``text_embeddings``] arrays. Without ``session``: one process on the CPU, no checkpoints."""
    cfg = TokenizeConfig(**config["tokenize"])
    seed = int(config.get("seed", 0))
    session = session or Session()
    rank, world = session.rank, session.world
    training.seed_everything(seed)

    emb, text = _inputs(config)
    d_llm = text.shape[1] if (text is not None and cfg.llm_alignment) else 0
    model = build_codebook(cfg, emb.shape[1], d_llm)
    history: list[dict] = []
    if session.restored is not None:
        training.load_weights(session.restored, model)
        history = training.load_state(session.restored)["history"]
    elif rank == 0:
        model.kmeans_init(emb, cfg.kmeans_iters, seed, cfg.kmeans_max_points, cfg.use_gpu)

    ddp = session.prepare_model(model)  # DDP (world > 1) broadcasts rank 0's weights
    core = training.unwrap(ddp)
    opt = torch.optim.Adam(core.parameters(), lr=cfg.lr)
    if session.restored is not None:  # after prepare_model: the state lands on the model's device
        training.load_optimizer(session.restored, opt)

    def save(path: Path) -> None:
        if rank == 0:
            training.save_checkpoint(path, core, opt, {"history": history})

    shard = shard_indices(len(emb), rank, world, seed)
    x = torch.as_tensor(emb[shard], dtype=torch.float32, device=session.device)
    t = torch.as_tensor(text[shard], dtype=torch.float32, device=session.device) if d_llm else None
    del emb, text  # this worker's shard is all it needs now (a million items: ~0.4 GB freed)
    for epoch in range(session.start_step, cfg.epochs):
        metrics = run_epoch(ddp, opt, x, t, cfg, epoch, seed, rank, world)
        metrics["start_epoch"] = session.start_step
        history.append(metrics)
        session.report(epoch + 1, metrics, save, last=epoch + 1 == cfg.epochs)
    session.finish(save)  # epochs == 0 publishes the k-means init
    return core, history


def train_codebook(
    cfg: TokenizeConfig, storage_path: str, name: str, *, run_dir: str | None = None,
    embeddings: np.ndarray | None = None, text_embeddings: np.ndarray | None = None, seed: int = 0,
) -> tuple[ResidualCodebook, list[dict]]:
    """Run :func:`train_func` on ``cfg.num_workers`` Ray Train workers; return the trained codebook
    and history. Checkpoints go to ``<storage_path>/<name>``; a new call with the same name resumes
    there."""
    loop: dict[str, Any] = {"tokenize": cfg.model_dump(), "seed": seed}
    if embeddings is not None:
        loop.update(embeddings=embeddings, text_embeddings=text_embeddings)
    elif run_dir is not None:
        loop["run_dir"] = run_dir
    else:
        raise ValueError("train_codebook needs run_dir or embeddings")
    result = training.run_on_ray(
        train_func, loop, name=name, storage_path=storage_path, num_workers=cfg.num_workers,
        checkpoint_every=cfg.checkpoint_every, report_every=1, use_gpu=cfg.use_gpu,
        max_failures=cfg.max_failures,
    )
    with result.checkpoint.as_directory() as d:
        return ResidualCodebook.from_pretrained(d), training.load_state(Path(d))["history"]

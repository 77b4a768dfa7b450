"""The ``embed`` stage: ``items/`` + ``sequences/`` + ``splits/`` -> ``item_emb/`` (behaviour) + ``item_text_emb/``.

``item_emb/`` holds the user's own recommender's vectors when ``embed.item_embeddings`` is set;
otherwise LightGCN is trained on the train split (Ray Train) and the artifact also carries the
model (``cf_model/``, the evaluate stage's CF baseline through :func:`recommend_topk`, scored
there with every other system) and its training log (``metrics.json``). Each artifact is skipped
when already complete (the pipeline deletes both first when the stage's config or inputs
changed, :mod:`semconv.lineage`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from semconv.artifacts import RunDir
from semconv.config import PipelineConfig
from semconv.embed.cf import CFRecommender, normalized_adjacency, train_pairs
from semconv.embed.supplied import embedding_table, load_item_embeddings
from semconv.embed.text import embed_item_texts
from semconv.embed.train import train_lightgcn
from semconv.lineage import checkpoint_name, stage_run

CF_MODEL_DIR = "cf_model"
METRICS_NAME = "metrics.json"


def _ensure_ray(cfg: PipelineConfig) -> None:
    from semconv.ray_env import init_ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)


def epoch_batch(edges: int, batch_size: int, max_steps: int | None) -> int:
    """BPR triples per step: ``batch_size``, raised so an epoch of ``edges`` takes at most
    ``max_steps`` steps."""
    return batch_size if max_steps is None else max(batch_size, -(-edges // max_steps))


def train_cf_model(cfg: PipelineConfig, run: RunDir, num_items: int) -> tuple[CFRecommender, dict[str, Any]]:
    """Train LightGCN on the train interactions with Ray Train; return the model and its training log.

    Checkpoints are keyed by the stage's lineage fingerprint (``run`` from
    :func:`semconv.lineage.stage_run`), so a rerun after a crash resumes and a changed one never does.
    """
    sequences = run.read_table("sequences", columns=["user_id", "history"])
    user_ids, users, items = train_pairs(sequences, run.read_table("splits"))
    bad = (items < 0) | (items >= num_items)
    if bad.any():
        raise ValueError(f"sequences/: item id {int(items[bad][0])} (train history/target) is not in "
                         f"items/ (ids 0..{num_items - 1})")
    c = cfg.embed.cf
    config = {"users": users, "items": items, "num_users": len(user_ids), "num_items": num_items,
              "dim": c.dim, "layers": c.layers, "epochs": c.epochs,
              "batch_size": epoch_batch(len(users), c.batch_size, c.max_steps_per_epoch),
              "lr": c.lr, "weight_decay": c.weight_decay, "seed": cfg.seed,
              "checkpoint_every": c.checkpoint_every}
    _ensure_ray(cfg)
    start = time.perf_counter()
    model, losses = train_lightgcn(config, c.num_workers, c.cpus_per_worker, run.checkpoint_root,
                                   checkpoint_name(run, "embed"))
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        user_e, item_e = model(normalized_adjacency(users, items, len(user_ids), num_items))
    model_config = {k: v for k, v in config.items() if k not in ("users", "items")}
    model_config.update(train_edges=len(users))
    rec = CFRecommender(user_ids, user_e.numpy(), item_e.numpy(), model_config)
    metrics: dict[str, Any] = {"model": "lightgcn", "train_loss": losses,
                               "train_seconds": round(train_seconds, 2), "num_workers": c.num_workers,
                               "user_representation": "LightGCN user vector of the train graph"}
    return rec, metrics


def _behaviour_embeddings(cfg: PipelineConfig, run: RunDir, items: pa.Table) -> str:
    supplied = cfg.embed.item_embeddings
    num_items = items.num_rows
    if supplied:
        vectors = load_item_embeddings(supplied, items.sort_by("item_id").column("source_id").to_pylist())
        run.write_table("item_emb", embedding_table(vectors),
                        manifest={"source": "supplied", "path": supplied, "dim": int(vectors.shape[1])})
        return run.path("item_emb")
    rec, metrics = train_cf_model(cfg, run, num_items)
    manifest = {"source": "lightgcn", "dim": int(rec.item_embedding.shape[1]), "rows": num_items}
    with run.writing("item_emb", manifest) as tmp:
        pq.write_table(embedding_table(rec.item_embedding), tmp / "part-00000.parquet")
        rec.save_pretrained(tmp / CF_MODEL_DIR)
        (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2))
    return run.path("item_emb")


def _text_embeddings(cfg: PipelineConfig, run: RunDir, items_table: pa.Table) -> str:
    from semconv.models import resolve

    e = cfg.embed
    model_dir = resolve(e.text_model)
    _ensure_ray(cfg)
    table, stats = embed_item_texts(items_table, model_dir, e.text_max_tokens, e.text_batch_size,
                                    e.text_actors)
    run.write_table("item_text_emb", table, manifest={"model": e.text_model, "model_dir": str(model_dir),
                                                      "max_tokens": e.text_max_tokens, **stats})
    return run.path("item_text_emb")


def run_embed(cfg: PipelineConfig) -> dict[str, str]:
    """Produce ``item_emb/`` and ``item_text_emb/`` (each skipped when already complete)."""
    run = stage_run(cfg, "embed")
    run.require("items")
    out: dict[str, str] = {}
    need_behaviour = not run.is_complete("item_emb")
    need_text = not run.is_complete("item_text_emb")
    items_table = run.read_table("items") if (need_behaviour or need_text) else None
    if need_behaviour:
        _behaviour_embeddings(cfg, run, items_table)
    out["item_emb"] = run.path("item_emb")
    if need_text:
        _text_embeddings(cfg, run, items_table)
    out["item_text_emb"] = run.path("item_text_emb")
    emb, text = run.manifest("item_emb"), run.manifest("item_text_emb")
    print(f"embed: item_emb/ {emb.get('dim', '?')}-d from {emb.get('source', '?')}, "
          f"item_text_emb/ {text.get('dim', '?')}-d from {text.get('model', '?')}", flush=True)
    return out


def cf_model_dir(run_dir: str) -> Path:
    """The saved CF model inside a complete ``item_emb/`` (for the evaluate stage's baseline)."""
    path = RunDir(run_dir).local("item_emb") / CF_MODEL_DIR
    if not path.exists():
        raise FileNotFoundError(f"{path}: item_emb/ was supplied by the user, so there is no CF model")
    return path

"""The ``embed`` stage: ``items/`` + ``splits/`` -> ``item_emb/`` (behaviour) + ``item_text_emb/``.

``item_emb/`` holds the user's own recommender's vectors when ``embed.item_embeddings`` is set;
otherwise LightGCN is trained on the train split (Ray Train) and the artifact also carries the
model (``cf_model/``, reusable as a baseline recommender through :func:`recommend_topk`) and its
valid/test metrics (``metrics.json``). Each artifact is skipped when already complete (the
pipeline deletes both first when the stage's config or inputs changed, :mod:`semconv.lineage`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from semconv.artifacts import RunDir
from semconv.config import PipelineConfig
from semconv.embed.cf import (
    CFRecommender,
    LightGCN,
    evaluate_rows,
    normalized_adjacency,
    popularity_metrics,
    train_pairs,
)
from semconv.embed.supplied import embedding_table, load_item_embeddings
from semconv.embed.text import embed_item_texts
from semconv.embed.train import fit_cf
from semconv.evaluate.popularity import train_interaction_counts
from semconv.lineage import checkpoint_name, stage_run

CF_MODEL_DIR = "cf_model"
METRICS_NAME = "metrics.json"


def _ensure_ray(cfg: PipelineConfig) -> None:
    from semconv.ray_env import init_ray

    init_ray(cfg.ray.address, cfg.ray.num_cpus)


def train_cf_model(cfg: PipelineConfig, run: RunDir, num_items: int) -> tuple[CFRecommender, dict[str, Any]]:
    """Train LightGCN on the train split with Ray Train; return the model and its metrics.

    Checkpoints are keyed by the stage's lineage fingerprint (``run`` from
    :func:`semconv.lineage.stage_run`), so a rerun after a crash resumes and a changed one never does.
    """
    splits = run.read_table("splits")
    user_ids, users, items = train_pairs(splits)
    bad = (items < 0) | (items >= num_items)
    if bad.any():
        raise ValueError(f"splits/: item id {int(items[bad][0])} (train history/target) is not in "
                         f"items/ (ids 0..{num_items - 1})")
    c = cfg.embed.cf
    config = {"users": users, "items": items, "num_users": len(user_ids), "num_items": num_items,
              "dim": c.dim, "layers": c.layers, "epochs": c.epochs, "batch_size": c.batch_size,
              "lr": c.lr, "weight_decay": c.weight_decay, "seed": cfg.seed,
              "checkpoint_every": c.checkpoint_every}
    _ensure_ray(cfg)
    start = time.perf_counter()
    state = fit_cf(config, c.num_workers, c.cpus_per_worker, run.checkpoint_root, checkpoint_name(run, "embed"))
    train_seconds = time.perf_counter() - start
    model = LightGCN(len(user_ids), num_items, c.dim, c.layers)
    with torch.no_grad():
        model.embedding.copy_(state["embedding"])
        user_e, item_e = model(normalized_adjacency(users, items, len(user_ids), num_items))
    model_config = {k: v for k, v in config.items() if k not in ("users", "items")}
    model_config.update(exclude_history=c.exclude_history, train_edges=len(users))
    rec = CFRecommender(user_ids, user_e.numpy(), item_e.numpy(), model_config)
    metrics: dict[str, Any] = {"model": "lightgcn", "train_loss": state["losses"],
                               "train_seconds": round(train_seconds, 2), "num_workers": c.num_workers,
                               "protocol": "all items ranked" + (", history excluded" if c.exclude_history else ""),
                               "user_representation": "LightGCN user vector of the train graph"}
    counts = train_interaction_counts(splits, num_items)
    for split in ("valid", "test"):
        rows = splits.filter(pc.equal(splits.column("split"), split))
        if rows.num_rows:
            metrics[split] = evaluate_rows(rec, rows, c.exclude_history)
            metrics[f"{split}_popularity"] = popularity_metrics(counts, rows, c.exclude_history)
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
    test = metrics.get("test", {})
    manifest = {"source": "lightgcn", "dim": int(rec.item_embedding.shape[1]), "rows": num_items,
                "test_HR@10": test.get("HR@10"), "test_NDCG@10": test.get("NDCG@10")}
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
    return out


def cf_model_dir(run_dir: str) -> Path:
    """The saved CF model inside a complete ``item_emb/`` (for the evaluate stage's baseline)."""
    path = RunDir(run_dir).local("item_emb") / CF_MODEL_DIR
    if not path.exists():
        raise FileNotFoundError(f"{path}: item_emb/ was supplied by the user, so there is no CF model")
    return path

"""The tokenize stage: train the residual codebook on Ray Train, then give every item unique codes.

Reads ``item_emb/`` and ``item_text_emb/`` (the latter required only when ``llm_alignment``), checks
them before any training, trains under ``TorchTrainer`` with checkpoints in
``<run_dir>/_checkpoints/tokenize-<lineage fingerprint>`` (so a re-run after a crash resumes; with
``num_workers: 0`` the same ``train_func`` runs in-process, as one worker would, no checkpoints), assigns
codes with faiss, resolves collisions, and writes ``codebook/`` (``save_pretrained`` output,
``metrics.json``, ``history.json``, ``collisions.json``) then ``item_codes/``. A complete
``codebook/`` without ``item_codes/`` is reused instead of retrained.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from semconv.artifacts import RunDir
from semconv.codes import item_codes_table
from semconv.config import PipelineConfig
from semconv.lineage import checkpoint_name, stage_run
from semconv.tokenize.assign import assign_codes
from semconv.tokenize.codebook import ResidualCodebook
from semconv.tokenize.collisions import resolve_collisions
from semconv.tokenize.inputs import TokenizeInputError, TokenizeInputs, load_inputs
from semconv.tokenize.quality import codebook_metrics, text_alignment_distance
from semconv.tokenize.train import train_codebook, train_func
from semconv.ray_env import init_ray
from semconv.training import Session


@torch.no_grad()
def _projection_distance(
    model: ResidualCodebook, codes: np.ndarray, text: np.ndarray, floats: int = 1 << 24
) -> float:
    """Mean ``1 - cos(W zhat_l + b, t)`` over items and levels with the learned projection, over
    chunks of items (``floats`` projected floats a chunk, 64 MB; the demo is one chunk)."""
    books = torch.as_tensor(model.codebook_vectors())
    L = codes.shape[1]
    rows = max(1, floats // (L * text.shape[1]))
    total = 0.0
    for s in range(0, len(codes), rows):
        idx = torch.as_tensor(codes[s : s + rows])
        selected = torch.stack([books[l][idx[:, l]] for l in range(L)], 1)
        proj = model.llm_projection(selected.cumsum(1))
        t = torch.as_tensor(text[s : s + rows])[:, None, :].expand_as(proj)
        mean = float((1 - torch.nn.functional.cosine_similarity(proj, t, dim=-1)).mean())
        total += mean * (len(idx) / len(codes))  # one chunk: exactly its mean
    return total


def _check_sizes(cfg: PipelineConfig, inputs: TokenizeInputs) -> None:
    tk = cfg.tokenize
    if tk.codes_per_level > np.iinfo(np.int16).max + 1:
        raise TokenizeInputError(
            f"tokenize.codes_per_level={tk.codes_per_level} does not fit the int16 item codes"
        )
    if len(inputs.item_ids) < tk.codes_per_level:
        raise TokenizeInputError(
            f"item_emb has {len(inputs.item_ids)} items, fewer than tokenize.codes_per_level="
            f"{tk.codes_per_level}; lower codes_per_level"
        )


def _train(cfg: PipelineConfig, rd: RunDir, inputs: TokenizeInputs):
    tk = cfg.tokenize
    if rd.is_complete("codebook"):  # trained earlier, item_codes/ not written yet
        model = ResidualCodebook.from_pretrained(rd.local("codebook"))
        return model, json.loads((rd.local("codebook") / "history.json").read_text())
    if tk.num_workers == 0:  # one worker's maths in this process, no Ray Train
        config = {"tokenize": tk.model_dump(), "seed": cfg.seed, "embeddings": inputs.embeddings,
                  "text_embeddings": inputs.text_embeddings}
        model, history = train_func(config, Session(device=torch.device("cuda" if tk.use_gpu else "cpu")))
        return model.cpu(), history  # as train_codebook returns it
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    return train_codebook(
        tk, rd.checkpoint_root, checkpoint_name(rd, "tokenize"), run_dir=cfg.run_dir, seed=cfg.seed
    )


def _write_codebook(rd: RunDir, cfg: PipelineConfig, model: ResidualCodebook, metrics: dict,
                    history: list, collisions: list) -> None:
    tk = cfg.tokenize
    manifest = {"levels": tk.levels, "codes_per_level": tk.codes_per_level}
    with rd.writing("codebook", manifest) as tmp:
        model.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        (tmp / "history.json").write_text(json.dumps(history, indent=2))
        (tmp / "collisions.json").write_text(json.dumps(collisions))


def run_tokenize(cfg: PipelineConfig) -> dict[str, str]:
    """Train the codebook and assign unique item codes; returns artifact name -> path."""
    rd = stage_run(cfg, "tokenize")
    out = {"codebook": rd.path("codebook"), "item_codes": rd.path("item_codes")}
    if rd.is_complete("codebook") and rd.is_complete("item_codes"):
        print(f"tokenize: codebook/ and item_codes/ complete in {rd.uri}; skipping")
        return out
    tk = cfg.tokenize
    # text embeddings are required for LLM alignment, and used (when present) to measure it
    inputs = load_inputs(rd, need_text=tk.llm_alignment or rd.is_complete("item_text_emb"))
    _check_sizes(cfg, inputs)
    model, history = _train(cfg, rd, inputs)
    model.eval()

    z = model.embed(inputs.embeddings)
    books = model.codebook_vectors()
    raw, _ = assign_codes(z, books, use_gpu=tk.use_gpu)
    resolution = resolve_collisions(z, books, raw)
    codes = resolution.codes
    metrics = codebook_metrics(z, books, raw, codes)
    metrics["fallback_items"] = int(len(resolution.fallback))
    if history:
        metrics["final_train_loss"] = {k: v for k, v in history[-1].items() if isinstance(v, float)}
    text = inputs.text_embeddings
    if text is not None:
        metrics["text_alignment_distance"] = text_alignment_distance(books, raw, text)
        if model.llm_projection is not None:
            metrics["llm_projection_distance"] = _projection_distance(model, raw, text)
    if not rd.is_complete("codebook"):
        collisions = [
            {"item_id": int(inputs.item_ids[i]), "raw": raw[i].tolist(), "codes": codes[i].tolist()}
            for i in resolution.reassigned
        ]
        _write_codebook(rd, cfg, model, metrics, history, collisions)
    rd.write_table("item_codes", item_codes_table(inputs.item_ids, codes),
                   manifest={"levels": tk.levels, "codebook": out["codebook"]})

    print(
        f"tokenize: {metrics['items']} items, L={tk.levels} K={tk.codes_per_level}: "
        f"collision rate {metrics['collision_rate']:.4%} before resolution "
        f"({metrics['reassigned_items']} items reassigned, "
        f"{metrics['duplicates_after_resolution']} duplicates after); "
        f"utilisation {[round(u, 3) for u in metrics['utilisation']]}; "
        f"quantization error {metrics['quantization_error']:.4f} "
        f"(input norm {metrics['input_norm']:.4f})"
    )
    return out

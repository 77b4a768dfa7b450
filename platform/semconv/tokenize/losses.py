"""Behaviour-alignment and LLM-alignment losses of the residual codebook.

The exact formulas are in :mod:`semconv.tokenize.codebook`'s docstring; in short::

    behavior_loss      = sum_l [ d(sg(r_l), e_l) + beta * d(r_l, sg(e_l)) ]   (l2: divided by s)
    llm_alignment_loss = sum_l d_llm(W (e_1 + ... + e_l) + b, t)

Each term is a mean over the batch. ``sg`` is ``detach``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semconv.tokenize.codebook import Quantized, ResidualCodebook
from semconv.training import unwrap


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise ``||a - b||^2`` (``l2``) or ``1 - cos(a, b)`` (``cosine``) over the last axis."""
    if kind == "l2":
        return (a - b).pow(2).sum(-1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    raise ValueError(f"unknown distance {kind!r} (use 'l2' or 'cosine')")


def behavior_loss(
    q: Quantized, kind: str = "l2", commitment_weight: float = 0.25, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Codebook term (codes move to inputs) + commitment term (inputs move to codes), all levels.

    ``scale`` divides the ``l2`` distance (the codebook's ``input_scale``); cosine is scale-free.
    """
    r, e = q.residuals, q.selected  # (n, L, d)
    codebook_term = distance(r.detach(), e, kind).sum(1)
    commitment_term = distance(r, e.detach(), kind).sum(1)
    loss = (codebook_term + commitment_weight * commitment_term).mean()
    return loss / scale if kind == "l2" else loss


def llm_alignment_loss(
    q: Quantized, text_emb: torch.Tensor, projection: torch.nn.Module, kind: str = "cosine"
) -> torch.Tensor:
    """Distance between every projected code prefix ``W(e_1+..+e_l)+b`` and the text embedding."""
    prefixes = q.selected.cumsum(dim=1)  # (n, L, d_z): e_1, e_1+e_2, ...
    projected = projection(prefixes)  # (n, L, d_llm)
    return distance(projected, text_emb[:, None, :].expand_as(projected), kind).sum(1).mean()


def reconstruction_loss(model: ResidualCodebook, x: torch.Tensor, q: Quantized) -> torch.Tensor:
    """ED ablation only: ``||x - Dec(z + sg(z_hat - z))||^2``."""
    return (x - model.decode(q)).pow(2).sum(-1).mean()


def total_loss(
    model: ResidualCodebook,
    x: torch.Tensor,
    text_emb: torch.Tensor | None,
    llm_alignment_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective for one batch, and its parts (floats, for logging)."""
    core = unwrap(model)  # DDP-wrapped or not
    cfg = core.config
    q = model(x)
    parts: dict[str, torch.Tensor] = {
        "behavior": behavior_loss(q, cfg.distance, cfg.commitment_weight, core.input_scale)
    }
    loss = parts["behavior"]
    if core.llm_projection is not None:
        if text_emb is None:
            raise ValueError("this codebook has an LLM projection: text embeddings are required")
        parts["llm_alignment"] = llm_alignment_loss(q, text_emb, core.llm_projection, cfg.llm_distance)
        loss = loss + llm_alignment_weight * parts["llm_alignment"]
    if core.decoder is not None:
        parts["reconstruction"] = reconstruction_loss(core, x, q)
        loss = loss + parts["reconstruction"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}

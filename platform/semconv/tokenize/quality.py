"""Codebook quality figures recorded in ``codebook/metrics.json``."""

from __future__ import annotations

import numpy as np


def collision_rate(codes: np.ndarray) -> float:
    """``1 - unique tuples / items``: the share of items that need another code (0 = all unique)."""
    if len(codes) == 0:
        return 0.0
    return 1.0 - len(np.unique(codes, axis=0)) / len(codes)


def usage_perplexity(codes: np.ndarray, K: int) -> float:
    """``exp(entropy)`` of one level's code usage: K for perfectly even use, 1 for one code."""
    counts = np.bincount(codes, minlength=K).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def quantization_error(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> float:
    """Mean ``||z - z_hat||`` (L2 norm, not squared) with ``z_hat = sum_l C_l[codes_l]``."""
    z_hat = np.zeros_like(z, dtype=np.float64)
    for level in range(codes.shape[1]):
        z_hat += codebooks[level][codes[:, level]]
    return float(np.linalg.norm(z.astype(np.float64) - z_hat, axis=1).mean())


def codebook_metrics(
    z: np.ndarray, codebooks: np.ndarray, raw_codes: np.ndarray, codes: np.ndarray
) -> dict:
    """Collision, utilisation, perplexity and error figures before and after resolution."""
    n, L = raw_codes.shape
    K = codebooks.shape[1]
    _, inv, counts = np.unique(raw_codes, axis=0, return_inverse=True, return_counts=True)
    return {
        "items": int(n),
        "levels": int(L),
        "codes_per_level": int(K),
        "collision_rate": collision_rate(raw_codes),
        "items_in_collisions": float((counts[inv.ravel()] > 1).mean()) if n else 0.0,
        "collision_rate_by_prefix": [collision_rate(raw_codes[:, : l + 1]) for l in range(L)],
        "utilisation": [len(np.unique(raw_codes[:, l])) / K for l in range(L)],
        "perplexity": [usage_perplexity(raw_codes[:, l], K) for l in range(L)],
        "quantization_error": quantization_error(z, codebooks, raw_codes),
        "quantization_error_resolved": quantization_error(z, codebooks, codes),
        "input_norm": float(np.linalg.norm(z, axis=1).mean()) if n else 0.0,
        "reassigned_items": int((raw_codes != codes).any(1).sum()),
        "duplicates_after_resolution": int(n - len(np.unique(codes, axis=0))),
    }


def text_alignment_distance(
    codebooks: np.ndarray, codes: np.ndarray, text: np.ndarray, ridge: float = 1e-3
) -> float:
    """How close the codes can get to the text: mean ``1 - cos(P [zhat_l, 1], t)`` over items and
    levels, where ``P`` is a fresh linear map fitted here in closed form (ridge least squares onto
    the unit-normalised text embeddings) from every code prefix sum ``zhat_l``.

    The same probe for every codebook, so runs with and without LLM alignment compare fairly.
    """
    L = codes.shape[1]
    prefix = np.zeros((len(codes), codebooks.shape[2]), dtype=np.float64)
    feats = []
    for level in range(L):
        prefix = prefix + codebooks[level][codes[:, level]]
        feats.append(np.concatenate([prefix, np.ones((len(codes), 1))], 1))
    X = np.concatenate(feats)  # (n L, d + 1)
    t = text.astype(np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    T = np.tile(t, (L, 1))
    P = np.linalg.solve(X.T @ X + ridge * len(X) * np.eye(X.shape[1]), X.T @ T)
    pred = X @ P
    cos = (pred * T).sum(1) / np.maximum(np.linalg.norm(pred, axis=1), 1e-12)
    return float((1 - cos).mean())

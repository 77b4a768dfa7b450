"""Codebook quality figures recorded in ``codebook/metrics.json``.

Every figure is computed over chunks of items, so its temporaries are bounded whatever the
catalogue's size (a million items with 576-wide text embeddings would otherwise take ~20 GB in
``text_alignment_distance``); sums are combined over chunks, and a catalogue that fits one chunk
(the demo's 4,344 items) gets bit-identical figures to the one-shot formulas.
"""

from __future__ import annotations

import numpy as np

from semconv.codes import tuple_keys

ROWS = 65_536  # items per chunk of the per-item figures


def _chunks(n: int, rows: int) -> list[slice]:
    return [slice(s, s + rows) for s in range(0, n, max(1, rows))]


def unique_tuples(codes: np.ndarray) -> int:
    """How many distinct code tuples (rows) ``codes`` holds."""
    return len(np.unique(tuple_keys(codes))) if len(codes) else 0


def collision_rate(codes: np.ndarray) -> float:
    """``1 - unique tuples / items``: the share of items that need another code (0 = all unique)."""
    if len(codes) == 0:
        return 0.0
    return 1.0 - unique_tuples(codes) / len(codes)


def usage_perplexity(codes: np.ndarray, K: int) -> float:
    """``exp(entropy)`` of one level's code usage: K for perfectly even use, 1 for one code."""
    counts = np.bincount(codes, minlength=K).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def quantization_error(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> float:
    """Mean ``||z - z_hat||`` (L2 norm, not squared) with ``z_hat = sum_l C_l[codes_l]``."""
    total = 0.0
    for s in _chunks(len(z), ROWS):
        z_hat = np.zeros_like(z[s], dtype=np.float64)
        for level in range(codes.shape[1]):
            z_hat += codebooks[level][codes[s, level]]
        total += np.linalg.norm(z[s].astype(np.float64) - z_hat, axis=1).sum()
    return float(total / len(z)) if len(z) else float("nan")


def codebook_metrics(
    z: np.ndarray, codebooks: np.ndarray, raw_codes: np.ndarray, codes: np.ndarray
) -> dict:
    """Collision, utilisation, perplexity and error figures before and after resolution."""
    n, L = raw_codes.shape
    K = codebooks.shape[1]
    _, inv, counts = np.unique(tuple_keys(raw_codes), return_inverse=True, return_counts=True)
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
        "duplicates_after_resolution": int(n - unique_tuples(codes)),
    }


def text_alignment_distance(
    codebooks: np.ndarray, codes: np.ndarray, text: np.ndarray, ridge: float = 1e-3,
    floats: int = 1 << 24,
) -> float:
    """How close the codes can get to the text: mean ``1 - cos(P [zhat_l, 1], t)`` over items and
    levels, where ``P`` is a fresh linear map fitted here in closed form (ridge least squares onto
    the unit-normalised text embeddings) from every code prefix sum ``zhat_l``.

    The same probe for every codebook, so runs with and without LLM alignment compare fairly.
    The normal equations are summed over chunks of items (``floats`` float64s of tiled text a
    chunk: 128 MB), then a second pass scores every chunk with the fitted ``P``.
    """
    n, L = codes.shape
    rows = max(1, floats // (L * text.shape[1]))

    def design(s: slice) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(m L, d + 1)``, level-major, and the matching unit text ``(m L, d_llm)``."""
        c = codes[s]
        prefix = np.zeros((len(c), codebooks.shape[2]), dtype=np.float64)
        feats = []
        for level in range(L):
            prefix = prefix + codebooks[level][c[:, level]]
            feats.append(np.concatenate([prefix, np.ones((len(c), 1))], 1))
        t = text[s].astype(np.float64)
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        return np.concatenate(feats), np.tile(t, (L, 1))

    xtx = xtt = 0
    for s in _chunks(n, rows):
        X, T = design(s)
        xtx, xtt = xtx + X.T @ X, xtt + X.T @ T
    P = np.linalg.solve(xtx + ridge * (n * L) * np.eye(codebooks.shape[2] + 1), xtt)
    total = 0.0
    for s in _chunks(n, rows):
        X, T = design(s)
        pred = X @ P
        cos = (pred * T).sum(1) / np.maximum(np.linalg.norm(pred, axis=1), 1e-12)
        total += (1 - cos).sum()
    return float(total / (n * L))

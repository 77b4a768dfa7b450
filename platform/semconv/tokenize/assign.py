"""Assignment: the nearest code per level for every item, with faiss.

Level ``l`` searches its K codes for the residual left by levels ``< l`` (faiss ``IndexFlatL2``,
top-1; ``GpuIndexFlatL2`` when faiss has GPU support and ``use_gpu``).

Batch independence (cold start must reproduce batch codes exactly): faiss computes distances
directly for small query sets and with BLAS (``||r||^2 + ||c||^2 - 2 r.c``) for big ones
(``n * K`` above ``faiss.cvar.distance_compute_blas_threshold``); the two round differently
(measured here: up to 1.5e-5 on distances near 128), so a near-tie could flip with the batch
size. Queries therefore always go in whole blocks of ``BLOCK`` rows (faiss' own BLAS query
block; the last block is zero-padded), so every row is computed by the same BLAS call shape
whatever else is in the batch (bitwise-equal distances here; the near-tie test in
``tests/tokenize/test_assign.py`` checks it). Exact ties go to the lower code index. The cost is
a 4096-row search per level for a single item (about 2 ms per level on one core).

Big inputs go through all levels in chunks of ``CHUNK`` rows (a whole number of blocks), with
the residual updated in place: per-level passes over a million rows allocated ~256 MB
temporaries per level and ran ~20% slower (``bench/assign.py``). The update gathers the chosen
codes with torch (``index_select`` + ``sub_``, multi-threaded): 0.14 ms per 16k-row chunk
against 0.45-0.5 ms for numpy's ``take`` and subtract, measured on 2 cores.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 4096  # faiss.cvar.distance_compute_blas_query_bs
CHUNK = 4 * BLOCK


def _flat_index(codes: np.ndarray, use_gpu: bool):
    import faiss

    d = codes.shape[1]
    if use_gpu and hasattr(faiss, "StandardGpuResources"):
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), d)
    else:
        index = faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(codes, dtype=np.float32))
    return index


def nearest_codes(residual: np.ndarray, codes: np.ndarray, index=None, use_gpu: bool = False) -> np.ndarray:
    """Nearest code index (int64, ``(n,)``) of each residual row among ``codes`` ``(K, d)``."""
    residual = np.ascontiguousarray(residual, dtype=np.float32)
    if index is None:
        index = _flat_index(codes, use_gpu)
    n = len(residual)
    whole = n - n % BLOCK
    out = np.empty(n, dtype=np.int64)
    if whole:
        out[:whole] = index.search(residual[:whole], 1)[1][:, 0]
    if whole < n:  # the tail, zero-padded to one whole block so it takes the same BLAS path
        tail = np.zeros((BLOCK, residual.shape[1]), np.float32)
        tail[: n - whole] = residual[whole:]
        out[whole:] = index.search(tail, 1)[1][: n - whole, 0]
    return out


def level_indexes(codebooks: np.ndarray, use_gpu: bool = False) -> list:
    """One faiss flat index per level, built once and reused across batches (cold start)."""
    return [_flat_index(book, use_gpu) for book in np.asarray(codebooks, dtype=np.float32)]


def assign_codes(
    z: np.ndarray, codebooks: np.ndarray, use_gpu: bool = False, indexes: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Residual-quantize ``z`` ``(n, d)`` with ``codebooks`` ``(L, K, d)``.

    Returns ``codes`` ``(n, L)`` int64 and the final residual ``z - z_hat`` ``(n, d)`` float32.
    ``indexes`` (from :func:`level_indexes`) saves rebuilding the faiss indexes per call.
    """
    z = np.ascontiguousarray(z, dtype=np.float32)
    books = np.ascontiguousarray(codebooks, dtype=np.float32)
    if z.ndim != 2 or books.ndim != 3 or z.shape[1] != books.shape[2]:
        raise ValueError(
            f"embeddings of shape {z.shape} do not match codebooks of shape {books.shape} "
            "(expected (n, d) and (L, K, d))"
        )
    if indexes is None:
        indexes = level_indexes(books, use_gpu)
    codes = np.empty((len(z), books.shape[0]), dtype=np.int64)
    residual = z.copy()
    residual_t, books_t = torch.from_numpy(residual), torch.from_numpy(books)  # views, no copies
    picked = torch.empty((min(CHUNK, len(z)), z.shape[1]), dtype=torch.float32)
    for start in range(0, len(z), CHUNK):
        r = residual_t[start : start + CHUNK]
        for level, book in enumerate(books):
            c = codes[start : start + len(r), level]
            c[:] = nearest_codes(r.numpy(), book, index=indexes[level])
            torch.index_select(books_t[level], 0, torch.from_numpy(c), out=picked[: len(r)])
            r.sub_(picked[: len(r)])
    return codes, residual


def level_inputs(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
    """The residual that level ``level`` quantizes: ``z - sum_{j<level} C_j[codes_j]`` (float32)."""
    r = np.ascontiguousarray(z, dtype=np.float32).copy()
    for j in range(level):
        r -= codebooks[j][codes[:, j]]
    return r

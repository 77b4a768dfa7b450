"""Benchmark: residual code assignment with faiss vs a plain torch ``cdist`` + ``argmin`` baseline.

Synthetic items (a Gaussian mixture, d = 64) and a residual codebook (L = 4, K = 256) set by our
faiss k-means initialisation on a sample; then every item is assigned its nearest code per level
by ``semconv.tokenize.assign.assign_codes`` (faiss ``IndexFlatL2``) and by torch ``cdist`` +
``argmin`` in chunks, in the same run; codes are compared. Repeats alternate the two methods
(faiss, cdist, cdist, faiss, ...) and each keeps its best time, so a noisy neighbour on a shared
host slows both rather than one.

    python bench/assign.py            # 1,000,000 items
    python bench/assign.py --quick    # 200,000 items (about a minute)
    python bench/assign.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from semconv.tokenize.assign import assign_codes
from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook


def synthetic_items(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, d)).astype(np.float32) * 3
    x = centres[rng.integers(0, len(centres), n)]
    x += rng.normal(size=(n, d)).astype(np.float32)
    return x


def cdist_assign(z: np.ndarray, books: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The baseline: per level, ``torch.cdist`` to every code and ``argmin``, in chunks."""
    books_t = torch.from_numpy(books)
    codes = np.empty((len(z), len(books)), dtype=np.int64)
    with torch.no_grad():
        for s in range(0, len(z), chunk):
            r = torch.from_numpy(z[s : s + chunk]).clone()
            for level in range(len(books)):
                k = torch.cdist(r, books_t[level]).argmin(dim=1)
                codes[s : s + chunk, level] = k.numpy()
                r -= books_t[level][k]
    return codes


def tie_gaps(z: np.ndarray, books: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[float]:
    """For items whose codes differ: at the first differing level, the float64 distance gap
    between the two choices relative to ``||r||^2 + ||c||^2`` (float32 rounding is ~1e-7)."""
    gaps = []
    for i in np.flatnonzero((a != b).any(1)):
        r = z[i].astype(np.float64)
        for level in range(books.shape[0]):
            ca, cb = books[level][a[i, level]], books[level][b[i, level]]
            if a[i, level] != b[i, level]:
                da, db = ((r - ca) ** 2).sum(), ((r - cb) ** 2).sum()
                gaps.append(float(abs(da - db) / ((r**2).sum() + (ca.astype(np.float64) ** 2).sum())))
                break
            r = r - ca
    return gaps


def timed(fns: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Best wall time and last output of each function, the order alternating per repeat."""
    best, out = dict.fromkeys(fns, float("inf")), {}
    for i in range(repeats):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            out[name] = fns[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200k items instead of 1M")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--codes", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=None, help="best of N timings (default 3 quick, 2 full)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and faiss threads")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    n = args.items or (200_000 if args.quick else 1_000_000)
    repeats = args.repeats or (3 if args.quick else 2)

    z = synthetic_items(n, args.dim)
    t0 = time.perf_counter()
    model = ResidualCodebook(CodebookConfig(dim=args.dim, levels=args.levels, codes_per_level=args.codes))
    model.kmeans_init(z[:65536], iters=10, seed=0)
    books = model.codebook_vectors()
    init_s = time.perf_counter() - t0

    best, out = timed({"faiss": lambda: assign_codes(z, books)[0], "cdist": lambda: cdist_assign(z, books)},
                      repeats)
    faiss_s, cdist_s, codes, base = best["faiss"], best["cdist"], out["faiss"], out["cdist"]
    mismatched = int((codes != base).any(1).sum())
    gaps = tie_gaps(z, books, codes, base)
    result = {
        "items": n, "dim": args.dim, "levels": args.levels, "codes_per_level": args.codes,
        "faiss_items_per_s": n / faiss_s, "cdist_items_per_s": n / cdist_s,
        "faiss_s": faiss_s, "cdist_s": cdist_s, "speedup_vs_cdist": cdist_s / faiss_s,
        "identical_codes": mismatched == 0, "mismatched_items": mismatched,
        "mismatch_max_relative_gap": max(gaps, default=0.0),
        "mismatches_are_float_ties": bool(not gaps or max(gaps) < 1e-6),
        "kmeans_init_s": init_s, "repeats": repeats,
        "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
    }
    print(f"assign {n:,} items, d={args.dim}, L={args.levels}, K={args.codes}, {args.threads} "
          f"thread(s) (best of {repeats}; k-means init {init_s:.1f} s; load {os.getloadavg()[0]:.1f})")
    print(f"{'method':<28}{'seconds':>10}{'items/s':>14}{'ratio':>8}")
    print(f"{'torch cdist + argmin':<28}{cdist_s:>10.2f}{n / cdist_s:>14,.0f}{1.0:>8.2f}")
    print(f"{'faiss IndexFlatL2 (ours)':<28}{faiss_s:>10.2f}{n / faiss_s:>14,.0f}{cdist_s / faiss_s:>8.2f}")
    ties = gaps and max(gaps) < 1e-6
    note = f"; max relative distance gap {max(gaps):.1e}" if gaps else ""
    note += " - float32 rounding near-ties" if ties else ""
    print(f"identical codes: {mismatched == 0} ({mismatched} items differ{note})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

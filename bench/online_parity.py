"""Check: online generation answers a precached user's test history with the precached top-K.

Picks ``--users`` precached users (seeded), posts the histories they were ranked from (all
before the held-out test item) the way the model
deployment ranks a batch of requests (``semconv.serving.generation.rank_queries`` on the ranker
``load_run_ranker`` builds with the precache's settings: same model, prompt, beam, K, exclusion,
dtype rule), and compares with ``precache/``: mean overlap@K, exact-match rate (same items in the
same order) and the largest score difference. With ``--url`` it posts over HTTP to a running app
instead.

    python bench/online_parity.py --run-dir runs/demo --users 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semconv.artifacts import RunDir  # noqa: E402
from semconv.hardware import machine_info  # noqa: E402
from semconv.protocol import history_before  # noqa: E402


def precached(run: RunDir, n: int, seed: int) -> list[tuple[int, list[int], list[int], list[float]]]:
    """``n`` random precached users: (user, history they were ranked from, cached items, cached
    scores); the history is everything before the held-out test item, as the precache ranks."""
    cache = run.read_table("precache")
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(cache.num_rows, size=min(n, cache.num_rows), replace=False).tolist())
    picked = cache.take(rows).to_pylist()
    sequences = run.read_table("sequences", columns=["user_id", "history"])
    test = history_before(sequences, run.read_table("splits"), "test")
    hist = dict(zip(test["user_id"].to_pylist(), test["history"].to_pylist()))
    return [(r["user_id"], hist[r["user_id"]], r["items"], r["scores"]) for r in picked]


def online_in_process(run: RunDir, histories: list[list[int]], k: int) -> tuple[list, dict]:
    from semconv.inference.run_ranker import load_run_ranker
    from semconv.serving.generation import Query, rank_queries

    ranker, settings = load_run_ranker(run)
    queries = [Query(tuple(h), k, settings.num_beams) for h in histories]
    t0 = time.perf_counter()
    out = rank_queries(ranker, queries, settings.exclude_history)
    info = {"dtype": settings.dtype, "precache_dtype": settings.precache_dtype, "num_beams": settings.num_beams,
            "seconds": time.perf_counter() - t0}
    return [(i.tolist(), s.tolist()) for i, s in out], info


def online_http(url: str, histories: list[list[int]], k: int) -> tuple[list, dict]:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=300, trust_env=False) as c:
        for h in histories:
            r = c.post("/v1/recommendations", json={"history": h, "k": k})
            r.raise_for_status()
            out.append((r.json()["item_ids"], r.json()["scores"]))
    return out, {"url": url}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a run directory with model/ and precache/ (read only)")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", help="post to this running app instead of ranking in process")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    run = RunDir(a.run_dir)
    users = precached(run, a.users, a.seed)
    histories = [h for _, h, _, _ in users]
    got, info = online_http(a.url, histories, a.k) if a.url else online_in_process(run, histories, a.k)
    rows = []
    for (user, _, items, scores), (o_items, o_scores) in zip(users, got):
        k = min(a.k, len(items))
        overlap = len(set(items[:k]) & set(o_items[:k])) / k
        diff = float(np.max(np.abs(np.asarray(scores[:k]) - np.asarray(o_scores[:k])))) if items[:k] == o_items[:k] else None
        rows.append({"user": user, "overlap": overlap, "exact": items[:k] == o_items[:k], "max_score_diff": diff})
    mean = float(np.mean([r["overlap"] for r in rows]))
    exact = float(np.mean([r["exact"] for r in rows]))
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, native bf16: {m['bf16_native']}; {info}")
    print("| user | overlap@%d | exact | max score diff |" % a.k)
    print("| --- | --- | --- | --- |")
    for r in rows:
        d = f"{r['max_score_diff']:.2e}" if r["max_score_diff"] is not None else "-"
        print(f"| {r['user']} | {r['overlap']:.2f} | {r['exact']} | {d} |")
    print(f"{len(rows)} precached users: mean overlap@{a.k} {mean:.3f}, exact-match rate {exact:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": m, "info": info, "users": rows,
                                            "mean_overlap": mean, "exact_rate": exact}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: refreshing 1% of users against re-precaching everyone, in the same synthetic run.

A synthetic finished run (tiny random Llama + the 400-token prompt tokenizer of
``bench/precache.py --synthetic-users``, LoRA-wrapped as the finetune stage saves it; 4,344 items
with random behaviour vectors, a k-means codebook L=4 x K=256 and unique codes; users with 5-20
random history items) is precached once by the precache stage, timed: that is "re-precache
everyone". Then a delta touches 1% of the users (1-3 new interactions each) and adds 10 new items
(5 with supplied embeddings, 5 with interactions only, so fold-in) and ``run_refresh`` builds the
next version, timed. Reported: both wall times and their ratio, the shards carried over, and
whether every untouched user's cached list (items and scores) is byte-identical to the previous
precache.

    python bench/refresh.py --quick --json out.json     # 2,000 users
    python bench/refresh.py --users 50000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

NUM_ITEMS, LEVELS, CODES, DIM = 4344, 4, 256, 32


def build_run(work: Path, users: int, seed: int = 0) -> Path:
    """A finished run directory up to ``model/`` (no precache yet)."""
    from common import save_tiny_llama
    from semconv.artifacts import RunDir
    from semconv.data.prepare import ITEMS_SCHEMA
    from semconv.protocol import split_bounds
    from semconv.embed.supplied import embedding_table
    from semconv.finetune.model import build_finetune_model
    from semconv.refresh.codes import codes_table
    from semconv.tokenize.assign import assign_codes
    from semconv.tokenize.codebook import CodebookConfig, ResidualCodebook
    from semconv.tokenize.collisions import resolve_collisions

    save_tiny_llama(work / "tiny", seed)
    run = RunDir(work / "run")
    rng = np.random.default_rng(seed)
    n = NUM_ITEMS
    run.write_table("items", pa.table({
        "item_id": pa.array(np.arange(n), pa.int64()), "source_id": [f"i{i}" for i in range(n)],
        "title": [f"item {i}" for i in range(n)], "description": [""] * n, "brand": [""] * n,
        "categories": [""] * n}, schema=ITEMS_SCHEMA))
    lens = rng.integers(5, 21, size=users)
    hist = [rng.choice(n, size=k, replace=False) for k in lens]
    seqs = pa.table({"user_id": pa.array(np.arange(users), pa.int64()),
                     "source_user_id": [f"u{u}" for u in range(users)],
                     "history": pa.array(hist, pa.list_(pa.int64()))})
    run.write_table("sequences", seqs)
    run.write_table("splits", split_bounds(seqs), manifest={"max_len": 20})
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    run.write_table("item_emb", embedding_table(emb))
    book = ResidualCodebook(CodebookConfig(dim=DIM, levels=LEVELS, codes_per_level=CODES))
    book.kmeans_init(emb, iters=5)
    with run.writing("codebook", {"levels": LEVELS, "codes_per_level": CODES}) as tmp:
        book.save_pretrained(tmp)
    books = book.codebook_vectors()
    raw, _ = assign_codes(emb, books)
    run.write_table("item_codes", codes_table(np.arange(n), resolve_collisions(emb, books, raw).codes))
    model, mtok, _ = build_finetune_model(work / "tiny", LEVELS, CODES, lora={"r": 2, "target_modules": ["q_proj"]})
    with run.writing("model", {"base_model": str(work / "tiny")}) as tmp:
        model.save_pretrained(tmp)
        mtok.save_pretrained(tmp)
    return work / "run"


def write_delta(work: Path, users: int, share: float, seed: int = 1) -> tuple[str, str]:
    rng = np.random.default_rng(seed)
    touched = rng.choice(users, size=max(1, int(users * share)), replace=False)
    rows = []
    for j, u in enumerate(touched):
        for i in rng.choice(NUM_ITEMS, size=rng.integers(1, 4), replace=False):
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}"})
        if j < 5:
            rows.append({"user_id": f"u{u}", "item_id": f"new{5 + j}"})  # fold-in items
    items = [{"item_id": f"new{j}", "title": f"new item {j}", "description": "",
              "embedding": rng.normal(size=DIM).tolist() if j < 5 else None} for j in range(10)]
    inter, new = work / "inter.parquet", work / "items.jsonl"
    pq.write_table(pa.Table.from_pylist(rows), inter)
    new.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in items))
    return str(inter), str(new)


def lists(path: Path) -> dict[int, tuple]:
    t = pq.read_table(path)
    return {u: (tuple(i), tuple(s)) for u, i, s in zip(t["user_id"].to_pylist(), t["items"].to_pylist(),
                                                    t["scores"].to_pylist())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 users")
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--share", type=float, default=0.01, help="share of users the delta touches")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    users = 2000 if args.quick else args.users

    import ray

    from semconv.config import PipelineConfig
    from semconv.inference.stage import run_precache
    from semconv.refresh.stage import run_refresh

    work = Path(tempfile.mkdtemp(prefix="semconv-bench-refresh-"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        run_dir = build_run(work, users)
        inter, items = write_delta(work, users, args.share)
        cfg = PipelineConfig.model_validate({
            "run_dir": str(run_dir), "finetune": {"base_model": str(work / "tiny")},
            "precache": {"bf16": False, "num_beams": 20, "top_k": 10, "batch_size": 64, "sort_window": 4,
                         "users_per_shard": 2048, "threads_per_actor": 1},
            "refresh": {"interactions": inter, "items": items}})
        t0 = time.perf_counter()
        run_precache(cfg)
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        version = Path(run_refresh(cfg)["version"])
        refresh = time.perf_counter() - t0
        manifest = json.loads((version / "_SUCCESS").read_text())
        old, new = lists(run_dir / "precache"), lists(version / "precache")
        redecoded = set(pq.read_table(version / manifest["users"]["list"], columns=["user_id"])["user_id"].to_pylist())
        untouched = [u for u in old if u not in redecoded]
        identical = all(old[u] == new[u] for u in untouched)
        carried = manifest["precache"]["shards_carried_over"]
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    res = {"users": users, "touched_share": args.share, "redecoded_users": len(redecoded),
           "new_items": manifest["new_items"]["count"],
           "embedding_source": manifest["new_items"]["embedding_source"],
           "precache_everyone_s": round(full, 2), "refresh_s": round(refresh, 2),
           "refresh_decode_s": manifest["decode_seconds"], "refresh_build_s": manifest["build_seconds"],
           "ratio": round(refresh / full, 4), "untouched_users": len(untouched),
           "untouched_identical": identical, "shards": manifest["precache"]["shards"],
           "shards_carried_over": carried, "machine": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count()}
    print("| users | re-decoded | precache everyone (s) | refresh (s) | ratio | untouched identical | shards carried |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    print(f"| {users:,} | {len(redecoded)} | {full:.1f} | {refresh:.1f} | {refresh / full:.3f} | "
          f"{identical} ({len(untouched):,} users) | {carried} of {res['shards']} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if not identical:
        raise SystemExit("untouched users' lists changed")


if __name__ == "__main__":
    main()

"""Benchmark: issue 18's demo check, a refresh of a finished run against its own precache stage.

On a copy of a finished run (``--run-dir``, e.g. ``runs/demo``): a delta of new interactions for
100 precached users (1-3 each, random catalogue items) and 20 new items with text, 10 of them
interacted with by 3 of those users; ``jobs/refresh.py`` builds ``versions/v0001`` in a fresh
process, timed. Reported beside the precache stage's seconds from the run's ``pipeline.json``:
the refresh's own seconds (manifest) and the whole command's, their ratios, and the checks: every
untouched user's list byte-identical, no touched user's history item in their list, all items'
codes unique, every new item answered by ``GET /v1/items/{id}`` from the version.

    python bench/refresh_demo.py --run-dir runs/demo --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO))

KINDS = ["digital caliper", "nitrile gloves", "soldering station", "pH meter", "lab thermometer",
         "safety goggles", "multimeter", "heat shrink tubing", "borosilicate beaker", "torque wrench",
         "cable ties", "respirator mask", "glass test tubes", "magnetic stirrer", "hex key set",
         "electrical tape", "micro pipette", "infrared thermometer", "wire stripper", "petri dishes"]


def make_delta(run: Path, out: Path, users: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cached = pq.read_table(run / "precache", columns=["user_id"])["user_id"].to_numpy()
    seqs = pq.read_table(run / "sequences").to_pydict()
    src = dict(zip(seqs["user_id"], seqs["source_user_id"]))
    hist = dict(zip(seqs["user_id"], seqs["history"]))
    items = pq.read_table(run / "items", columns=["source_id"])["source_id"].to_pylist()
    chosen = np.sort(rng.choice(cached, users, replace=False))
    rows = []
    for u in chosen:
        seen = set(hist[u])
        pool = [i for i in range(len(items)) if i not in seen]
        rows += [{"user_id": src[u], "item_id": items[int(i)]}
                 for i in rng.choice(pool, rng.integers(1, 4), replace=False)]
    for j in range(10):
        rows += [{"user_id": src[u], "item_id": f"new-{j}"} for u in rng.choice(chosen, 3, replace=False)]
    pq.write_table(pa.Table.from_pylist(rows), out / "interactions.parquet")
    new = [{"item_id": f"new-{j}", "title": f"{k.title()} {100 + j}",
            "description": f"A {k} for labs, workshops and industrial use."} for j, k in enumerate(KINDS)]
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))


def lists(path: Path) -> dict[int, tuple]:
    t = pq.read_table(path).to_pydict()
    return {u: (tuple(i), tuple(s)) for u, i, s in zip(t["user_id"], t["items"], t["scores"])}


def check(run: Path) -> dict:
    from semconv.serving.state import load_state
    from serve_app.api import LocalBackend, build_api
    import httpx

    ver = run / "versions" / "v0001"
    m = json.loads((ver / "_SUCCESS").read_text())
    old, new = lists(run / "precache"), lists(ver / "precache")
    touched = set(m["users"]["ids"])
    hist = dict(zip(*pq.read_table(ver / "sequences", columns=["user_id", "history"]).to_pydict().values()))
    codes = [tuple(c) for c in pq.read_table(ver / "item_codes")["codes"].to_pylist()]
    new_ids = sorted(m["new_items"]["item_ids"])
    api = build_api(LocalBackend(load_state(str(ver)), None, max_batch=4))

    async def items() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
            return [(await c.get(f"/v1/items/{i}")).status_code for i in new_ids]

    return {
        "untouched_users": len(old) - len(touched & set(old)),
        "untouched_identical": all(old[u] == new[u] for u in old if u not in touched),
        "touched_users": len(touched),
        "history_items_in_touched_lists": sum(len(set(new[u][0]) & set(hist[u])) for u in touched),
        "items": len(codes), "codes_unique": len(set(codes)) == len(codes),
        "new_items_served": sum(s == 200 for s in asyncio.run(items())), "new_items": len(new_ids),
        "embedding_source": m["new_items"]["embedding_source"],
        "refresh_seconds": m["seconds"], "build_seconds": m["build_seconds"], "decode_seconds": m["decode_seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a finished run (precache/ and pipeline.json)")
    ap.add_argument("--config", default=str(REPO / "configs/demo.yaml"))
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="accepted for symmetry: the demo check is already minutes")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    src = Path(args.run_dir).resolve()
    precache_s = json.loads((src / "pipeline.json").read_text())["stages"]["precache"]["seconds"]
    with tempfile.TemporaryDirectory(prefix="refresh-demo-") as tmp:
        run, delta = Path(tmp) / "run", Path(tmp) / "delta"
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("_checkpoints", "versions"))
        delta.mkdir()
        make_delta(run, delta, args.users, args.seed)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "jobs/refresh.py"), "--config", args.config, f"run_dir={run}",
                        f"refresh.interactions={delta / 'interactions.parquet'}",
                        f"refresh.items={delta / 'items.jsonl'}"], check=True)
        command_s = time.perf_counter() - t0
        out = {"precache_stage_seconds": precache_s, "refresh_command_seconds": round(command_s, 1), **check(run)}
    out["ratio_refresh"] = round(out["refresh_seconds"] / precache_s, 3)
    out["ratio_command"] = round(command_s / precache_s, 3)
    from semconv.hardware import machine_info

    out["machine"] = machine_info()
    print("| figure | value |\n| --- | --- |")
    for k, v in out.items():
        print(f"| {k} | {v} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

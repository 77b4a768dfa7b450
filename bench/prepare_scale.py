"""Benchmark: ``prepare`` on a synthetic Parquet input, the start commit's row readers vs the
columnar readers, each in a fresh process.

The input: ``N`` interactions (``user_id``, ``item_id`` strings, ``timestamp``) over N/20 users and
min(N/50, 200k) items with short titles, written once as Parquet. Measured per variant: wall time
of reading + cleaning + dense ids + ``sequences/`` (``read_raw``, ``clean``, ``build_tables``: the
code the columnar change touched; leave-last-out ``splits/`` is the same code in both and is left
out), and the process's peak resident memory (``ru_maxrss``) against the input's size on disk.
"before" runs ``readers.py`` and ``prepare.py`` of commit ``--before`` (``git show`` into a temp
module, never a checkout).

    python bench/prepare_scale.py --quick --json out.json         # 200k interactions
    python bench/prepare_scale.py --interactions 2000000 10000000 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def make_input(n: int, root: Path) -> tuple[str, str, int]:
    """Synthetic Parquet (interactions, items) of ``n`` interactions; cached per ``n``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    d = root / f"n{n}"
    inter, items = d / "interactions.parquet", d / "items.parquet"
    if not inter.exists():
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        n_users, n_items = max(1, n // 20), max(10, min(n // 50, 200_000))
        item_keys = pa.array([f"item{i}" for i in range(n_items)])
        pq.write_table(pa.table({"item_id": item_keys, "title": pc.binary_join_element_wise(
            "Product ", item_keys, ""), "description": pa.array([""] * n_items)}), items)
        users = pc.binary_join_element_wise("user", pc.cast(pa.array(rng.integers(0, n_users, n)), pa.string()), "")
        its = pc.binary_join_element_wise("item", pc.cast(pa.array(rng.integers(0, n_items, n)), pa.string()), "")
        pq.write_table(pa.table({"user_id": users, "item_id": its,
                                 "timestamp": pa.array(rng.integers(0, 10**9, n))}), inter, row_group_size=1 << 20)
    return str(inter), str(items), inter.stat().st_size + items.stat().st_size


def _old_prepare(commit: str):
    """``prepare`` of ``commit`` with its own ``readers``, as importable temp modules."""
    tmp = Path(tempfile.mkdtemp(prefix="semconv-old-prepare-"))
    readers = subprocess.check_output(["git", "show", f"{commit}:platform/semconv/data/readers.py"], cwd=REPO, text=True)
    prepare = subprocess.check_output(["git", "show", f"{commit}:platform/semconv/data/prepare.py"], cwd=REPO, text=True)
    (tmp / "old_readers.py").write_text(readers)
    (tmp / "old_prepare.py").write_text(prepare.replace("from semconv.data.readers import", "from old_readers import"))
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("old_prepare", tmp / "old_prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(variant: str, inter: str, items: str, commit: str) -> dict:
    """One variant in this process: read, clean, build the tables."""
    from semconv.data.config import PrepareConfig

    prep = _old_prepare(commit) if variant == "before" else __import__("semconv.data.prepare", fromlist=["x"])
    cfg = PrepareConfig(format="generic", interactions=inter, items=items)
    t0 = time.perf_counter()
    raw_inter, raw_items, report, isrc, msrc = prep.read_raw(cfg)
    t_read = time.perf_counter() - t0
    clean_inter, clean_items = prep.clean(raw_inter, raw_items, cfg, report, isrc, msrc)
    items_t, seqs = prep.build_tables(clean_inter, clean_items)
    total = time.perf_counter() - t0
    return {"variant": variant, "read_s": round(t_read, 2), "read_clean_build_s": round(total, 2),
            "users": seqs.num_rows, "items": items_t.num_rows, "rows_read": raw_inter.num_rows,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k interactions")
    ap.add_argument("--interactions", type=int, nargs="+", default=[2_000_000])
    ap.add_argument("--variants", nargs="+", default=["before", "after"])
    ap.add_argument("--before", default="daa7c0d", help="commit whose readers/prepare are 'before'")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "semconv-prepare-scale")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", nargs=4, metavar=("VARIANT", "INTER", "ITEMS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        variant, inter, items, out = args.one
        Path(out).write_text(json.dumps(measure(variant, inter, items, args.before)))
        return
    sizes = [200_000] if args.quick else args.interactions
    rows = []
    for n in sizes:
        inter, items, disk = make_input(n, args.data)
        for variant in args.variants:
            out = Path(tempfile.mktemp(suffix=".json"))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--before", args.before, "--one", variant, inter, items, str(out)])
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                rows.append({"n": n, "variant": variant, "failed": proc.returncode, "process_s": round(wall, 1)})
                continue
            res = json.loads(out.read_text())
            res.update(n=n, input_mib=round(disk / 2**20, 1), process_s=round(wall, 1),
                       rss_over_input=round(res["peak_rss_mib"] / (disk / 2**20), 1))
            rows.append(res)
            print(json.dumps(res), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (AMD EPYC, AVX2 only here)")
    print("| interactions | readers | input on disk (MiB) | read (s) | read+clean+build (s) | peak RSS (MiB) | RSS / input |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "failed" in r:
            print(f"| {r['n']:,} | {r['variant']} | | | failed (rc {r['failed']}) after {r['process_s']} s | | |")
            continue
        print(f"| {r['n']:,} | {r['variant']} | {r['input_mib']} | {r['read_s']} | {r['read_clean_build_s']} | "
              f"{r['peak_rss_mib']:,} | {r['rss_over_input']}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

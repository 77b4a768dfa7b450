"""Benchmark: the ``prepare`` stage on synthetic Parquet, in memory vs sharded on Ray Data, each
variant in a fresh process.

The input: ``N`` interactions (``user_id``, ``item_id`` strings, ``timestamp``) over N/20 users and
min(N/50, 200k) items with short titles, written once as Parquet. Each variant runs the whole
stage (``run_prepare``: read, clean, dense ids, ``items/``, ``sequences/``, ``splits/`` written)
the way ``jobs/prepare.py`` runs it, Ray started first (not timed):

* ``memory``: ``prepare.ray_data=off``, every table in the driver (splits on Ray Data, gathered);
* ``sharded``: ``prepare.ray_data=on`` (:mod:`semconv.data.sharded`).

Measured: the stage's seconds; the driver's peak resident memory (``ru_maxrss``); and, sampled
every 0.2 s from ``/proc``, the driver's and every Ray worker's resident memory and its private
part (``RssAnon``). RSS includes the object-store pages a process maps (shared, zero-copy
blocks: a driver that streams every output block through it maps them all), so the private
peak is what a process itself holds.

    python bench/prepare_scale.py --quick --json out.json         # 200k interactions
    python bench/prepare_scale.py --interactions 1000000 10000000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
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


def _status(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident, object-store pages a process maps included), ``RssAnon`` (its own
    heap) and ``RssShmem`` (shared memory: the object store) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return {k: out.get(k, 0) for k in ("VmRSS", "RssAnon", "RssShmem")}  # none for a zombie


class Memory:
    """Samples every 0.2 s the driver's and its Ray workers' (descendants named ``ray::...``)
    resident memory: peaks of RSS and of the private part (``RssAnon``), per process."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.me, self.every = psutil.Process(), every
        self.peak = {"driver_rss": 0, "driver_anon": 0, "worker_rss": 0, "worker_anon": 0, "workers_anon_sum": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.is_set():
            s = _status(self.me.pid)
            self._max("driver_rss", s["VmRSS"])
            self._max("driver_anon", s["RssAnon"])
            total = 0
            for p in self.me.children(recursive=True):
                try:
                    if not (p.name().startswith("ray::") or "default_worker.py" in " ".join(p.cmdline())):
                        continue
                    s = _status(p.pid)
                except (psutil.Error, OSError):
                    continue
                self._max("worker_rss", s["VmRSS"])
                self._max("worker_anon", s["RssAnon"])
                total += s["RssAnon"]
            self._max("workers_anon_sum", total)
            time.sleep(self.every)

    def _max(self, key: str, value: int) -> None:
        self.peak[key] = max(self.peak[key], value)

    def __enter__(self) -> Memory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def measure(variant: str, inter: str, items: str, run_dir: str, overrides: list[str]) -> dict:
    """One variant in this process: start Ray, run the stage."""
    import ray

    from semconv.artifacts import RunDir
    from semconv.config import load_config
    from semconv.data.prepare import run_prepare
    from semconv.ray_env import init_ray

    cfg = load_config(None, [f"run_dir={run_dir}", "prepare.format=generic", f"prepare.interactions={inter}",
                             f"prepare.items={items}", f"prepare.ray_data={'on' if variant == 'sharded' else 'off'}",
                             *overrides])
    t0 = time.perf_counter()
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t_ray = time.perf_counter() - t0
    with Memory() as mem:
        t0 = time.perf_counter()
        run_prepare(cfg)
        seconds = time.perf_counter() - t0
    stats = RunDir(run_dir).manifest("sequences")["stats"]
    return {"variant": variant, "stage_s": round(seconds, 1), "ray_start_s": round(t_ray, 1),
            "users": stats["users"], "items": stats["items"], "interactions": stats["interactions"],
            "driver_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            **{f"{k}_mib": round(v / 2**20) for k, v in mem.peak.items()}}


def cpu_name() -> str:
    try:
        for line in subprocess.check_output(["lscpu"], text=True).splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200k interactions")
    ap.add_argument("--interactions", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--variants", nargs="+", default=["memory", "sharded"], choices=["memory", "sharded"])
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "semconv-prepare-scale")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. prepare.num_blocks=12")
    ap.add_argument("--one", nargs=5, metavar=("VARIANT", "INTER", "ITEMS", "RUN_DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        variant, inter, items, run_dir, out = args.one
        Path(out).write_text(json.dumps(measure(variant, inter, items, run_dir, args.set)))
        return
    sizes = [200_000] if args.quick else args.interactions
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    rows = []
    for n in sizes:
        inter, items, disk = make_input(n, args.data)
        for variant in args.variants:
            out = Path(tempfile.mktemp(suffix=".json"))
            run_dir = tempfile.mkdtemp(prefix=f"semconv-prepare-{variant}-")
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--one", variant, inter, items, run_dir, str(out),
                                   "--set", *args.set])
            wall = time.perf_counter() - t0
            subprocess.run(["rm", "-rf", run_dir])
            row = {"n": n, "variant": variant, "input_mib": round(disk / 2**20, 1), "process_s": round(wall, 1),
                   "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1), "machine": machine,
                   "overrides": args.set}
            if proc.returncode != 0:
                row["failed"] = proc.returncode
            else:
                row.update(json.loads(out.read_text()))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine}")
    print("Peaks in MiB: RSS (object-store pages mapped included) / private (RssAnon).\n")
    print("| interactions | variant | input (MiB) | stage (s) | driver RSS / private | largest worker RSS / private "
          "| workers' private, summed | load avg before/after |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        if "failed" in r:
            print(f"| {r['n']:,} | {r['variant']} | {r['input_mib']} | failed (rc {r['failed']}) after "
                  f"{r['process_s']} s | | | | |")
            continue
        print(f"| {r['n']:,} | {r['variant']} | {r['input_mib']} | {r['stage_s']} | {r['driver_maxrss_mib']:,} / "
              f"{r['driver_anon_mib']:,} | {r['worker_rss_mib']:,} / {r['worker_anon_mib']:,} | "
              f"{r['workers_anon_sum_mib']:,} | {r['load_before']} / {r['load_after']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

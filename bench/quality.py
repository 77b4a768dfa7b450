"""Quality benchmark: the full protocol on the demo data, ours vs popularity vs SASRec vs CF.

Runs :func:`semconv.pipeline.run_pipeline` (every stage, skipping complete artifacts, so a rerun
only re-prints) and prints the test table from ``report/metrics.json`` with each system's ratio
to the baselines measured in the same run.

``--quick`` is a reduced run of a few minutes on 2 CPU cores, documented in ``QUICK_OVERRIDES``:
a deterministic sample of ``--users`` users (every n-th user id, 300 by default) written as an
LC-Rec dataset beside the run, and shorter training everywhere. Its numbers show the pipeline
works end to end; they are not comparable with the full run's.

    python bench/quality.py --quick --json quality.json
    python bench/quality.py --set finetune.max_steps=2000       # the full protocol
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "Scientific"
METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10")
QUICK_USERS = 300
# Shorter training in every stage; each line names what it trades away. Measured on 2 shared,
# heavily loaded cores with 100 users and 10 LoRA steps: 19 min in all (embed 110 s, tokenize
# 468 s, finetune 460 s, precache 90 s, evaluate 4 s), so expect minutes on an idle machine.
QUICK_OVERRIDES = [
    "embed.cf.epochs=3",              # CF item vectors: 3 epochs instead of 30
    "tokenize.epochs=3",              # codebook: 3 epochs after k-means init instead of 50
    "finetune.max_steps=20",          # LoRA: 20 steps instead of 200
    "precache.num_beams=10",          # beam 10 (= top_k) instead of 20
    "evaluate.sasrec.max_seconds=60",  # SASRec: at most a minute
]


def subset_dataset(src: Path, dst: Path, users: int, name: str = "Scientific") -> Path:
    """Write an LC-Rec dataset with every n-th user of ``src`` (``users`` of them), same items."""
    inter = json.loads((src / f"{name}.inter.json").read_text())
    ids = sorted(inter, key=int)
    step = max(1, len(ids) // users)
    keep = ids[::step][:users]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / f"{name}.inter.json").write_text(json.dumps({u: inter[u] for u in keep}))
    (dst / f"{name}.item.json").write_text((src / f"{name}.item.json").read_text())
    return dst


def ratios(systems: dict[str, dict[str, float]], baseline: str) -> dict[str, dict[str, float | None]]:
    """Each system's metric divided by ``baseline``'s (None where the baseline scores 0)."""
    base = systems.get(baseline)
    if base is None:
        return {}
    return {name: {m: (s[m] / base[m] if base.get(m) else None) for m in METRICS if m in s}
            for name, s in systems.items()}


def format_table(systems: dict[str, dict[str, float]]) -> str:
    """Rows = systems, columns = metrics, then HR@10 and NDCG@10 relative to popularity and SASRec."""
    rel = {b: ratios(systems, b) for b in ("popularity", "sasrec") if b in systems}
    head = ["system", *METRICS] + [f"{m} / {b}" for b in rel for m in ("HR@10", "NDCG@10")]
    rows = []
    for name in [s for s in ("semconv", "cf", "sasrec", "popularity") if s in systems] + \
            sorted(s for s in systems if s not in ("semconv", "cf", "sasrec", "popularity")):
        cells = [name] + [f"{systems[name].get(m, float('nan')):.4f}" for m in METRICS]
        for b in rel:
            for m in ("HR@10", "NDCG@10"):
                r = rel[b].get(name, {}).get(m)
                cells.append("-" if r is None else f"{r:.2f}x")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def build_config(args: argparse.Namespace) -> tuple[Any, list[str]]:
    from semconv.config import load_config

    run_dir = args.run_dir or str(REPO / "runs" / ("quality-quick" if args.quick else "quality"))
    overrides = [f"run_dir={run_dir}", f"prepare.dataset={DEMO}"]
    if args.quick:
        data = subset_dataset(DEMO, Path(run_dir) / "_data" / "Scientific", args.users)
        overrides = [f"run_dir={run_dir}", f"prepare.dataset={data}", "prepare.name=Scientific",
                     *QUICK_OVERRIDES]
    overrides += args.overrides
    return load_config(args.config, overrides), overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ours vs popularity vs SASRec vs CF on the demo data")
    parser.add_argument("--quick", action="store_true", help="reduced run (see QUICK_OVERRIDES)")
    parser.add_argument("--users", type=int, default=QUICK_USERS, help="users in the --quick sample")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics table here")
    parser.add_argument("--run-dir", default=None, help="default: runs/quality[-quick]")
    parser.add_argument("--config", default=None, help="pipeline YAML (default: the demo config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from semconv.artifacts import RunDir
    from semconv.pipeline import run_pipeline
    from semconv.ray_env import init_ray

    cfg, overrides = build_config(args)
    init_ray(cfg.ray.address, cfg.ray.num_cpus)  # as the semconv CLI does: a fresh local Ray
    start = time.perf_counter()
    run_pipeline(cfg)
    seconds = time.perf_counter() - start
    run = RunDir(cfg.run_dir)
    with run.fs.open_input_stream(f"{run.path('report')}/metrics.json") as f:
        metrics = json.loads(f.read().decode())
    systems = metrics["systems"]
    print(f"\ntest split, {metrics['users']} users, {metrics['items']} items, all items ranked "
          f"({'quick' if args.quick else 'full'} run, config {metrics['config_hash']}, {seconds:.0f} s)")
    print(format_table(systems))
    for name, why in metrics.get("skipped", {}).items():
        print(f"{name}: not evaluated ({why})")
    if args.json:
        out = {"quick": args.quick, "overrides": overrides, "config_hash": metrics["config_hash"],
               "users": metrics["users"], "items": metrics["items"], "systems": systems,
               "ratios": {b: ratios(systems, b) for b in ("popularity", "sasrec") if b in systems},
               "missing_users": metrics.get("missing_users", {}), "pipeline_seconds": seconds}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

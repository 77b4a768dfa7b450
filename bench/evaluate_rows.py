"""What the evaluate stage's driver holds before any baseline runs, at millions of users.

Synthetic ``sequences/`` and ``splits/`` tables for ``--users`` users (``bench/synthetic.py``'s
history lengths, item ids below 300k: the shape of ``bench/scale.py``'s 30M run), then
``read_split`` of valid and test and SASRec's ``training_pairs`` at ``max_len`` 50, each checkout's
code in a fresh process. Private memory (``RssAnon``) after each step and the process peak. Pass
``--baseline PATH`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/base REV``)
to measure it in the same run and print the ratios.

    python bench/evaluate_rows.py --quick --json /tmp/evaluate-rows.json
    python bench/evaluate_rows.py --users 1643723 --baseline /tmp/base --json rows.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import machine, proc_status  # noqa: E402
from synthetic import history_lengths  # noqa: E402


def private_gb() -> float:
    return proc_status(os.getpid())["RssAnon"] / 1e9


def child(users: int) -> dict:
    """One measurement, in a process whose ``sys.path[0]`` is the checkout's ``platform/``."""
    import numpy as np
    import pyarrow as pa

    from semconv.evaluate.protocol import read_split
    from semconv.evaluate.sasrec import training_pairs
    from semconv.protocol import split_bounds

    rng = np.random.default_rng(0)
    n = history_lengths(rng, users)
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int32)
    items = pa.array(rng.integers(0, 300_000, int(n.sum()), dtype=np.int32))
    seq = pa.table({"user_id": pa.array(np.arange(users, dtype=np.int64)),
                    "history": pa.ListArray.from_arrays(pa.array(offsets), items)})
    bounds = split_bounds(seq)
    gc.collect()
    a0, t0 = private_gb(), time.perf_counter()
    rows = {s: read_split(seq, bounds, s, 50) for s in ("valid", "test")}
    gc.collect()
    a1, t1 = private_gb(), time.perf_counter()
    x, _ = training_pairs(rows["valid"].histories, 50)
    gc.collect()
    a2, t2 = private_gb(), time.perf_counter()
    return {"users": users, "interactions": int(n.sum()), "split_rows_gb": a1 - a0, "pairs_gb": a2 - a1,
            "pairs_dtype": str(x.dtype), "seconds": t2 - t0,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def measure(checkout: Path, users: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(users), "--platform", str(checkout / "platform")],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_643_723, help="synthetic users (default: the 30M run's)")
    ap.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, measured in the same run")
    ap.add_argument("--quick", action="store_true", help="200,000 users")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--platform", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.platform)
        print(json.dumps(child(args.child)))
        return
    users = 200_000 if args.quick else args.users
    runs = {"current": measure(REPO, users)}
    if args.baseline:
        runs = {"baseline": measure(args.baseline.resolve(), users), **runs}
    print(f"{users:,} users, {runs['current']['interactions']:,} interactions")
    print(f"{'code':<10} {'split rows GB':>14} {'pairs GB':>9} {'pairs':>6} {'seconds':>8} {'peak GB':>8}")
    for name, r in runs.items():
        print(f"{name:<10} {r['split_rows_gb']:>14.2f} {r['pairs_gb']:>9.2f} {r['pairs_dtype']:>6} "
              f"{r['seconds']:>8.1f} {r['peak_gb']:>8.2f}")
    result = {"machine": machine(), "users": users, "runs": runs}
    if "baseline" in runs:
        result["peak_ratio"] = runs["current"]["peak_gb"] / runs["baseline"]["peak_gb"]
        print(f"peak: current / baseline {result['peak_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

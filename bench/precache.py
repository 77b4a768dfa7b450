"""Benchmark: precache throughput of our constrained beam search vs Hugging Face ``generate``.

Same run, same users, same model (SmolLM2-135M + 1,024 code tokens with seeded random rows,
4,344 items with random unique 4-level codes, or the demo run's ``item_codes/`` when there is
one), LC-Rec-style prompts of 5-20 history items, beam 20, top-10, one torch thread:

* naive: ``generate(num_beams=20, num_return_sequences=10, max_new_tokens=4,
  prefix_allowed_tokens_fn=trie)`` one user at a time (its best batch size, see shared README);
* ours, fp32 and bf16 (``GenerativeRanker``: one prefill per prompt, tree-attention beams, shared
  preamble KV, trie tables);
* the physical bound: one plain forward over the same prompts (prefill only), fp32 and bf16;
* the Ray Data actor pool with 1 and 2 actors on the same users (wall clock, model load included).

fp32 results must equal ``generate``'s top-10 (``same_topk_fraction``). ``--synthetic-users N``
instead precaches N synthetic users with a tiny random model through the full resumable job and
reports users/s and resident memory as it goes (flat: it must not grow with users).

    python bench/precache.py --quick --json out.json
    python bench/precache.py --synthetic-users 100000 --json synth.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import save_tiny_llama  # noqa: E402

from semconv.inference.beam_search import encode_prefix  # noqa: E402
from semconv.inference.loading import ModelSpec, load_with_random_code_tokens  # noqa: E402
from semconv.inference.ranker import GenerativeRanker, pad_prompts  # noqa: E402
from semconv.inference.run_ranker import RankerSpec  # noqa: E402
from semconv.models import resolve  # noqa: E402

NUM_ITEMS, LEVELS, CODES, BEAMS, K = 4344, 4, 256, 20, 10


def item_codes(seed: int = 0) -> tuple[np.ndarray, str]:
    demo = REPO / "runs" / "demo" / "item_codes"
    if (demo / "_SUCCESS").exists():
        from semconv.artifacts import RunDir
        from semconv.codes import read_item_codes

        _, codes = read_item_codes(RunDir(demo.parent))
        return codes, "demo run item_codes"
    rng = np.random.default_rng(seed)
    flat = rng.choice(CODES**LEVELS, size=NUM_ITEMS, replace=False)
    codes = np.stack([(flat // CODES ** (LEVELS - 1 - l)) % CODES for l in range(LEVELS)], 1)
    return codes, f"random unique codes, {NUM_ITEMS} items"


def histories(n: int, num_items: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_items, size=rng.integers(5, 21)).tolist() for _ in range(n)]


def timed(fn):
    t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - t0[0], time.perf_counter() - t0[1]


# ---- the naive baseline ------------------------------------------------------------------------
def hf_generate_topk(ranker: GenerativeRanker, hist: list[list[int]]) -> np.ndarray:
    """LC-Rec's decoding: HF beam search with a prefix_allowed_tokens_fn over a dict trie."""
    model, trie = ranker.model, ranker.trie
    tok_of = [t.tolist() for t in trie.token_ids]
    allowed: dict[tuple[int, ...], list[int]] = {}
    item_of: dict[tuple[int, ...], int] = {}
    for item, codes in zip(ranker.item_ids.tolist(), ranker.item_codes.tolist()):
        toks = tuple(tok_of[l][c] for l, c in enumerate(codes))
        for l in range(LEVELS):
            allowed.setdefault(toks[:l], set()).add(toks[l])
        item_of[toks] = item
    allowed = {k: sorted(v) for k, v in allowed.items()}
    out = np.full((len(hist), K), -1, dtype=np.int64)
    for u, ids in enumerate(ranker.encode(hist)):
        p = len(ids)
        x = torch.tensor([ids])
        gen = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), num_beams=BEAMS, num_return_sequences=K,
            max_new_tokens=LEVELS, do_sample=False, length_penalty=0.0, early_stopping=True,
            prefix_allowed_tokens_fn=lambda b, s: allowed.get(tuple(s[p:].tolist()), [ranker.pad_id]),
            pad_token_id=ranker.pad_id,
        )
        out[u] = [item_of.get(tuple(s[p:].tolist()), -1) for s in gen]
    return out


@torch.no_grad()
def prefill_only(ranker: GenerativeRanker, hist: list[list[int]], batch_size: int = 16) -> None:
    ids = ranker.encode(hist)
    order = np.argsort([len(x) for x in ids])
    for s in range(0, len(ids), batch_size):
        x, m = pad_prompts([ids[i] for i in order[s : s + batch_size]], ranker.pad_id)
        ranker.model(input_ids=x, attention_mask=m, logits_to_keep=1)


# ---- Ray Data actor pool -------------------------------------------------------------------------
def actor_pool_rate(spec: ModelSpec, codes: np.ndarray, hist: list[list[int]], actors: int) -> float:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import ray.data

    from semconv.inference.precache import ShardPlan, open_partial, precache_users

    table = pa.table({"user_id": pa.array(np.arange(len(hist)), pa.int64()), "history": hist})
    plan = ShardPlan.from_user_ids(table["user_id"].to_numpy(), max(1, len(hist) // 4))
    with tempfile.TemporaryDirectory() as tmp:
        fs = pafs.LocalFileSystem()
        open_partial(fs, tmp, plan, {})
        stats = precache_users(ray.data.from_arrow(table), plan, fs, tmp, RankerSpec(spec, BEAMS, K, None, False),
                               codes, batch_size=16, sort_window=1, num_actors=actors, presorted=True)
    return len(hist) / stats["seconds"]


def main_compare(args) -> dict:
    torch.set_num_threads(1)
    base = str(resolve("smollm2-135m"))
    codes, codes_src = item_codes()
    n_naive, n_ours, n_actor = (8, 32, 64) if args.quick else (40, 160, 320)
    hist = histories(max(n_naive, n_ours), len(codes))
    model, tok = load_with_random_code_tokens(base, LEVELS, CODES, torch.float32, seed=0)
    ranker = GenerativeRanker(model, tok, codes, BEAMS, K, batch_size=16)
    lens = [len(x) for x in ranker.encode(hist)]
    print(f"model SmolLM2-135M + {LEVELS * CODES} code tokens; {len(codes)} items ({codes_src}); "
          f"prompts {min(lens)}-{max(lens)} tokens; beam {BEAMS}, K {K}; 1 torch thread", flush=True)

    rows, res = [], {}

    def note(row):
        rows.append(row)
        print(f"  {row[0]}: {row[1]} users, {row[2]:.2f} users/CPU-s", flush=True)
    naive, c, w = timed(lambda: hf_generate_topk(ranker, hist[:n_naive]))
    note(("HF generate fp32 (batch 1)", n_naive, n_naive / c, n_naive / w))
    ours, c2, w2 = timed(lambda: ranker.rank(hist[:n_ours]))
    note(("ours fp32 (batch 16)", n_ours, n_ours / c2, n_ours / w2))
    same = float((ours[0][:n_naive] == naive).all(1).mean())
    same_set = float(np.mean([set(a) == set(b) for a, b in zip(ours[0][:n_naive], naive)]))
    _, c3, w3 = timed(lambda: prefill_only(ranker, hist[:n_ours]))
    note(("prefill only fp32 (bound)", n_ours, n_ours / c3, n_ours / w3))

    ranker.model.to(torch.bfloat16)
    ranker.prefix = encode_prefix(ranker.model, ranker.prefix.ids)  # bf16 prefix KV
    ours_bf, c4, w4 = timed(lambda: ranker.rank(hist[:n_ours]))
    note(("ours bf16 (batch 16)", n_ours, n_ours / c4, n_ours / w4))
    _, c5, w5 = timed(lambda: prefill_only(ranker, hist[:n_ours]))
    note(("prefill only bf16 (bound)", n_ours, n_ours / c5, n_ours / w5))
    bf_top1 = float((ours_bf[0][:, 0] == ours[0][:, 0]).mean())

    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    spec = ModelSpec(base_model=base, dtype="bfloat16", code_levels=LEVELS, codes_per_level=CODES)
    ahist = histories(n_actor, len(codes), seed=2)
    r1 = actor_pool_rate(spec, codes, ahist, 1)
    r2 = actor_pool_rate(spec, codes, ahist, 2)
    ray.shutdown()
    rows.append(("Ray Data pool, 1 actor bf16 (wall)", n_actor, float("nan"), r1))
    rows.append(("Ray Data pool, 2 actors bf16 (wall)", n_actor, float("nan"), r2))

    print(f"\n{'decoder':38s} {'users':>6s} {'users/CPU-s':>12s} {'users/s wall':>13s}")
    for name, n, per_cpu, per_wall in rows:
        print(f"{name:38s} {n:6d} {per_cpu:12.2f} {per_wall:13.2f}")
    res = {
        "same_topk_fraction": same,
        "same_topk_set_fraction": same_set,
        "speedup_vs_hf_generate": (n_ours / c2) / (n_naive / c),
        "fraction_of_prefill_bound": (n_ours / c2) / (n_ours / c3),
        "fraction_of_prefill_bound_bf16": (n_ours / c4) / (n_ours / c5),
        "bf16_speedup_vs_fp32": (n_ours / c4) / (n_ours / c2),
        "bf16_top1_agrees_with_fp32": bf_top1,
        "scaling_2_actors": r2 / r1,
        "users_per_cpu_s": {name: per_cpu for name, _, per_cpu, _ in rows if per_cpu == per_cpu},
        "users_per_wall_s": {name: per_wall for name, _, _, per_wall in rows},
        "load_average_1min_at_end": os.getloadavg()[0],
        "sizes": {"naive_users": n_naive, "ours_users": n_ours, "actor_users": n_actor,
                  "items": len(codes), "item_codes": codes_src, "prompt_tokens": [min(lens), max(lens)],
                  "beams": BEAMS, "k": K, "cpus": os.cpu_count()},
    }
    print(f"\nsame top-{K} as generate (fp32, ordered): {same:.1%} of {n_naive} users (as sets {same_set:.1%})")
    print(f"speedup vs HF generate (CPU time): {res['speedup_vs_hf_generate']:.1f}x; fraction of "
          f"prefill-only rate: fp32 {res['fraction_of_prefill_bound']:.2f}, bf16 "
          f"{res['fraction_of_prefill_bound_bf16']:.2f}; 2 vs 1 actors: {res['scaling_2_actors']:.2f}x")
    return res


# ---- synthetic mode -------------------------------------------------------------------------------
def _tree_rss() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _synthetic_users(batch, num_items: int):
    ids = batch["id"].astype(np.int64)
    rng = np.random.default_rng(int(ids[0]) if len(ids) else 0)
    lens = rng.integers(5, 21, size=len(ids))
    return {"user_id": ids, "history": [rng.integers(0, num_items, size=n) for n in lens]}


def main_synthetic(args) -> dict:
    import pyarrow.fs as pafs
    import ray
    import ray.data

    from semconv.inference.precache import ShardPlan, open_partial, precache_users

    n = args.synthetic_users
    codes, codes_src = item_codes()
    work = Path(tempfile.mkdtemp(prefix="semconv-bench-"))
    tok = save_tiny_llama(work / "tiny")
    spec = ModelSpec(base_model=str(work / "tiny"), dtype="float32", code_levels=LEVELS, codes_per_level=CODES)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.init(address="local", num_cpus=args.actors + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    plan = ShardPlan(tuple(range(0, n, args.users_per_shard)),
                     tuple(min(args.users_per_shard, n - s) for s in range(0, n, args.users_per_shard)),
                     args.users_per_shard)
    fs, partial = pafs.LocalFileSystem(), str(work / "precache.partial")
    open_partial(fs, partial, plan, {})
    users = ray.data.range(n).map_batches(_synthetic_users, fn_kwargs={"num_items": len(codes)})
    samples, stop = [], threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not stop.is_set():
            done = len([f for f in os.listdir(partial) if f.startswith("shard-")])
            samples.append((time.perf_counter() - t0, done * args.users_per_shard, _tree_rss()))
            stop.wait(2.0)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stats = precache_users(users, plan, fs, partial, RankerSpec(spec, BEAMS, K, None, False), codes,
                           batch_size=args.batch_size, sort_window=4, num_actors=args.actors, presorted=True)
    stop.set()
    th.join()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    rss = np.array([s[2] for s in samples]) / 2**20
    half = len(rss) // 2
    print(f"{n} synthetic users, tiny Llama (hidden 64, 2 layers, {len(tok)}-token BPE) + {LEVELS * CODES} code tokens, "
          f"{len(codes)} items, beam {BEAMS}, K {K}, {args.actors} actor(s)")
    print(f"{'t (s)':>8s} {'users done':>11s} {'RSS all procs (MiB)':>20s}")
    for t, done, r in samples[:: max(1, len(samples) // 12)]:
        print(f"{t:8.1f} {done:11d} {r / 2**20:20.0f}")
    res = {"synthetic_users": n, "users_per_s": n / stats["seconds"], "seconds": stats["seconds"],
           "peak_rss_mib": float(rss.max()), "peak_rss_first_half_mib": float(rss[:half].max()) if half else None,
           "peak_rss_second_half_mib": float(rss[half:].max()), "actors": args.actors,
           "users_per_shard": args.users_per_shard, "batch_size": args.batch_size, "items": len(codes),
           "vocab": len(tok), "cpu_count": os.cpu_count()}
    print(f"users/s {res['users_per_s']:.0f}; peak RSS {res['peak_rss_mib']:.0f} MiB "
          f"(first half {res['peak_rss_first_half_mib']}, second half {res['peak_rss_second_half_mib']:.0f})")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--synthetic-users", type=int, default=0, help="run the synthetic-scale mode")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--users-per-shard", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=128, help="users per decoding batch (synthetic mode)")
    args = ap.parse_args()
    res = main_synthetic(args) if args.synthetic_users else main_compare(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: the Ray Serve lookup endpoint vs a bare FastAPI/uvicorn app on the same arrays.

All servers run the same routes (``serve_app.api.build_api``) over the same memory-mapped
precache, each in its own process; a bounded open-loop load generator on 127.0.0.1 offers each
the same request rate (after one unrecorded warm-up round each), rotating the order per round so
background load hits all alike; a server's p50/p99 is the median over its rounds. Serve runs with
bearer-token auth on (``SEMCONV_API_TOKEN``); the bare app runs twice, without and with the same
auth middleware, so the auth check's cost is measured in the same run (plus the middleware alone,
in process, per request). Also measured, in fresh processes: the load time and resident memory
of a synthetic 1M users x top-50 precache (first load converts the Parquet shards once; later
loads memory-map the cache).

    python bench/serve_lookup.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semconv.artifacts import RunDir  # noqa: E402

N_ITEMS = 50_000


# ---- synthetic run dir ----------------------------------------------------------------------
def write_run_dir(root: Path, users: int, k: int, shards: int = 8, seed: int = 0) -> RunDir:
    rng = np.random.default_rng(seed)
    rd = RunDir(root)
    ids = np.arange(N_ITEMS)
    rd.write_table("items", pa.table({
        "item_id": pa.array(ids, pa.int64()), "source_id": [f"B{i:08d}" for i in ids],
        "title": [f"Synthetic item {i}" for i in ids], "description": [""] * N_ITEMS,
        "brand": [""] * N_ITEMS, "categories": [""] * N_ITEMS,
    }))
    rd.write_table("splits", pa.table({
        "split": ["train"] * 1000, "user_id": pa.array(np.arange(1000), pa.int64()),
        "history": pa.array([[1]] * 1000, pa.list_(pa.int64())),
        "target": pa.array(rng.integers(0, N_ITEMS, 1000), pa.int64()),
    }))
    user_ids = rng.permutation(users).astype(np.int64)  # shards are not sorted by user
    offsets = pa.array(np.arange(0, users * k + 1, k, dtype=np.int32))
    items = pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, N_ITEMS, users * k, dtype=np.int64)))
    scores = pa.ListArray.from_arrays(offsets, pa.array(-np.sort(rng.random((users, k), dtype=np.float32), axis=1).ravel()))
    rd.write_table("precache", pa.table({"user_id": user_ids, "items": items, "scores": scores}),
                   num_shards=shards, manifest={"K": k, "users": users, "version": f"synthetic-{users}x{k}"})
    return rd


# ---- load time and memory (run in a fresh process) ------------------------------------------
def rss_mb(field: str = "VmRSS") -> float:
    """Resident (``VmRSS``) or peak resident (``VmHWM``) memory of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_load(run_dir: str, cache: str) -> dict:
    import pyarrow.compute  # noqa: F401  (a replica has these imported before it loads anything;
    import pyarrow.dataset  # noqa: F401   pyarrow.parquet imports pyarrow.dataset lazily, ~1-2 s)
    import pyarrow.parquet  # noqa: F401

    from semconv.serving.state import load_state

    before = rss_mb()
    t0 = time.perf_counter()
    state = load_state(run_dir, cache_dir=cache)
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    rng = np.random.default_rng(1)
    store = state.store
    users = rng.integers(0, store.num_users, 20_000)
    t1 = time.perf_counter()
    for u in users:
        store.lookup(int(u), 10)
    lookup_us = (time.perf_counter() - t1) / len(users) * 1e6
    return {"load_s": load_s, "rss_mb_before": before, "rss_mb_after_load": after_load,
            "rss_mb_after_20k_lookups": rss_mb(), "peak_rss_mb": rss_mb("VmHWM"),
            "store_lookup_us": lookup_us, "users": store.num_users, "k": store.k}


def load_in_subprocess(run_dir: str, cache: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_measure-load", run_dir, cache],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- servers --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "bench-" + "0" * 59  # a 64-character token, the length of `openssl rand -hex 32`


def run_bare(run_dir: str, cache: str, port: int, token: str) -> None:
    import uvicorn

    from semconv.serving.state import load_state
    from serve_app.api import LocalBackend, build_api

    api = build_api(LocalBackend(load_state(run_dir, cache_dir=cache)), api_token=token or None)
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def auth_check_us(n: int = 50_000) -> dict:
    """The bearer middleware alone: microseconds per request it passes (right token) and rejects."""
    from serve_app.middleware import BearerAuth

    async def inner(scope, receive, send):
        return None

    async def sent(message):
        return None

    mw = BearerAuth(inner, TOKEN)
    out = {}
    for name, header in (("pass", f"Bearer {TOKEN}"), ("reject", "Bearer " + "1" * 64)):
        scope = {"type": "http", "path": "/v1/users/1/recommendations",
                 "headers": [(b"host", b"x"), (b"authorization", header.encode())]}

        async def loop():
            t = time.perf_counter()
            for _ in range(n):
                await mw(scope, None, sent)
            return (time.perf_counter() - t) / n * 1e6

        out[name] = asyncio.run(loop())
    return out


def wait_ready(url: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def proxy_env(proxy: str, work: Path) -> dict[str, str]:
    """Cluster env for the Serve ingress. ``haproxy``: Ray's HAProxy ingress (part of
    ``ray[serve]``), which forwards HTTP straight to the replicas' own HTTP servers instead of
    through the Python proxy actor; its files and side ports are private to this run."""
    env = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}  # handlers are async, never block
    if proxy == "haproxy":
        d = work / "hap"  # HAProxy caps its socket path at 97 characters
        d.mkdir(parents=True, exist_ok=True)
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
        })
    return env


def start_serve(run_dir: str, cache: str, port: int, num_cpus: float, env: dict[str, str]) -> str:
    os.environ.update(env)  # before ray.init: the raylet passes it to the controller and replicas
    import ray
    from ray import serve

    from serve_app.app import SemconvIngress

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = SemconvIngress.options(ray_actor_options={"num_cpus": num_cpus}, num_replicas=1).bind(
        {"run_dir": run_dir, "cache_dir": cache, "require_auth": True})  # lookups only: no tokenizer
    serve.run(app, name="semconv", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return url


# ---- load generator -------------------------------------------------------------------------
async def offered_load(url: str, rate: float, n: int, max_s: float, users: int, k: int, seed: int,
                       token: str = TOKEN) -> dict:
    """Open loop: request i is sent at t0 + i / rate (never more than n, never past max_s).
    Every request carries the bearer token (a server without auth ignores it)."""
    import httpx

    rng = np.random.default_rng(seed)
    uids = rng.integers(0, int(users * 1.02), n)  # ~2% unknown users take the fallback path
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits, trust_env=False,
                                 headers={"authorization": f"Bearer {token}"}) as c:
        async def one(uid: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                r = await c.get(f"/v1/users/{uid}/recommendations", params={"k": k})
                ok = r.status_code == 200 and len(r.json()["item_ids"]) == k
            except httpx.HTTPError:
                ok = False
            lat.append(time.perf_counter() - t)
            errors += not ok

        for _ in range(20):  # warm connections and code paths
            await one(0)
        lat.clear()
        errors = 0
        t0 = time.perf_counter()
        tasks = []
        for i, uid in enumerate(uids):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - t0 > max_s:
                break
            tasks.append(asyncio.create_task(one(int(uid))))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"requests": len(a), "errors": errors, "qps": len(a) / wall, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "latencies_ms": a.tolist()}


def merge(rounds: list[dict]) -> dict:
    """Median over rounds of each round's p50/p99 (one background hiccup moves one round only),
    plus the p99 of all requests pooled."""
    pooled = np.concatenate([r["latencies_ms"] for r in rounds])
    return {"requests": int(pooled.size), "errors": sum(r["errors"] for r in rounds),
            "qps": float(np.mean([r["qps"] for r in rounds])),
            "p50_ms": float(np.median([r["p50_ms"] for r in rounds])),
            "p99_ms": float(np.median([r["p99_ms"] for r in rounds])),
            "p99_ms_pooled": float(np.percentile(pooled, 99))}


# ---- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and rounds (about 2-3 minutes)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=50, help="cached top-K")
    ap.add_argument("--request-k", type=int, default=10)
    ap.add_argument("--rate", type=float, default=None, help="offered requests/s (default 100 quick, 150 full)")
    ap.add_argument("--requests", type=int, default=None, help="per round and server")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--replica-cpus", type=float, default=1.0)
    ap.add_argument("--proxy", choices=("haproxy", "python"), default="haproxy",
                    help="Serve ingress: Ray's HAProxy (recommended, see serve_app/README.md) or the Python proxy actor")
    args = ap.parse_args(argv)
    rate = args.rate or (100.0 if args.quick else 150.0)
    per_round = args.requests or (500 if args.quick else 1500)
    rounds = args.rounds or (6 if args.quick else 8)
    max_s = 2 * per_round / rate + 10

    work = Path(tempfile.mkdtemp(prefix="scb", dir="/tmp"))
    run_dir, cache = str(work / "run"), str(work / "cache")
    t = time.perf_counter()
    write_run_dir(Path(run_dir), args.users, args.k)
    print(f"wrote synthetic precache {args.users:,} users x top-{args.k} in {time.perf_counter() - t:.1f}s", flush=True)
    cold = load_in_subprocess(run_dir, cache)
    warm = load_in_subprocess(run_dir, cache)
    print(f"load: first (convert) {cold['load_s']:.2f}s, later (mmap) {warm['load_s']:.2f}s, "
          f"RSS after load {warm['rss_mb_after_load']:.0f} MB", flush=True)

    auth_us = auth_check_us()
    print(f"auth middleware alone: {auth_us['pass']:.2f} us per request passed, {auth_us['reject']:.2f} us rejected", flush=True)
    ports = {"fastapi": free_port(), "fastapi_auth": free_port()}
    bares = {name: subprocess.Popen([sys.executable, __file__, "--_bare", run_dir, cache, str(port),
                                     TOKEN if name == "fastapi_auth" else ""], cwd=REPO)
             for name, port in ports.items()}
    results: dict[str, list[dict]] = {"fastapi": [], "fastapi_auth": [], "serve": []}
    try:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for url in urls.values():
            wait_ready(url)
        os.environ["SEMCONV_API_TOKEN"] = TOKEN  # before ray.init: the replica's environment
        urls["serve"] = start_serve(run_dir, cache, free_port(), args.replica_cpus, proxy_env(args.proxy, work))
        import httpx

        assert httpx.get(f"{urls['serve']}/v1/users/1/recommendations", trust_env=False).status_code == 401
        order = list(urls)
        for name in order:  # warm-up, not recorded
            asyncio.run(offered_load(urls[name], rate, per_round // 2, max_s, args.users, args.request_k, seed=99))
        for r in range(rounds):
            for name in order[r % 3:] + order[: r % 3]:
                res = asyncio.run(offered_load(urls[name], rate, per_round, max_s, args.users, args.request_k, seed=r))
                results[name].append(res)
                print(f"round {r} {name:12s} {res['requests']} req  {res['qps']:.0f} qps  p50 {res['p50_ms']:.2f} ms  "
                      f"p99 {res['p99_ms']:.2f} ms  errors {res['errors']}", flush=True)
    finally:
        for bare in bares.values():
            bare.terminate()
            bare.wait(30)
        try:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        except Exception:
            pass
        subprocess.run(["rm", "-rf", str(work)], check=False)
    fa, fa_auth, sv = merge(results["fastapi"]), merge(results["fastapi_auth"]), merge(results["serve"])
    out = {
        "p99_ratio_vs_fastapi": sv["p99_ms"] / fa_auth["p99_ms"],  # both with auth on
        "p50_ratio_vs_fastapi": sv["p50_ms"] / fa_auth["p50_ms"],
        "p99_ratio_vs_fastapi_pooled": sv["p99_ms_pooled"] / fa_auth["p99_ms_pooled"],
        "auth_p50_delta_ms": fa_auth["p50_ms"] - fa["p50_ms"], "auth_p99_delta_ms": fa_auth["p99_ms"] - fa["p99_ms"],
        "auth_check_us": auth_us,
        "loadavg_1m_at_end": os.getloadavg()[0],
        "errors": sv["errors"] + fa["errors"] + fa_auth["errors"],
        "load_s_1m": warm["load_s"], "first_load_s_1m": cold["load_s"],
        "rss_mb_1m": warm["rss_mb_after_20k_lookups"] - warm["rss_mb_before"],
        "rss_mb_1m_process": warm["rss_mb_after_20k_lookups"], "peak_rss_mb_first_load": cold["peak_rss_mb"],
        "store_lookup_us": warm["store_lookup_us"],
        "proxy": args.proxy, "offered_rate": rate, "requests_per_round": per_round, "rounds": rounds,
        "users": args.users, "k": args.k, "serve": sv, "fastapi": fa, "fastapi_auth": fa_auth, "quick": args.quick,
    }
    print()
    print(f"{'server':20s} {'qps':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99 pooled':>10s} {'errors':>6s}")
    for name, m in (("fastapi", fa), ("fastapi+auth", fa_auth), (f"serve/{args.proxy}+auth", sv)):
        print(f"{name:20s} {m['qps']:6.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['p99_ms_pooled']:10.2f} {m['errors']:6d}")
    print(f"p99 ratio serve/fastapi, auth on in both {out['p99_ratio_vs_fastapi']:.2f} (target <= 1.5), "
          f"p50 ratio {out['p50_ratio_vs_fastapi']:.2f}")
    print(f"auth cost: p50 {out['auth_p50_delta_ms']:+.3f} ms, p99 {out['auth_p99_delta_ms']:+.3f} ms (fastapi+auth - fastapi); "
          f"middleware alone {auth_us['pass']:.2f} us/request")
    print(f"1M x top-{args.k}: load {out['load_s_1m']:.2f}s (first load with conversion {out['first_load_s_1m']:.2f}s), "
          f"RSS {out['rss_mb_1m']:.0f} MB over the bare interpreter ({out['rss_mb_1m_process']:.0f} MB process), "
          f"store lookup {out['store_lookup_us']:.1f} us")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure-load":
        print(json.dumps(measure_load(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_bare":
        run_bare(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "")
    else:
        main()

"""Benchmark: online generation (``POST /v1/recommendations``) in the Serve app, batched vs not,
beside the lookup's latency with and without generation traffic, all in one run.

The app is deployed from ``cluster/serve.yaml`` on a local Ray (ingress 0.5 CPU, tokenizer 0.25,
model 1 CPU / 1 torch thread). Generation requests post the test histories of precached users
(closed loop: ``c`` clients, each posting its next history when the last is answered) at
concurrency 1 and 16, first with ``max_batch_size: 16`` then with ``max_batch_size: 1``
(unbatched), switched in place through the model deployment's ``user_config``. Lookups run open
loop at a fixed rate alone, then beside each concurrency-16 generation phase.

    python bench/online_generation.py --quick --run-dir runs/demo --json out.json
    python bench/online_generation.py --quick --tiny /tmp/tiny-run   # builds a tiny model run
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from semconv.artifacts import RunDir  # noqa: E402
from semconv.hardware import machine_info  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_config(run_dir: str, cache: str, max_batch_size: int) -> dict:
    app = copy.deepcopy(yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())["applications"][0])
    app["args"].update(run_dir=run_dir, cache_dir=cache)
    app["args"]["generation"].update(max_inflight=64, timeout_s=300)
    cpus = {"SemconvIngress": 0.5, "CodeTokenizer": 0.25, "ModelGenerator": 1}
    for dep in app["deployments"]:
        dep["ray_actor_options"] = {"num_cpus": cpus[dep["name"]]}
        dep["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
        dep["user_config"] = {"run_dir": None, "precache": None}
        if dep["name"] == "ModelGenerator":
            dep["user_config"].update(max_batch_size=max_batch_size, batch_wait_timeout_s=0.01)
    return app


def deploy(app: dict) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))


async def wait_generation(url: str, body: dict, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = None
    async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as c:
        while time.monotonic() < deadline:
            try:
                r = await c.post("/v1/recommendations", json=body)
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code == 200:
                    return
            except httpx.HTTPError as e:
                last = repr(e)
            await asyncio.sleep(0.5)
    raise TimeoutError(f"generation not answering after {timeout}s: {last}")


async def wait_batch_size(url: str, body: dict, c: int, n: int) -> None:
    """Let an in-place user_config switch land (a few requests at concurrency c)."""
    await closed_loop(url, [body] * n, c)


def pct(lat: list[float]) -> dict:
    a = np.asarray(lat) * 1000
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
            "p99_ms": float(np.percentile(a, 99)) if len(a) else None}


async def closed_loop(url: str, bodies: list[dict], concurrency: int) -> dict:
    """``concurrency`` clients post ``bodies`` in turn; latency percentiles and users/s."""
    import httpx

    lat: list[float] = []
    errors: dict[int, int] = {}
    queue = list(enumerate(bodies))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, trust_env=False) as c:
        async def client() -> None:
            while queue:
                _, body = queue.pop(0)
                t = time.perf_counter()
                r = await c.post("/v1/recommendations", json=body)
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {**pct(lat), "users_per_s": len(lat) / wall, "wall_s": wall, "errors": errors}


async def lookups(url: str, users: list[int], rate: float, stop: asyncio.Event, max_s: float) -> dict:
    """Open loop: one lookup every 1 / rate seconds until ``stop`` (or ``max_s``)."""
    import httpx

    lat: list[float] = []
    errors = 0
    tasks = []
    async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False,
                                 limits=httpx.Limits(max_connections=32, max_keepalive_connections=32)) as c:
        async def one(uid: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            r = await c.get(f"/v1/users/{uid}/recommendations")
            if r.status_code == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1

        t0 = time.perf_counter()
        i = 0
        while not stop.is_set() and time.perf_counter() - t0 < max_s:
            tasks.append(asyncio.create_task(one(users[i % len(users)])))
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return {**pct(lat), "errors": errors}


async def generation_with_lookups(url, bodies, c, users, rate) -> tuple[dict, dict]:
    stop = asyncio.Event()
    look = asyncio.create_task(lookups(url, users, rate, stop, max_s=3600))
    gen = await closed_loop(url, bodies, c)
    stop.set()
    return gen, await look


def test_histories(run: RunDir, n: int, seed: int = 0) -> tuple[list[int], list[list[int]]]:
    """``n`` precached users and their test histories."""
    import pyarrow.compute as pc

    cached = run.read_table("precache", columns=["user_id"])["user_id"].to_numpy()
    splits = run.read_table("splits", columns=["split", "user_id", "history"])
    test = splits.filter(pc.equal(splits["split"], "test"))
    hist = dict(zip(test["user_id"].to_pylist(), test["history"].to_pylist()))
    rng = np.random.default_rng(seed)
    users = [int(u) for u in rng.choice(cached, size=min(n, len(cached)), replace=False)]
    return users, [hist[u] for u in users]


def build_tiny(root: Path) -> str:
    from tests.conftest import build_tiny_lm
    from tests.serve.generation_fixtures import make_generation_run

    if not (root / "run" / "precache" / "_SUCCESS").exists():
        make_generation_run(root / "run", build_tiny_lm(root / "lm"))
    return str(root / "run")


async def measure(url: str, run: RunDir, quick: bool, rate: float) -> dict:
    n1, n16, alone_s = (4, 32, 8) if quick else (24, 256, 30)
    users, hists = test_histories(run, 256)
    bodies = [{"history": h, "k": 10} for h in hists if h]
    bodies = [bodies[i % len(bodies)] for i in range(max(n1, n16))]  # few precached users: repeat
    out: dict = {}
    stop = asyncio.Event()
    await lookups(url, users, rate, stop, max_s=3)  # warm-up, not recorded
    for mode, mbs in (("batched", 16), ("unbatched", 1)):
        deploy(app_config(run.uri, CACHE, mbs))
        await wait_batch_size(url, bodies[0], 2, 4)
        out[f"{mode}_c1"] = await closed_loop(url, bodies[:n1], 1)
        out[f"lookup_before_{mode}_c16"] = await lookups(url, users, rate, asyncio.Event(), max_s=alone_s)
        gen, look = await generation_with_lookups(url, bodies[:n16], 16, users, rate)
        out[f"{mode}_c16"], out[f"lookup_during_{mode}_c16"] = gen, look
    return out


CACHE = ""


def main() -> None:
    global CACHE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", help="a complete run directory (model/, precache/, ...); read only")
    ap.add_argument("--tiny", help="build (once) and use a tiny-model run directory here")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lookup-rate", type=float, default=20.0, help="lookups per second, open loop")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if not (a.run_dir or a.tiny):
        ap.error("give --run-dir or --tiny")
    run_dir = a.run_dir or build_tiny(Path(a.tiny))
    run = RunDir(run_dir)
    CACHE = tempfile.mkdtemp(prefix="semconv-bench-online-")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray
    from ray import serve

    os.chdir(REPO)  # replicas import serve_app from the working directory
    for attempt in range(3):  # a raylet can time out starting on a busy 2-core machine
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:
            if attempt == 2:
                raise
            ray.shutdown()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    deploy(app_config(run.uri, CACHE, 16))
    _, hists = test_histories(run, 1)
    asyncio.run(wait_generation(url, {"history": hists[0], "k": 10}))
    ready_s = time.perf_counter() - t0
    res = asyncio.run(measure(url, run, a.quick, a.lookup_rate))
    serve.shutdown()
    ray.shutdown()

    info = {**machine_info(), "torch_threads_model": 1, "run_dir": run_dir, "quick": a.quick,
            "lookup_rate": a.lookup_rate, "deploy_to_first_answer_s": ready_s}
    ratio = res["batched_c16"]["users_per_s"] / res["unbatched_c16"]["users_per_s"]
    look = {m: res[f"lookup_during_{m}_c16"]["p99_ms"] / res[f"lookup_before_{m}_c16"]["p99_ms"]
            for m in ("batched", "unbatched")}
    print(f"machine: {info['cpu']}, {info['cores']} cores, native bf16: {info['bf16_native']}; run {run_dir}")
    print("| phase | concurrency | requests | p50 ms | p99 ms | users/s | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key in ("batched_c1", "batched_c16", "unbatched_c1", "unbatched_c16"):
        r = res[key]
        mode, c = key.split("_c")
        print(f"| generation {mode} | {c} | {r['n']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['users_per_s']:.2f} | {r['errors'] or 0} |")
    for key, label in (("lookup_before_batched_c16", "lookup alone (before batched c16)"),
                       ("lookup_during_batched_c16", "lookup + batched c16"),
                       ("lookup_before_unbatched_c16", "lookup alone (before unbatched c16)"),
                       ("lookup_during_unbatched_c16", "lookup + unbatched c16")):
        r = res[key]
        print(f"| {label} | {a.lookup_rate:g}/s | {r['n']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | - | {r['errors']} |")
    print(f"batched / unbatched users/s at concurrency 16: {ratio:.2f}x; lookup p99 with / without generation "
          "(the round just before): "
          f"{look['batched']:.2f}x (batched), {look['unbatched']:.2f}x (unbatched)")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "results": res, "batched_over_unbatched_c16": ratio,
                                            "lookup_p99_ratio": look}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: online generation (``POST /v1/recommendations``) in the Serve app, batched vs not,
beside the lookup's latency with and without generation traffic, all in one run.

The app is deployed from ``cluster/serve.yaml`` on a local Ray (ingress 0.5 CPU, tokenizer 0.25,
model 1 CPU / 1 torch thread). Generation requests post the test histories of precached users
(closed loop: ``c`` clients, each posting its next history when the last is answered) at
concurrency 1 and 16, first with ``max_batch_size: 16`` then with ``max_batch_size: 1``
(unbatched), switched in place through the model deployment's ``user_config``. Lookups run open
loop at a fixed rate, from a process of their own, alone and then beside each concurrency-16
generation phase; the model replica reports its batch sizes and busy share for each phase.

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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class AppUnderTest:
    """The app as this bench deploys it: cluster/serve.yaml sized to one replica each on 2 CPUs,
    with the model deployment's knobs under test."""

    run_dir: str
    cache: str
    batch_wait_s: float
    spacing_s: float
    cpu_priority: str | None  # None: serve.yaml's

    def config(self, max_batch_size: int) -> dict:
        app = copy.deepcopy(yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())["applications"][0])
        app["args"].update(run_dir=self.run_dir, cache_dir=self.cache)
        app["args"]["generation"].update(max_inflight=64, timeout_s=300)
        if self.cpu_priority is not None:
            app["args"]["generation"]["cpu_priority"] = self.cpu_priority
        cpus = {"SemconvIngress": 0.5, "CodeTokenizer": 0.25, "ModelGenerator": 1}
        for dep in app["deployments"]:
            dep["ray_actor_options"] = {"num_cpus": cpus[dep["name"]]}
            dep["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
            dep["user_config"] = {"run_dir": None, "precache": None}
            if dep["name"] == "ModelGenerator":
                dep["user_config"].update(max_batch_size=max_batch_size, batch_wait_timeout_s=self.batch_wait_s,
                                          answer_spacing_s=self.spacing_s)
        return app


def generator_default(key: str) -> float:
    """A key of the ModelGenerator's ``user_config`` in cluster/serve.yaml."""
    app = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())["applications"][0]
    gen = next(d for d in app["deployments"] if d["name"] == "ModelGenerator")
    return float(gen["user_config"][key])


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
    """``concurrency`` clients post ``bodies`` in turn; latency percentiles, users/s and when each
    answer came (wall clock). aiohttp, not httpx: the load generator shares the 2 cores with the
    server, and httpx spends several times the CPU per request."""
    import aiohttp

    lat: list[float] = []
    done_at: list[float] = []
    errors: dict[int, int] = {}
    queue = list(enumerate(bodies))
    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(url, connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as c:
        async def client() -> None:
            while queue:
                _, body = queue.pop(0)
                t = time.perf_counter()
                async with c.post("/v1/recommendations", json=body) as r:
                    await r.read()
                    status = r.status
                if status == 200:
                    lat.append(time.perf_counter() - t)
                    done_at.append(time.time())
                else:
                    errors[status] = errors.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {**pct(lat), "users_per_s": len(lat) / wall, "wall_s": wall, "errors": errors, "done_at": done_at}


async def lookups(url: str, users: list[int], rate: float, stop, max_s: float) -> dict:
    """Open loop: one lookup every 1 / rate seconds until ``stop`` is set (or ``max_s``); with
    each lookup's start (wall clock) and latency."""
    import aiohttp

    lat: list[float] = []
    started: list[float] = []
    errors = 0
    tasks = []
    conn = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(url, connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as c:
        async def one(uid: int) -> None:
            nonlocal errors
            t, wall = time.perf_counter(), time.time()
            async with c.get(f"/v1/users/{uid}/recommendations") as r:
                await r.read()
                ok = r.status == 200
            if ok:
                lat.append(time.perf_counter() - t)
                started.append(wall)
            else:
                errors += 1

        t0 = time.perf_counter()
        i = 0
        while not stop.is_set() and time.perf_counter() - t0 < max_s:
            tasks.append(asyncio.create_task(one(users[i % len(users)])))
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return {**pct(lat), "errors": errors, "lat": lat, "started": started}


def near_bursts(look: dict, done_at: list[float], slow_ms: float, window_s: float = 0.3) -> dict:
    """How many lookups took over ``slow_ms``, and how many of those started within ``window_s``
    of a generation answer (the burst of answers and re-posts a finished batch sets off)."""
    done = np.sort(np.asarray(done_at))
    starts, lat = np.asarray(look["started"]), np.asarray(look["lat"]) * 1000
    slow = starts[lat > slow_ms]
    if not len(slow) or not len(done):
        return {"slow": int(len(slow)), "near_answers": 0}
    i = np.searchsorted(done, slow)
    gap = np.minimum(np.abs(slow - done[np.clip(i - 1, 0, len(done) - 1)]), np.abs(done[np.clip(i, 0, len(done) - 1)] - slow))
    return {"slow": int(len(slow)), "near_answers": int((gap <= window_s).sum())}


async def batch_stats() -> dict:
    """The model replica's batch sizes and model seconds so far (``ModelGenerator.stats``)."""
    from ray import serve

    return await serve.get_deployment_handle("ModelGenerator", app_name=APP).stats.remote()


def batch_delta(before: dict, after: dict, wall_s: float) -> dict:
    """What the batches of one phase held, and the share of the phase the model was busy."""
    from serve_app.generation import BatchStats

    d = BatchStats.between(before, after)
    return {**d, "model_busy": d["busy_s"] / wall_s}


def _lookup_process(url, users, rate, stop, max_s, ready, out) -> None:
    ready.set()
    out.put(asyncio.run(lookups(url, users, rate, stop, max_s)))


class LookupClients:
    """Lookups from a process of their own: timed in the generation clients' event loop, a
    burst of generation answers would delay the lookups' clock, not the server."""

    def __init__(self, url: str, users: list[int], rate: float, max_s: float = 3600):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.stop, ready, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_lookup_process, args=(url, users, rate, self.stop, max_s, ready, self.out),
                                daemon=True)
        self.proc.start()
        ready.wait(60)

    def result(self, timeout: float = 120) -> dict:
        self.stop.set()
        res = self.out.get(timeout=timeout)
        self.proc.join(10)
        return res


async def lookups_alone(url, users, rate, seconds) -> dict:
    clients = LookupClients(url, users, rate, max_s=seconds)
    await asyncio.sleep(seconds)
    return await asyncio.to_thread(clients.result)


async def generation_with_lookups(url, bodies, c, users, rate) -> tuple[dict, dict]:
    look = LookupClients(url, users, rate)
    before = await batch_stats()
    gen = await closed_loop(url, bodies, c)
    gen["batching"] = batch_delta(before, await batch_stats(), gen["wall_s"])
    return gen, await asyncio.to_thread(look.result)


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


async def measure(url: str, run: RunDir, app: AppUnderTest, quick: bool, rate: float, batch: int) -> dict:
    n1, n16, alone_s = (4, 48, 15) if quick else (24, 256, 30)
    users, hists = test_histories(run, 256)
    bodies = [{"history": h, "k": 10} for h in hists if h]
    bodies = [bodies[i % len(bodies)] for i in range(max(n1, n16))]  # few precached users: repeat
    out: dict = {}
    await lookups_alone(url, users, rate, 3)  # warm-up, not recorded
    for mode, mbs in (("batched", batch), ("unbatched", 1)):
        deploy(app.config(mbs))
        await wait_batch_size(url, bodies[0], 2, 4)
        out[f"{mode}_c1"] = await closed_loop(url, bodies[:n1], 1)
        out[f"lookup_before_{mode}_c16"] = await lookups_alone(url, users, rate, alone_s)
        gen, look = await generation_with_lookups(url, bodies[:n16], 16, users, rate)
        look["slow_near_answers"] = near_bursts(look, gen["done_at"], 2 * out[f"lookup_before_{mode}_c16"]["p99_ms"])
        out[f"{mode}_c16"], out[f"lookup_during_{mode}_c16"] = gen, look
    for r in out.values():  # the raw times only serve near_bursts
        for key in ("lat", "started", "done_at"):
            r.pop(key, None)
    return out


APP = "semconv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", help="a complete run directory (model/, precache/, ...); read only")
    ap.add_argument("--tiny", help="build (once) and use a tiny-model run directory here")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lookup-rate", type=float, default=20.0, help="lookups per second, open loop")
    ap.add_argument("--batch-wait-s", type=float, default=None,
                    help="the model deployment's batch_wait_timeout_s (default: cluster/serve.yaml's)")
    ap.add_argument("--answer-spacing-s", type=float, default=None,
                    help="the model deployment's answer_spacing_s (default: cluster/serve.yaml's)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="the batched phases' max_batch_size")
    ap.add_argument("--cpu-priority", choices=("normal", "low", "idle"), default=None,
                    help="generation.cpu_priority (default: cluster/serve.yaml's)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if not (a.run_dir or a.tiny):
        ap.error("give --run-dir or --tiny")
    run_dir = a.run_dir or build_tiny(Path(a.tiny))
    run = RunDir(run_dir)
    app = AppUnderTest(
        run.uri, tempfile.mkdtemp(prefix="semconv-bench-online-"),
        a.batch_wait_s if a.batch_wait_s is not None else generator_default("batch_wait_timeout_s"),
        a.answer_spacing_s if a.answer_spacing_s is not None else generator_default("answer_spacing_s"),
        a.cpu_priority)
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
    deploy(app.config(a.max_batch_size))
    _, hists = test_histories(run, 1)
    asyncio.run(wait_generation(url, {"history": hists[0], "k": 10}))
    ready_s = time.perf_counter() - t0
    res = asyncio.run(measure(url, run, app, a.quick, a.lookup_rate, a.max_batch_size))
    serve.shutdown()
    ray.shutdown()

    info = {**machine_info(), "torch_threads_model": 1, "run_dir": run_dir, "quick": a.quick,
            "batch_wait_s": app.batch_wait_s, "max_batch_size": a.max_batch_size, "answer_spacing_s": app.spacing_s,
            "cpu_priority": app.cpu_priority, "lookup_rate": a.lookup_rate, "deploy_to_first_answer_s": ready_s}
    ratio = res["batched_c16"]["users_per_s"] / res["unbatched_c16"]["users_per_s"]
    look = {m: res[f"lookup_during_{m}_c16"]["p99_ms"] / res[f"lookup_before_{m}_c16"]["p99_ms"]
            for m in ("batched", "unbatched")}
    print(f"machine: {info['cpu']}, {info['cores']} cores, native bf16: {info['bf16_native']}; run {run_dir}")
    print(f"batched: max_batch_size {a.max_batch_size}, batch_wait_timeout_s {app.batch_wait_s:g}, "
          f"answer_spacing_s {app.spacing_s:g}, model cpu_priority {app.cpu_priority or 'from serve.yaml'}")
    print("| phase | concurrency | requests | p50 ms | p99 ms | users/s | mean batch | model busy | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in ("batched_c1", "batched_c16", "unbatched_c1", "unbatched_c16"):
        r = res[key]
        mode, c = key.split("_c")
        b = r.get("batching")
        shape = f"{b['mean_batch']:.1f} | {b['model_busy']:.0%}" if b and b["batches"] else "- | -"
        print(f"| generation {mode} | {c} | {r['n']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['users_per_s']:.2f} "
              f"| {shape} | {r['errors'] or 0} |")
    for key, label in (("lookup_before_batched_c16", "lookup alone (before batched c16)"),
                       ("lookup_during_batched_c16", "lookup + batched c16"),
                       ("lookup_before_unbatched_c16", "lookup alone (before unbatched c16)"),
                       ("lookup_during_unbatched_c16", "lookup + unbatched c16")):
        r = res[key]
        print(f"| {label} | {a.lookup_rate:g}/s | {r['n']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | - | - | - | {r['errors']} |")
    for m in ("batched", "unbatched"):
        b = res[f"lookup_during_{m}_c16"]["slow_near_answers"]
        print(f"lookups beside {m} c16 slower than 2x the p99 alone: {b['slow']}, of which {b['near_answers']} "
              "started within 0.3 s of a generation answer")
    print(f"batched / unbatched users/s at concurrency 16: {ratio:.2f}x; lookup p99 with / without generation "
          "(the round just before): "
          f"{look['batched']:.2f}x (batched), {look['unbatched']:.2f}x (unbatched)")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": info, "results": res, "batched_over_unbatched_c16": ratio,
                                            "lookup_p99_ratio": look}, indent=1))


if __name__ == "__main__":
    main()

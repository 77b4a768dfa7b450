"""The Serve app under the conditions real traffic brings: autoscaling, a killed replica, two
replicas reloading, a full queue, authentication. Each test deploys its own config on one
Serve instance (module scope) and drives it over real HTTP. Each deploy takes tens of seconds on
2 busy cores, so the whole module is slow-marked; the in-process tests (test_api.py,
test_cold_start_batching.py, test_loading.py) cover the same contracts fast.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import httpx
import pytest
from .serve_fixtures import code_embedding
from .serve_harness import serve_test_app

TOKEN = "test-token-7f3a"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    s = serve_test_app(tmp_path_factory.mktemp("serve_resilience"))
    yield s
    serve.shutdown()


def replica_counts(deployment: str = "SemconvIngress") -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications["semconv"].deployments[deployment].replica_states)


class Load:
    """``workers`` clients in a loop on one user's lookup until stopped; records every outcome."""

    def __init__(self, url: str, workers: int, path: str = "/v1/users/4/recommendations?k=2"):
        self.url, self.workers, self.path = url, workers, path
        self.results: list[tuple] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30, trust_env=False) as c:
            async def worker():
                while not self.stop.is_set():
                    t = time.monotonic()
                    try:
                        r = await c.get(self.path)
                        body = r.json() if r.status_code == 200 else {}
                        self.results.append((r.status_code, body.get("version"), body.get("item_ids"), t,
                                             body.get("titles")))
                    except httpx.HTTPError as e:
                        self.results.append((repr(e), None, None, t, None))

            await asyncio.gather(*(worker() for _ in range(self.workers)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)

    def failures(self) -> list[tuple]:
        return [r for r in self.results if r[0] != 200]

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        """Until ``n`` more requests have been answered (or failed)."""
        want, deadline = len(self.results) + n, time.monotonic() + timeout_s
        while len(self.results) < want and time.monotonic() < deadline:
            time.sleep(0.05)


def test_auth_guards_v1_and_leaves_probes_open_under_a_route_prefix(served):
    app = served.config(docs=False, require_auth=True)
    app["runtime_env"] = {"env_vars": {"SEMCONV_API_TOKEN": TOKEN}}
    app["route_prefix"] = "/recs"  # the proxy leaves /recs in the ASGI path: auth must still apply
    served.deploy(app, wait_version="v1", timeout=180)
    with served.client() as c:
        assert c.get("/recs/v1/users/4/recommendations").status_code == 401
        assert c.get("/recs/v1/users/4/recommendations", headers={"authorization": "Bearer nope"}).status_code == 401
        r = c.get("/recs/v1/users/4/recommendations", params={"k": 1}, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["item_ids"] == [4]
        assert c.post("/recs/v1/items/tokenize", json={"items": [{"embedding": [1e20, 0, 0, 0]}]},
                      headers={"authorization": f"Bearer {TOKEN}"}).status_code == 422
        assert c.get("/recs/readyz").status_code == 200 and c.get("/recs/healthz").status_code == 200
        assert c.get("/recs/openapi.json").status_code == 404 and c.get("/recs/docs").status_code == 404


def test_a_full_tokenize_queue_answers_429_and_lookups_carry_on(served):
    app = served.config()
    tok = next(d for d in app["deployments"] if d["name"] == "CodeTokenizer")
    tok.update(max_ongoing_requests=1, max_queued_requests=1)
    served.deploy(app, wait_version="v1", timeout=180)
    body = {"items": [{"embedding": code_embedding((3, 1, 1))}] * 4}

    async def burst():
        async with httpx.AsyncClient(base_url=served.url, timeout=60, trust_env=False) as c:
            toks = [c.post("/v1/items/tokenize", json=body) for _ in range(40)]
            looks = [c.get("/v1/users/4/recommendations", params={"k": 1}) for _ in range(20)]
            return await asyncio.gather(*toks), await asyncio.gather(*looks)

    toks, looks = asyncio.run(burst())
    statuses = Counter(r.status_code for r in toks)
    assert set(statuses) <= {200, 429} and statuses[429] > 0 and statuses[200] > 0, statuses
    assert all(r.headers.get("retry-after") for r in toks if r.status_code == 429)
    assert all(r.status_code == 200 for r in looks)


def test_two_replicas_switch_together_without_errors_or_mixed_versions(served):
    """Two ingress replicas switch run_dir to a version with another catalogue, codes and
    codebook under load: every answer is one version's list with that version's titles."""
    served.deploy(served.config(replicas=(2, 2)), wait_version="v1", timeout=180)
    expected = {"v1": ([4, 5], ["Item 4", "Item 5"]), "v2": ([8, 9], ["V2 item 8", "V2 item 9"])}
    with Load(served.url, 4) as load:
        load.wait_for(20)
        served.deploy(served.config({"run_dir": served.run_v2.uri}, replicas=(2, 2)), timeout=120)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (len(load.results) > 40 and all(
                r[1] == "v2" for r in load.results[-40:])):
            time.sleep(0.5)
    assert not load.failures(), load.failures()[:5]
    assert all((r[2], r[4]) == expected[r[1]] for r in load.results)
    assert {r[1] for r in load.results[-40:]} == {"v2"} and len(load.results) > 100
    assert replica_counts().get("RUNNING") == 2


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(served):
    """min 1 / max 3 replicas, target 1 ongoing request: load makes Serve add replicas (which take
    traffic only once loaded: no failed request), and they go once the load stops."""
    auto = {"target_ongoing_requests": 1, "upscale_delay_s": 1, "downscale_delay_s": 4,
            "metrics_interval_s": 0.5, "look_back_period_s": 2}
    served.deploy(served.config(replicas=(1, 3), autoscaling=auto), wait_version="v1", timeout=180)
    seen = []
    with Load(served.url, 12) as load:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and max(seen, default=1) < 2:
            seen.append(replica_counts().get("RUNNING", 0))
            time.sleep(0.5)
        time.sleep(3)  # traffic on the new replicas
    peak = max(seen)
    down_deadline = time.monotonic() + 120
    while time.monotonic() < down_deadline and replica_counts() != {"RUNNING": 1}:  # none STOPPING either
        time.sleep(1)
    after = replica_counts()
    print(f"autoscaling: peak {peak} replicas, {len(load.results)} requests, {len(load.failures())} failed, after {after}")
    assert peak >= 2, seen
    assert not load.failures(), load.failures()[:5]
    assert after == {"RUNNING": 1}


def test_a_replica_killed_under_traffic_loses_at_most_its_in_flight_requests(served):
    import ray

    served.deploy(served.config(replicas=(2, 2)), wait_version="v1", timeout=180)
    workers = 4
    with Load(served.url, workers) as load:
        time.sleep(2)
        before = len(load.results)
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
                  if "SemconvIngress" in a["name"] and a["namespace"] == "serve"]
        assert len(actors) == 2, actors
        ray.kill(ray.get_actor(actors[0]["name"], namespace="serve"), no_restart=True)
        t_kill = time.monotonic()
        time.sleep(5)
    failed = load.failures()
    late = [r for r in failed if r[3] > t_kill + 1.0]
    print(f"killed replica: {len(failed)} failed of {len(load.results)} ({before} before the kill), "
          f"statuses {Counter(r[0] for r in failed)}")
    assert len(failed) <= workers, failed  # at most the requests in flight on the killed replica
    assert not late, late  # requests sent after the kill are routed to the live replica
    assert sum(1 for r in load.results if r[0] == 200 and r[3] > t_kill + 1.0) > 20
    served.wait_ready("v1", timeout=120)


def test_a_tokenize_request_failing_in_the_codebook_search_fails_alone_in_a_concurrent_burst(served):
    """25 items whose nearest codes all belong to item 0 pass every input check and reach the
    batched codebook search, where only 24 free code tuples are left (40 of 64 are taken): the
    request fails there, with the same 422 alone as in a burst, and its batch mates are answered."""
    served.deploy(served.config(max_batch=32), wait_version="v1", timeout=180)
    good = [{"items": [{"embedding": code_embedding((3, a % 4, b))}]} for a in range(3) for b in range(4)]
    bad = {"items": [{"embedding": code_embedding((0, 0, 0))}] * 25}

    async def burst(bodies):
        async with httpx.AsyncClient(base_url=served.url, timeout=60, trust_env=False) as c:
            return await asyncio.gather(*(c.post("/v1/items/tokenize", content=json.dumps(b),
                                                 headers={"content-type": "application/json"}) for b in bodies))

    (alone,) = asyncio.run(burst([bad]))
    rs = asyncio.run(burst([bad, *good, bad]))
    assert alone.status_code == 422 and alone.json()["detail"][0]["type"] == "tokenize_failed", alone.text
    assert [r.status_code for r in rs] == [422] + [200] * len(good) + [422]
    assert rs[0].json() == rs[-1].json() == alone.json()
    assert [r.json()["codes"][0] for r in rs[1:-1]] == [[3, a % 4, b] for a in range(3) for b in range(4)]
    shorter = asyncio.run(burst([{"items": bad["items"][:24]}]))[0]  # 24 still find free tuples
    assert shorter.status_code == 200 and len(set(map(tuple, shorter.json()["codes"]))) == 24


def test_a_replica_that_cannot_load_its_target_is_replaced_after_the_deadline(served):
    """A switch to a version that cannot load keeps the current version answering only until
    load_deadline_s (test_serve_app.py: the failed reload): then the replica fails its health
    check and Serve replaces it (the new replica starts on the target directly, and fails to
    start), instead of serving the old version beside peers on the new one forever. A good
    config brings it back."""
    from ray import serve

    from .serve_harness import deploy_messages

    served.deploy(served.config(load_deadline_s=5), wait_version="v1", timeout=180)
    missing = str(served.run_dir.path("no_such_precache"))
    served.deploy(served.config({"precache": missing}, load_deadline_s=5), timeout=60, settled=False)
    deadline, status = time.monotonic() + 120, None
    while time.monotonic() < deadline and status not in ("UNHEALTHY", "DEPLOY_FAILED"):
        status = serve.status().applications["semconv"].deployments["SemconvIngress"].status
        time.sleep(1)
    assert status in ("UNHEALTHY", "DEPLOY_FAILED"), deploy_messages()
    served.deploy(served.config(), wait_version="v1", timeout=180)

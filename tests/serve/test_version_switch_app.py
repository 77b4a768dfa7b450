"""One version everywhere, over real HTTP: the app from cluster/serve.yaml with all three
deployments switches between two run directories that differ in catalogue, item codes,
codebook and model, under concurrent lookups, generations and tokenizations. Every answer is
one version's whole answer and none is a 5xx."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict

import httpx
import pytest

from serve_app.api import VERSION_HEADER

from ..dtypes import assert_same_ranking
from .generation_fixtures import make_generation_run
from .serve_fixtures import V1, V2, code_embedding
from .serve_harness import app_config, free_port, start_serve

pytestmark = pytest.mark.slow  # two tiny-model runs and three deployments switched twice: minutes

REQUESTS = {
    "lookup": ("GET", "/v1/users/4/recommendations?k=3", None),
    "generate": ("POST", "/v1/recommendations", {"history": [10, 20, 30], "k": 4}),
    "generate_by_source": ("POST", "/v1/recommendations", {"source_history": ["B0012", "B0025"], "k": 3}),
    "generate_new_item": ("POST", "/v1/recommendations", {"history": [41, 10], "k": 4}),  # 41: only in v2
    "tokenize": ("POST", "/v1/items/tokenize", {"items": [{"embedding": code_embedding((3, 3, 3))},
                                                          {"embedding": code_embedding((0, 0, 1))}]}),
}
FAST, SLOW = ("lookup", "tokenize"), ("generate", "generate_by_source", "generate_new_item")
WORKERS = (FAST, FAST, FAST, SLOW, SLOW)  # the kinds each client cycles through
SECONDS = 240.0


@pytest.fixture(scope="module")
def runs(tiny_lm_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("version_switch")
    return {"p1": (V1, make_generation_run(root / "v1", tiny_lm_dir, catalogue=V1, seed=1, version="p1")),
            "p2": (V2, make_generation_run(root / "v2", tiny_lm_dir, catalogue=V2, seed=2, version="p2"))}


@pytest.fixture(scope="module")
def served(ray_local, runs, tmp_path_factory):
    from ray import serve

    s = start_serve(free_port())
    cache = str(tmp_path_factory.mktemp("version_switch_cache") / "cache")
    # args.run_dir names v1; each deploy's user_config names the version served
    s.app = lambda run: app_config(runs["p1"][1].uri, cache, {"run_dir": run.uri}, max_batch=4,
                                   generation={"cpu_priority": "normal", "timeout_s": 60})
    s.deploy(s.app(runs["p1"][1]), wait_version="p1", timeout=300)
    yield s
    serve.shutdown()


class Traffic:
    """A client per entry of :data:`WORKERS`, cycling through its kinds of :data:`REQUESTS` until
    stopped (lookups and tokenizations keep coming while a generation runs); every answer
    recorded as ``(kind, status, version id header, body)``."""

    def __init__(self, url: str):
        self.url, self.answers, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=120, trust_env=False) as c:
            async def worker(kinds: tuple[str, ...], offset: int) -> None:
                i = offset
                while not self.stop.is_set():
                    kind = kinds[i % len(kinds)]
                    method, path, body = REQUESTS[kind]
                    try:
                        r = await c.request(method, path, json=body)
                        self.answers.append((kind, r.status_code, r.headers.get(VERSION_HEADER), r.json()))
                    except httpx.HTTPError as e:
                        self.answers.append((kind, repr(e), None, None))
                    i += 1

            await asyncio.gather(*(worker(kinds, w) for w, kinds in enumerate(WORKERS)))

    def more(self, n: int) -> None:
        """Until ``n`` more answers are in."""
        want, deadline = len(self.answers) + n, time.monotonic() + SECONDS
        while len(self.answers) < want and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.answers) >= want, f"traffic stalled at {len(self.answers)} answers"


def test_switching_versions_under_traffic_answers_every_request_from_exactly_one_version(served, runs):
    traffic = Traffic(served.url)
    traffic.thread.start()
    try:
        traffic.more(3 * len(REQUESTS))
        served.deploy(served.app(runs["p2"][1]), wait_version="p2", timeout=SECONDS)
        traffic.more(3 * len(REQUESTS))
        served.deploy(served.app(runs["p1"][1]), wait_version="p1", timeout=SECONDS)
        traffic.more(3 * len(REQUESTS))
    finally:
        traffic.stop.set()
        traffic.thread.join(SECONDS)
    answers = traffic.answers

    # no 5xx, no failure: 200s, and 422s only for the v2-only item, only from v1's catalogue
    odd = [a for a in answers if a[1] != 200 and not (a[0] == "generate_new_item" and a[1] == 422)]
    assert not odd, odd[:5]
    for kind, status, _, body in answers:
        if status == 422:
            assert body["detail"][0]["msg"] == "unknown item ids (not in the catalog or without semantic codes): 41"

    # each version id names one precache version, and so one catalogue, codebook and model
    precache_of = {vid: body["version"] for kind, status, vid, body in answers if kind == "lookup"}
    assert sorted(precache_of.values()) == ["p1", "p2"]
    by_version: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for kind, status, vid, body in answers:
        if status == 200:
            by_version[(vid, kind)].append(body)
    for (vid, kind), bodies in by_version.items():
        catalogue, run = runs[precache_of[vid]]
        body = bodies[0]
        for b in bodies:  # one version: one answer (a model's scores within its dtype's batch noise)
            assert {k: v for k, v in b.items() if k != "scores"} == {k: v for k, v in body.items() if k != "scores"}
            if kind.startswith("generate"):
                assert_same_ranking(b["item_ids"], b["scores"], body["item_ids"], body["scores"],
                                    run.manifest("precache")["dtype"])
            else:
                assert b == body, (vid, kind)
        if kind == "tokenize":
            assert body["codebook"] == run.manifest("codebook")["build"]
        else:
            titles = catalogue.titles()
            assert body["titles"] == [titles[i] for i in body["item_ids"]], (vid, kind, body)
    models = {vid: by_version[(vid, "generate")][0]["version"] for vid in precache_of}
    assert len(set(models.values())) == 2  # the two models answered, each under its own version
    assert all(b["version"] == models[vid] for (vid, kind), bs in by_version.items() if kind.startswith("generate")
               for b in bs)
    seen = {(precache_of[vid], kind) for vid, kind in by_version}
    assert seen == {(p, k) for p in ("p1", "p2") for k in REQUESTS} - {("p1", "generate_new_item")}
    lookups = [precache_of[vid] for kind, _, vid, _ in answers if kind == "lookup"]
    assert lookups[0] == "p1" and lookups[-1] == "p1" and "p2" in lookups

    # the version before stays held: each deployment answers for the id it is asked for, or 503
    from ray import serve

    model = serve.get_deployment_handle("ModelGenerator", app_name="semconv")
    tokenizer = serve.get_deployment_handle("CodeTokenizer", app_name="semconv")
    body = json.dumps(REQUESTS["tokenize"][2]).encode()
    for vid in precache_of:
        assert model.generate.remote(vid, (10, 20, 30), 4, None).result()["body"]["version"] == models[vid]
        assert tokenizer.tokenize.remote(vid, body).result()["body"] == by_version[(vid, "tokenize")][0]
    for reply in (model.generate.remote("0123456789ab", (10,), 4, None).result(),
                  tokenizer.tokenize.remote("0123456789ab", body).result()):
        assert reply["status"] == 503 and "version 0123456789ab is not loaded" in reply["detail"]

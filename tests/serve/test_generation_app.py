"""POST /v1/recommendations over real HTTP: the app from cluster/serve.yaml with its ModelGenerator
deployment on a tiny fine-tuned model, the run directory given as a ``file://`` URI."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from .generation_fixtures import BEAMS, MAX_LEN, TOP_K, make_generation_run, user_histories
from .serve_harness import app_config, free_port, start_serve
from ..dtypes import assert_same_ranking


pytestmark = pytest.mark.slow  # a Serve app with three deployments and a model: ~1 min


@pytest.fixture(scope="module")
def gen_run(tiny_lm_dir, tmp_path_factory):
    return make_generation_run(tmp_path_factory.mktemp("gen_app") / "run", tiny_lm_dir)


@pytest.fixture(scope="module")
def dtype(gen_run) -> str:
    """What online generation decodes in: the dtype the precache recorded (whatever this CPU)."""
    return gen_run.manifest("precache")["dtype"]


@pytest.fixture(scope="module")
def http(ray_local, gen_run, tmp_path_factory):
    """A client of the app serving a tiny model run, once generation answers."""
    from ray import serve

    rd = gen_run
    served = start_serve(free_port())
    served.deploy(app_config(f"file://{rd.root}", str(tmp_path_factory.mktemp("gen_app_cache") / "cache")), timeout=300)
    deadline = time.monotonic() + 300
    with served.client() as c:
        while (r := c.post("/v1/recommendations", json={"history": [1]})).status_code != 200:
            assert time.monotonic() < deadline, f"generation not answering: {r.status_code} {r.text}"
            time.sleep(0.5)
        yield c
    serve.shutdown()


def test_a_precached_users_test_history_gets_their_precached_list(http, dtype):
    histories = user_histories()
    for user in range(0, 16, 2):
        cached = http.get(f"/v1/users/{user}/recommendations", params={"k": TOP_K}).json()
        assert cached["fallback"] is False
        r = http.post("/v1/recommendations", json={"history": histories[user], "k": TOP_K})
        assert r.status_code == 200, r.text
        body = r.json()
        assert_same_ranking(body["item_ids"], body["scores"], cached["item_ids"], cached["scores"], dtype)
        assert body["titles"] == [cached["titles"][cached["item_ids"].index(i)] for i in body["item_ids"]]
        assert body["version"].startswith("model-") and body["num_beams"] == BEAMS and body["fallback"] is False


def test_source_ids_answer_like_item_ids_and_long_histories_keep_their_last_items(http):
    by_id = http.post("/v1/recommendations", json={"history": [3, 17, 25], "k": 4}).json()
    by_src = http.post("/v1/recommendations", json={"source_history": ["B0003", "B0017", "B0025"], "k": 4}).json()
    assert by_src == by_id and len(by_id["item_ids"]) == 4
    assert by_id["source_ids"] == [f"B{i:04d}" for i in by_id["item_ids"]]
    long = http.post("/v1/recommendations", json={"history": list(range(20, 40)), "k": 3}).json()
    assert long["history_used"] == MAX_LEN and not set(long["item_ids"]) & set(range(20, 40))


def test_a_history_of_all_but_a_few_items_gets_exactly_k_of_them(http):
    """Exclusion prunes the beam at every level: with 6 of the 40 items left, a beam of 5 still
    finds 5 of them; with 3 left, all 3."""
    for left, k, beams in [([1, 9, 14, 22, 30, 37], 5, 5), ([2, 19, 33], 5, 6)]:
        history = [i for i in range(40) if i not in left]
        r = http.post("/v1/recommendations", json={"history": history, "k": k, "num_beams": beams})
        assert r.status_code == 200, r.text
        got = r.json()["item_ids"]
        assert len(got) == len(set(got)) == min(k, len(left)) and set(got) <= set(left)


def test_concurrent_requests_get_the_answers_they_get_alone(http, dtype):
    rng = np.random.default_rng(9)
    bodies = [{"history": rng.choice(40, size=int(rng.integers(1, 8)), replace=False).tolist(),
               "k": int(rng.integers(1, 6)), "num_beams": int(rng.choice([6, BEAMS]))} for _ in range(16)]
    alone = [http.post("/v1/recommendations", json=b).json() for b in bodies]

    async def together():
        async with httpx.AsyncClient(base_url=http.base_url, timeout=60, trust_env=False) as c:
            return await asyncio.gather(*(c.post("/v1/recommendations", json=b) for b in bodies))

    from ray import serve

    from serve_app.generation import BatchStats

    model = serve.get_deployment_handle("ModelGenerator", app_name="semconv")
    before = model.stats.remote().result()
    answers = asyncio.run(together())
    batches = BatchStats.between(before, model.stats.remote().result())
    for a, r in zip(alone, answers):
        assert r.status_code == 200
        assert_same_ranking(r.json()["item_ids"], r.json()["scores"], a["item_ids"], a["scores"], dtype)
    # they shared beam searches: fewer batches than requests
    assert batches["mean_batch"] > 1.5 and sum(int(n) * c for n, c in batches["sizes"].items()) == len(bodies), batches


@pytest.mark.parametrize("body, loc, needle", [
    ({"history": [3, 40, 41, 40]}, "history", "unknown item ids (not in the catalog or without semantic codes): 40, 41"),
    ({"source_history": ["B0001", "nope"]}, "source_history", "unknown source item ids (not in items/): 'nope'"),
    ({"history": [1], "k": BEAMS + 1}, "k", f"k must be between 1 and the beam width {BEAMS}"),
    ({"history": [1], "num_beams": BEAMS + 1}, "num_beams", f"num_beams must be between 1 and {BEAMS}"),
    ({"history": [1], "source_history": ["B0001"]}, None, "exactly one"),
    ({}, None, "exactly one"),
    ({"history": []}, "history", "at least 1"),
    ({"history": [-1]}, "history", "greater than or equal to 0"),
    ({"history": [1], "k": 0}, "k", "greater than or equal to 1"),
    ({"history": [1], "user": 3}, "user", "Extra inputs"),
])
def test_bad_requests_get_422_naming_the_field(http, body, loc, needle):
    r = http.post("/v1/recommendations", json=body)
    assert r.status_code == 422 and needle in r.text, r.text
    if loc is not None:
        assert loc in r.json()["detail"][0]["loc"]


def test_lookups_answer_while_generation_runs(http):
    with ThreadPoolExecutor(8) as pool:
        gens = [pool.submit(http.post, "/v1/recommendations", json={"history": [i, i + 1], "k": 5}) for i in range(8)]
        looks = [http.get(f"/v1/users/{u}/recommendations") for u in range(0, 16, 2)]
        assert all(g.result().status_code == 200 for g in gens)
    assert all(r.status_code == 200 and not r.json()["fallback"] for r in looks)

"""The Ray Serve app over real HTTP: every endpoint, every bad input, hot reload under load.

One Serve instance for the module, deployed from ``cluster/serve.yaml`` through the controller's
``apply_config`` (what ``serve deploy`` calls), on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from .serve_fixtures import K, code_embedding
from .serve_harness import serve_test_app

ROUNDS_LIMIT = 3000  # hot-reload load loop: at most this many requests ...
SECONDS_LIMIT = 40.0  # ... and this long


@pytest.fixture(scope="module")
def served(ray_local, tiny_lm_dir, tmp_path_factory):
    """The app on ``run`` (with a tiny model: generation is served too) and ``run_v2``; the
    model's beam search at normal priority (SCHED_IDLE starves under a busy test machine)."""
    from ray import serve

    s = serve_test_app(tmp_path_factory.mktemp("serve_app"), base_model=tiny_lm_dir)
    s.base = lambda **uc: s.config(uc, docs=True, generation={"max_len": 6, "cpu_priority": "normal"})
    s.deploy(s.base(), wait_version="v1", timeout=120)
    yield s
    serve.shutdown()


@pytest.fixture(scope="module")
def http(served):
    with served.client() as c:
        yield c


def test_health_and_readiness_report_the_loaded_version(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["ready"] and ready["version"] == "v1"
    assert (ready["users"], ready["k"], ready["items"]) == (15, K, 40)


def test_a_cached_user_gets_their_precached_top_k(http):
    r = http.get("/v1/users/4/recommendations", params={"k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["item_ids"] == [4, 5, 6] and body["scores"] == [0.0, -1.0, -2.0]
    assert body["titles"] == ["Item 4", "Item 5", "Item 6"] and body["source_ids"] == ["B0004", "B0005", "B0006"]
    assert (body["version"], body["fallback"], body["k"]) == ("v1", False, 3)
    assert len(http.get("/v1/users/4/recommendations").json()["item_ids"]) == min(10, K)


def test_an_unknown_user_gets_the_popularity_fallback(http):
    body = http.get("/v1/users/5/recommendations", params={"k": 2}).json()
    assert body["fallback"] is True and body["item_ids"] == [7, 3]
    assert http.get("/v1/users/123456789/recommendations").json()["fallback"] is True


def test_source_user_ids_resolve_to_the_same_list(http):
    by_src = http.get("/v1/source-users/U4/recommendations", params={"k": 3}).json()
    assert by_src["item_ids"] == [4, 5, 6] and by_src["user_id"] == 4 and by_src["source_user_id"] == "U4"
    assert http.get("/v1/source-users/nobody/recommendations").json()["fallback"] is True


def test_items_have_codes_and_titles(http):
    assert http.get("/v1/items/21").json() == {
        "item_id": 21, "source_id": "B0021", "title": "Item 21", "codes": [1, 1, 1], "tokens": "<a_1><b_1><c_1>"}
    r = http.get("/v1/items/40")
    assert r.status_code == 404 and "not in the catalog" in r.json()["detail"]


@pytest.mark.parametrize("url, status", [
    ("/v1/users/4/recommendations?k=0", 422),
    ("/v1/users/4/recommendations?k=-2", 422),
    (f"/v1/users/4/recommendations?k={K + 1}", 422),
    ("/v1/users/4/recommendations?k=ten", 422),
    ("/v1/users/not-an-int/recommendations", 422),
    (f"/v1/users/{2**64}/recommendations", 422),
    ("/v1/items/-1", 422),
    ("/v1/items/99999", 404),
    ("/v1/nothing-here", 404),
])
def test_bad_lookups_get_4xx(http, url, status):
    r = http.get(url)
    assert r.status_code == status, r.text


E4 = json.dumps([1.0, 0.0, 0.0, 0.0])  # the codebook's input dimension is 4


@pytest.mark.parametrize("body, needle", [
    ('{"items": [{"embedding": [NaN, 1.0, 0.0, 0.0]}]}', "NaN"),
    ('{"items": [{"embedding": [1.0, Infinity, 0.0, 0.0]}]}', "NaN or infinite"),
    ('{"items": [{"embedding": [1.0, 2.0]}]}', "must have 4 values"),
    ('{"items": [%s]}' % ", ".join(['{"embedding": %s}' % E4] * 5), "at most 4 items"),
    ('{"items": []}', "at least 1"),
    ('{"items": [{"embedding": "zero"}]}', "list"),
    ('{"items": [{"embedding": %s, "color": "red"}]}' % E4, "Extra inputs"),
    ('not json', "JSON"),
])
def test_bad_tokenize_bodies_get_422(http, body, needle):
    r = http.post("/v1/items/tokenize", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and needle in r.text, r.text


def test_tokenize_returns_codes_from_the_saved_codebook(served, http):
    items = [{"embedding": code_embedding((3, 3, 3)), "title": "new relay"},
             {"embedding": code_embedding((0, 0, 1))}]  # item 1 already holds (0, 0, 1)
    body = http.post("/v1/items/tokenize", json={"items": items}).json()
    assert body["codes"][0] == [3, 3, 3] and body["tokens"][0] == "<a_3><b_3><c_3>"
    assert body["collides_with"] == [-1, 1] and body["codes"][1] != [0, 0, 1]
    assert body["codebook"] == served.run_dir.manifest("codebook")["build"]  # a version, not a path


def test_concurrent_tokenize_requests_each_get_their_own_codes(served):
    """Requests that @serve.batch merges into one codebook search are split back correctly."""
    wanted = [(3, a, b) for a in range(4) for b in range(4)][:12]

    async def go():
        async with httpx.AsyncClient(base_url=served.url, timeout=30, trust_env=False) as c:
            rs = await asyncio.gather(*(c.post("/v1/items/tokenize", json={"items": [{"embedding": code_embedding(w)}]})
                                        for w in wanted))
        return [r.json()["codes"][0] for r in rs]

    assert asyncio.run(go()) == [list(w) for w in wanted]


def test_a_body_over_the_limit_gets_413_and_the_replica_lives_on(http):
    big = json.dumps({"items": [{"embedding": [0.1] * 20000}]})
    assert len(big) > 65536
    r = http.post("/v1/items/tokenize", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert http.get("/v1/users/4/recommendations", params={"k": 1}).json()["item_ids"] == [4]


def test_openapi_docs_are_served(http):
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/users/{user_id}/recommendations", "/v1/items/tokenize", "/v1/items/{item_id}",
            "/healthz", "/readyz"} <= set(paths)


def test_prometheus_has_request_counters_by_endpoint_and_status(http):
    """Ray's metrics agent exports Serve's metrics plus ``semconv_http_requests_total``."""
    import ray

    http.get("/v1/items/99999")  # one 404 to look for
    port = ray._private.worker._global_node.metrics_export_port
    want = ('endpoint="/v1/items/{item_id}"', 'status="404"')
    deadline, lines, text = time.monotonic() + 45, [], ""
    with httpx.Client(trust_env=False, timeout=10) as c:
        while time.monotonic() < deadline:
            text = c.get(f"http://127.0.0.1:{port}/metrics").text
            lines = [ln for ln in text.splitlines() if ln.startswith("ray_semconv_http_requests_total{")]
            if any(all(w in ln for w in want) for ln in lines):
                break
            time.sleep(1)
    assert any(all(w in ln for w in want) for ln in lines), lines
    assert any('endpoint="/v1/users/{user_id}/recommendations"' in ln and 'status="200"' in ln for ln in lines)
    assert "ray_serve_" in text  # Serve's own request/latency metrics


def test_a_failed_reload_keeps_the_serving_version(served, http):
    served.deploy(served.base(precache=str(served.run_dir.path("no_such_precache"))), timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not http.get("/readyz").json()["last_error"]:
        time.sleep(0.2)
    ready = http.get("/readyz").json()
    assert ready["version"] == "v1" and "no _SUCCESS" in ready["last_error"]
    assert http.get("/v1/users/4/recommendations", params={"k": 1}).json()["item_ids"] == [4]
    served.deploy(served.base(), wait_version="v1")


def test_hot_reload_under_load_answers_each_request_from_one_whole_version(served):
    """Requests in flight while user_config switches run_dir v1 -> v2 -> v1, two versions with
    other catalogues, codes and codebooks, get one version's whole answer (its precache list
    and its titles, under one version id), never an error."""
    from serve_app.api import VERSION_HEADER

    expected = {"v1": ([4, 5], ["Item 4", "Item 5"]), "v2": ([8, 9], ["V2 item 8", "V2 item 9"])}
    results: list[tuple] = []
    stop = threading.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=served.url, timeout=30, trust_env=False) as c:
            async def worker():
                while not stop.is_set() and len(results) < ROUNDS_LIMIT:
                    try:
                        r = await c.get("/v1/users/4/recommendations", params={"k": 2})
                        body = r.json() if r.status_code == 200 else {}
                        results.append((r.status_code, body.get("version"), body.get("item_ids"), body.get("titles"),
                                        r.headers.get(VERSION_HEADER)))
                    except httpx.HTTPError as e:
                        results.append((repr(e), None, None, None, None))
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(6))), 3 * SECONDS_LIMIT + 60)

    def more(n: int = 20) -> None:
        """Let ``n`` more requests be answered (or fail) before going on."""
        want, deadline = len(results) + n, time.monotonic() + SECONDS_LIMIT
        while len(results) < want and time.monotonic() < deadline:
            time.sleep(0.05)

    loader = threading.Thread(target=lambda: asyncio.run(load()))
    loader.start()
    try:
        more()
        served.deploy(served.base(run_dir=served.run_v2.uri), wait_version="v2", timeout=SECONDS_LIMIT)
        more()
        served.deploy(served.base(), wait_version="v1", timeout=SECONDS_LIMIT)
        more()
    finally:
        stop.set()
        loader.join(3 * SECONDS_LIMIT + 60)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    assert all((items, titles) == expected[version] for _, version, items, titles, _ in results)
    ids = {version: {vid for _, v, _, _, vid in results if v == version} for version in expected}
    assert all(len(v) == 1 for v in ids.values()) and ids["v1"] != ids["v2"]  # one version id each
    versions = [v for _, v, _, _, _ in results]
    assert "v2" in versions and versions[0] == "v1" and versions[-1] == "v1"
    first_v2, last_v2 = versions.index("v2"), len(versions) - 1 - versions[::-1].index("v2")
    assert set(versions[first_v2 : last_v2 + 1]) == {"v2"}  # one switch each way, no flapping
    assert len(results) > 50


FUZZ_EXAMPLES = 12  # per operation: bounded, a few seconds in all


def test_fuzzed_requests_from_the_openapi_schema_never_get_5xx(served):
    """schemathesis sends each operation's documented examples, then requests generated from
    /openapi.json; no response may be a 5xx. The app serves a tiny model, so generation requests
    reach the beam search (the documented example does; few random histories hold only known
    item ids), not only validation.

    (Its pytest ``from_fixture`` loader does not work with pytest 9, so each operation's
    hypothesis strategies are driven directly.)
    """
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.hypothesis.examples import generate_one

    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    calls = []

    def call(op, case) -> None:
        response = case.call_and_validate(base_url=served.url, checks=[not_a_server_error], timeout=30)
        calls.append((op.path, response.status_code))

    for op in operations:
        for documented in schema.get_strategies_from_examples(op):
            call(op, generate_one(documented))

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def fuzz(case):
            call(op, case)

        fuzz()
    assert calls and all(status < 500 for _, status in calls)
    assert {status for _, status in calls} & {200, 404, 422}
    generated = [status for path, status in calls if path == "/v1/recommendations"]
    assert 200 in generated and len(generated) > FUZZ_EXAMPLES // 2, generated  # the model answered

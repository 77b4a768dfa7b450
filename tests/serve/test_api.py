"""The HTTP API's contract, exercised in-process (ASGI) on a loaded state and the fixture's real
codebook: no Ray needed."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from .serve_fixtures import K, code_embedding

from semconv.serving.state import load_state
from serve_app.api import LocalBackend, build_api
from serve_app.middleware import BearerAuth, BodySizeLimit, RequestMetrics
from serve_app.tokenizer import load_tokenizer

TOKEN = "s3cret-token"


def call(api, method: str, url: str, **kw) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
            return await c.request(method, url, **kw)
    return asyncio.run(go())


@pytest.fixture()
def backend(run_dir, tmp_path):
    return LocalBackend(load_state(run_dir.uri, cache_dir=tmp_path / "cache"), load_tokenizer(run_dir.uri), max_batch=4)


@pytest.fixture()
def api(backend):
    return build_api(backend, max_body_bytes=4096)


def test_readiness_waits_for_a_state():
    api = build_api(LocalBackend(None))
    assert call(api, "GET", "/healthz").status_code == 200
    r = call(api, "GET", "/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert call(api, "GET", "/v1/users/0/recommendations").status_code == 503


@pytest.mark.parametrize("k", ["0", "-3", str(K + 1), "abc", "99999999999999999999"])
def test_bad_k_is_422(api, k):
    r = call(api, "GET", f"/v1/users/0/recommendations?k={k}")
    assert r.status_code == 422, r.text


def test_huge_user_and_item_ids_are_422_not_500(api):
    assert call(api, "GET", f"/v1/users/{2**70}/recommendations").status_code == 422
    assert call(api, "GET", f"/v1/items/{2**64}").status_code == 422
    assert call(api, "GET", "/v1/items/-1").status_code == 422


@pytest.mark.parametrize("items, where", [
    ([{"embedding": [1.0, 2.0]}], "4 values"),
    ([{"embedding": [1.0, float("nan"), 0.0, 0.0]}], "NaN"),
    ([{"embedding": [1.0, 1e39, 0.0, 0.0]}], "float32"),
    ([{"embedding": [1e20, 0.0, 0.0, 0.0]}], "squared norm"),  # finite in float32, but its norm is not
    ([{"embedding": [1.0, 2.0, 3.0, 4.0]}] * 5, "at most 4 items"),
])
def test_bad_tokenize_batches_are_422(api, items, where):
    r = call(api, "POST", "/v1/items/tokenize", content=json.dumps({"items": items}),
             headers={"content-type": "application/json"})
    assert r.status_code == 422 and where in r.text, r.text


def test_the_schemas_item_cap_is_max_batch(api):
    body = call(api, "GET", "/openapi.json").json()["paths"]["/v1/items/tokenize"]["post"]["requestBody"]
    items = body["content"]["application/json"]["schema"]["properties"]["items"]
    embedding = items["items"]["properties"]["embedding"]
    assert items["maxItems"] == 4 and embedding["type"] == "array"
    assert embedding["minItems"] == embedding["maxItems"] == 4  # the codebook's dimension


def test_tokenize_answers_codes_and_a_codebook_version_not_a_path(api, run_dir):
    r = call(api, "POST", "/v1/items/tokenize", json={"items": [{"embedding": code_embedding((3, 3, 3))}]})
    assert r.status_code == 200 and r.json()["codes"] == [[3, 3, 3]]
    assert r.json()["codebook"] == run_dir.manifest("codebook")["build"]
    assert str(run_dir.uri) not in r.text


def test_tokenize_without_a_codebook_is_503(run_dir, tmp_path):
    api = build_api(LocalBackend(load_state(run_dir.uri, cache_dir=tmp_path / "c")))
    r = call(api, "POST", "/v1/items/tokenize", json={"items": [{"embedding": [1.0, 1.0, 1.0, 1.0]}]})
    assert r.status_code == 503 and "codebook" in r.text and r.headers["retry-after"] == "1"


def test_body_over_the_limit_is_413_declared_or_streamed(api):
    big = {"items": [{"embedding": [0.5] * 4, "title": "x" * 5000}]}
    assert call(api, "POST", "/v1/items/tokenize", json=big).status_code == 413

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = call(api, "POST", "/v1/items/tokenize", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_request_metrics_record_route_templates_and_statuses(backend):
    seen = []
    api = build_api(backend, make_recorder=lambda: lambda *a: seen.append(a))
    call(api, "GET", "/v1/users/2/recommendations?k=2")
    call(api, "GET", "/v1/items/999")
    call(api, "GET", "/nope")
    assert seen == [("/v1/users/{user_id}/recommendations", "GET", 200),
                    ("/v1/items/{item_id}", "GET", 404), ("other", "GET", 404)]
    assert {m.cls for m in api.user_middleware} == {BodySizeLimit, RequestMetrics}


def test_fallback_lookups_are_counted(api, backend):
    call(api, "GET", "/v1/users/4/recommendations")  # cached
    call(api, "GET", "/v1/users/5/recommendations")  # not cached: fallback
    call(api, "GET", "/v1/source-users/nobody/recommendations")
    assert backend.fallbacks == 2


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"authorization": "Bearer wrong"}, 401),
    ({"authorization": f"Basic {TOKEN}"}, 401),
    ({"authorization": TOKEN}, 401),
    ({"authorization": f"Bearer {TOKEN}"}, 200),
    ({"authorization": f"bearer {TOKEN}"}, 200),
])
def test_v1_routes_need_the_bearer_token(backend, headers, status):
    api = build_api(backend, api_token=TOKEN)
    for method, url, kw in [("GET", "/v1/users/4/recommendations", {}), ("GET", "/v1/items/3", {}),
                            ("GET", "/v1/source-users/U4/recommendations", {}),
                            ("POST", "/v1/items/tokenize", {"json": {"items": [{"embedding": [1.0, 0, 0, 0]}]}})]:
        r = call(api, method, url, headers=headers, **kw)
        assert r.status_code == status, (url, r.text)
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer") and TOKEN not in r.text
    assert call(api, "GET", "/v1/users/not-a-number/recommendations", headers=headers).status_code == (
        401 if status == 401 else 422)  # auth before validation: a stranger learns nothing
    assert call(api, "GET", "/healthz").status_code == 200 and call(api, "GET", "/readyz").status_code == 200
    assert BearerAuth in {m.cls for m in api.user_middleware}
    ops = call(api, "GET", "/openapi.json").json()["paths"]
    assert ops["/v1/items/{item_id}"]["get"]["security"] == [{"bearer": []}] and "security" not in ops["/readyz"]["get"]


def test_docs_can_be_turned_off(backend):
    api = build_api(backend, docs=False)
    assert [call(api, "GET", u).status_code for u in ("/docs", "/redoc", "/openapi.json")] == [404] * 3
    assert call(api, "GET", "/v1/items/3").status_code == 200


def test_readiness_and_errors_do_not_leak_server_paths(run_dir, tmp_path):
    from semconv.serving.version import Target
    from serve_app.loading import Versions

    def load(target, _builds, _reuse):
        if target.run_dir != run_dir.uri:
            raise FileNotFoundError(f"{target.run_dir}/precache/_SUCCESS and s3://bkt/run/precache are missing")
        return load_state(run_dir.uri, cache_dir=tmp_path / "cache")

    versions = Versions(load, 60, "serving state")
    assert asyncio.run(versions.switch(Target(run_dir.uri))) is True
    assert asyncio.run(versions.switch(Target(str(tmp_path / "srv" / "run")))) is False
    assert versions.last_error == "FileNotFoundError: <path> and <path> are missing"
    state = versions.current
    be = LocalBackend(state)
    be.status = versions.status
    r = call(build_api(be), "GET", "/readyz")
    assert r.status_code == 200 and str(tmp_path) not in r.text and "s3://" not in r.text
    assert r.json()["last_error"] == versions.last_error and r.json()["reload_failures"] == 1
    assert r.json()["version_id"] == versions.current_id
    assert r.json()["precache_created_at"] == state.created_at and r.json()["precache_age_s"] >= 0


def test_auth_holds_under_a_route_prefix(backend):
    """Ray Serve's proxy leaves the application's ``route_prefix`` at the front of ``path`` (with
    ``root_path`` set to it): the /v1 routes must still need the token there."""
    api = build_api(backend, api_token=TOKEN)

    async def go(headers):
        transport = httpx.ASGITransport(app=api, root_path="/recs")
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [(await c.get(u, headers=headers)).status_code
                    for u in ("/recs/v1/users/4/recommendations", "/recs/v1/items/3", "/recs/readyz")]

    assert asyncio.run(go({})) == [401, 401, 200]
    assert asyncio.run(go({"authorization": f"Bearer {TOKEN}"})) == [200, 200, 200]


def test_app_path_strips_only_a_whole_route_prefix():
    from serve_app.middleware import app_path

    assert app_path({"path": "/recs/v1/x", "root_path": "/recs"}) == "/v1/x"
    assert app_path({"path": "/recs", "root_path": "/recs/"}) == "/"
    assert app_path({"path": "/recsv1/x", "root_path": "/recs"}) == "/recsv1/x"
    assert app_path({"path": "/v1/x", "root_path": ""}) == "/v1/x" == app_path({"path": "/v1/x"})

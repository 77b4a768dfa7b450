"""The HTTP API's contract, exercised in-process (ASGI) on a loaded state: no Ray needed."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from serve_fixtures import K

from semconv.serving.state import load_state
from serve_app.api import build_api
from serve_app.middleware import BodySizeLimit, RequestMetrics


class FixedBackend:
    """A backend with one state and a toy tokenizer (codes = sign bits of the first 3 values)."""

    max_batch = 4
    last_error = None

    def __init__(self, state, dim: int | None = 3):
        self.state, self.dim = state, dim

    def tokenizer_info(self):
        return ("toy", self.dim) if self.dim else None

    async def encode(self, embeddings, texts):
        return (embeddings[:, :3] > 0).astype(np.int64), np.full(len(embeddings), -1)


def call(api, method: str, url: str, **kw) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
            return await c.request(method, url, **kw)
    return asyncio.run(go())


@pytest.fixture()
def api(run_dir, tmp_path):
    state = load_state(run_dir.uri, cache_dir=tmp_path / "cache")
    return build_api(FixedBackend(state), max_body_bytes=4096)


def test_readiness_waits_for_a_state():
    api = build_api(FixedBackend(None))
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
    ([{"embedding": [1.0, 2.0]}], "3 values"),
    ([{"embedding": [1.0, float("nan"), 0.0]}], "NaN"),
    ([{"embedding": [1.0, 1e39, 0.0]}], "float32"),
    ([{"embedding": [1e20, 0.0, 0.0]}], "squared norm"),  # finite in float32, but its norm is not
    ([{"embedding": [1.0, 2.0, 3.0]}] * 5, "at most 4 items"),
])
def test_bad_tokenize_batches_are_422(api, items, where):
    r = call(api, "POST", "/v1/items/tokenize", content=json.dumps({"items": items}),
             headers={"content-type": "application/json"})
    assert r.status_code == 422 and where in r.text, r.text


def test_tokenize_without_a_codebook_is_503(run_dir, tmp_path):
    api = build_api(FixedBackend(load_state(run_dir.uri, cache_dir=tmp_path / "c"), dim=None))
    r = call(api, "POST", "/v1/items/tokenize", json={"items": [{"embedding": [1.0, 1.0, 1.0]}]})
    assert r.status_code == 503 and "codebook" in r.text


def test_body_over_the_limit_is_413_declared_or_streamed(api):
    big = {"items": [{"embedding": [0.5] * 3, "title": "x" * 5000}]}
    assert call(api, "POST", "/v1/items/tokenize", json=big).status_code == 413

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = call(api, "POST", "/v1/items/tokenize", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_request_metrics_record_route_templates_and_statuses(run_dir, tmp_path):
    seen = []
    api = build_api(FixedBackend(load_state(run_dir.uri, cache_dir=tmp_path / "c")), make_recorder=lambda: lambda *a: seen.append(a))
    call(api, "GET", "/v1/users/2/recommendations?k=2")
    call(api, "GET", "/v1/items/999")
    call(api, "GET", "/nope")
    assert seen == [("/v1/users/{user_id}/recommendations", "GET", 200),
                    ("/v1/items/{item_id}", "GET", 404), ("other", "GET", 404)]
    assert {m.cls for m in api.user_middleware} == {BodySizeLimit, RequestMetrics}

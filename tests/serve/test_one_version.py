"""One version everywhere, in process (no Ray): the ingress and the tokenizer deployment classes
wired by handle stand-ins, switched between two versions that differ in catalogue, codes and
codebook while requests keep arriving. ``test_version_switch_app.py`` runs the same against
real Serve with the model deployment too."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest

from semconv.serving.version import Target, version_builds, version_id
from serve_app import app as app_module
from serve_app import tokenizer as tokenizer_module
from serve_app.api import VERSION_HEADER
from serve_app.app import SemconvIngress
from serve_app.tokenizer import CodeTokenizer, load_tokenizer

from .serve_fixtures import V1, V2, code_embedding, make_run_dir

WORKERS = 4  # concurrent clients: at most this many requests in flight
TOKENIZE_BODY = {"items": [{"embedding": code_embedding((3, 3, 3))}, {"embedding": code_embedding((0, 0, 1))}]}


async def _result(value):
    return await value if asyncio.iscoroutine(value) else value


class LocalHandle:
    """A ``DeploymentHandle`` stand-in for one replica in this process: ``.method.remote(...)``
    and ``broadcast(method, ...)``."""

    def __init__(self, replica, name: str):
        self.replica, self.deployment_name = replica, name

    def __getattr__(self, method: str):
        fn = getattr(self.replica, method)

        class Method:
            @staticmethod
            def remote(*args):
                return asyncio.ensure_future(_result(fn(*args)))

        return Method

    def broadcast(self, method: str, *args):
        fn = getattr(self.replica, method)

        class Broadcast:
            @staticmethod
            async def results_async(timeout_s=None, return_exceptions=False):
                return [await _result(fn(*args))]

        return Broadcast


def tokenizer_replica(args: dict) -> CodeTokenizer:
    """The tokenizer deployment's class, its ``@serve.batch`` method unbatched (serve.batch needs
    a replica context): each request is a batch of one, through the same per-version code."""
    replica = CodeTokenizer.func_or_class(args)
    unbatched = CodeTokenizer.func_or_class._encode.__wrapped__

    async def encode(request):
        (out,) = await unbatched(replica, [request])
        return out

    replica._encode = encode
    return replica


async def start_replicas(args: dict, user_config: dict):
    """A tokenizer and an ingress replica as Serve starts them: constructor, then reconfigure."""
    tokenizer = tokenizer_replica(args)
    await tokenizer.reconfigure(user_config)
    cls = SemconvIngress.func_or_class.__mro__[1]  # the class under @serve.ingress's wrapper
    assert "__serve_build_asgi_app__" in cls.__dict__
    ingress = cls.__new__(cls)
    await cls.__init__(ingress, args, tokenizer=LocalHandle(tokenizer, "CodeTokenizer"))
    await ingress.reconfigure(user_config)
    return tokenizer, ingress


def expected_answers(run, catalogue) -> dict:
    """What version ``run`` answers: the lookup of user 4 and the tokenize body above."""
    from serve_app.service import encode_isolated, parse_tokenize
    from serve_app.schemas import tokenize_request_model

    loaded = load_tokenizer(run.uri)
    emb, texts = parse_tokenize(json.dumps(TOKENIZE_BODY).encode(), tokenize_request_model(4), loaded.dim)
    ((codes, collides),) = encode_isolated(loaded.tokenizer, [(emb, texts)])
    items = [catalogue.item_ids[(4 + j) % 40] for j in range(3)]
    return {"lookup": {"version": catalogue.name, "item_ids": items, "titles": [catalogue.title.format(i) for i in items]},
            "tokenize": {"codebook": run.manifest("codebook")["build"], "codes": codes.tolist(),
                         "collides_with": collides.tolist()}}


@pytest.fixture()
def two_versions(tmp_path) -> dict:
    runs = {V1.name: make_run_dir(tmp_path / "v1", V1), V2.name: make_run_dir(tmp_path / "v2", V2)}
    out = {}
    for catalogue in (V1, V2):
        run = runs[catalogue.name]
        target = Target(run.uri)
        out[version_id(target, version_builds(target))] = {"run": run, **expected_answers(run, catalogue)}
    (a, b) = out.values()
    assert a["lookup"] != b["lookup"] and a["tokenize"]["codes"] != b["tokenize"]["codes"]
    return out


async def until(condition, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_switch_under_traffic_flips_once_every_deployment_holds_the_version_and_never_mixes(
        two_versions, tmp_path, monkeypatch):
    """v1 -> v2 while lookups and tokenize requests keep coming; the tokenizer's v2 load is held
    back, so the ingress, which has loaded v2, must keep answering v1 until the tokenizer holds
    v2. Every answer is one version's whole answer, named by its header; none fails."""
    (vid1, v1), (vid2, v2) = two_versions.items()
    monkeypatch.setattr(app_module, "serve_http_host", lambda: "127.0.0.1")
    release = threading.Event()

    def gated(run_dir: str, reuse=None):
        if run_dir == v2["run"].uri:
            release.wait(60)
        return load_tokenizer(run_dir, reuse)

    monkeypatch.setattr(tokenizer_module, "load_tokenizer", gated)
    args = {"run_dir": str(tmp_path / "never-read"), "cache_dir": str(tmp_path / "cache"), "max_batch": 4}
    answers: list[tuple[str, str, int, dict]] = []

    async def go():
        tokenizer, ingress = await start_replicas(args, {"run_dir": v1["run"].uri})
        api = ingress.__serve_build_asgi_app__()
        stop = asyncio.Event()

        async def traffic(c: httpx.AsyncClient) -> None:
            while not stop.is_set():
                r = await c.get("/v1/users/4/recommendations", params={"k": 3})
                answers.append(("lookup", r.headers.get(VERSION_HEADER), r.status_code, r.json()))
                r = await c.post("/v1/items/tokenize", json=TOKENIZE_BODY)
                answers.append(("tokenize", r.headers.get(VERSION_HEADER), r.status_code, r.json()))

        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            workers = [asyncio.create_task(traffic(c)) for _ in range(WORKERS)]
            try:
                await until(lambda: len(answers) > 20)
                switches = [asyncio.create_task(tokenizer.reconfigure({"run_dir": v2["run"].uri})),
                            asyncio.create_task(ingress.reconfigure({"run_dir": v2["run"].uri}))]
                await until(lambda: ingress.versions.holds(vid2))  # the ingress has v2 loaded ...
                seen = len(answers)
                await until(lambda: len(answers) > seen + 20)
                assert ingress.versions.current_id == vid1  # ... and waits for the tokenizer
                assert {vid for _, vid, _, _ in answers[seen:]} == {vid1}, answers[seen:]
                release.set()
                await asyncio.gather(*switches)
                assert ingress.versions.current_id == tokenizer.versions.current_id == vid2
                seen = len(answers)
                await until(lambda: len(answers) > seen + 20)
            finally:
                release.set()
                stop.set()
                await asyncio.gather(*workers)
        return seen

    after_flip = asyncio.run(go())
    assert all(status == 200 for _, _, status, _ in answers), [a for a in answers if a[2] != 200][:3]
    for kind, vid, _, body in answers:
        want = two_versions[vid][kind]
        assert {k: body[k] for k in want} == want, (kind, vid, body)
    assert {vid for _, vid, _, _ in answers} == {vid1, vid2}
    late = [vid for _, vid, _, _ in answers[after_flip:]]
    assert late.count(vid1) <= WORKERS  # only the requests in flight at the flip answer from v1


def test_the_tokenizer_answers_the_version_asked_for_and_503_for_one_it_does_not_hold(two_versions, tmp_path):
    (vid1, v1), (vid2, v2) = two_versions.items()
    body = json.dumps(TOKENIZE_BODY).encode()

    async def go():
        tokenizer = tokenizer_replica({"run_dir": str(tmp_path / "never-read"), "max_batch": 4})
        await tokenizer.reconfigure({"run_dir": v1["run"].uri})
        await tokenizer.reconfigure({"run_dir": v2["run"].uri})
        return [await tokenizer.tokenize(v, body) for v in (vid1, vid2, "0123456789ab")]

    old, new, unknown = asyncio.run(go())
    assert {k: old["body"][k] for k in v1["tokenize"]} == v1["tokenize"]  # the version before stays held
    assert {k: new["body"][k] for k in v2["tokenize"]} == v2["tokenize"]
    assert unknown["status"] == 503 and "version 0123456789ab is not loaded on this codebook replica" in unknown["detail"]


def test_a_replica_starts_on_its_user_config_version_without_reading_args_run_dir(two_versions, tmp_path, monkeypatch):
    """Serve calls reconfigure right after the constructor: the constructor loads nothing, so a
    replica whose args.run_dir was deleted starts directly on the user_config version."""
    (vid1, v1), (vid2, v2) = two_versions.items()
    monkeypatch.setattr(app_module, "serve_http_host", lambda: "127.0.0.1")
    deleted = tmp_path / "deleted-run"
    args = {"run_dir": str(deleted), "cache_dir": str(tmp_path / "cache"), "max_batch": 4}

    async def go():
        tokenizer, ingress = await start_replicas(args, {"run_dir": v2["run"].uri})
        return tokenizer.versions.current_id, ingress.versions.current_id, ingress.versions.reloads

    assert asyncio.run(go()) == (vid2, vid2, 1)
    assert not Path(deleted).exists()  # never even opened (a local RunDir would create it)

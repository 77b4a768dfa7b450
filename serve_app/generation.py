"""Online generation in the Serve app: the model deployment and the ingress side of its route.

``POST /v1/recommendations`` ranks a posted history with the fine-tuned model (constrained beam
search, the precache's own decoding, see :mod:`semconv.serving.generation`). The model runs in
:class:`ModelGenerator`, a deployment of its own (own ``ray_actor_options``: CPU by default,
``num_gpus`` on a GPU cluster; own autoscaling and ``max_queued_requests``), so the ingress keeps
answering lookups while beams are searched elsewhere: a generation request only awaits a handle
there. Requests queued within ``batch_wait_timeout_s`` share one batched beam search
(``@serve.batch``; ``max_batch_size: 1`` in its ``user_config`` turns batching off in place).

One version per request: the ingress parses the body and resolves the history against the
catalogue of the version it serves (off its event loop; 422 naming unknown ids), the model
deployment ranks with that version's model (by id; 503 while it does not hold it) and the
ingress names the items from the same catalogue. Limits: the ingress holds at most
``generation.max_inflight`` generation requests per replica (more get 429, so they never fill
the slots lookups need), maps the model deployment's full queue to 429 and a request not
answered within ``generation.timeout_s`` to 503; the model deployment checks ``k`` and
``num_beams`` against its model (422) before any model time. A query that fails in the model
gets 503 with the reason, alone or in a batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import Request, Response
from pydantic import Field
from ray import serve

from semconv.artifacts import RunDir
from semconv.serving.catalog import ItemCatalog
from semconv.serving.generation import (
    GenerationInputError,
    GenerationLimits,
    Query,
    check_query,
    describe_answer,
    model_answer,
    rank_queries,
    resolve_history,
)
from semconv.serving.state import ServingState
from semconv.serving.version import Target, build_of
from serve_app import service
from serve_app.config import AppArgs, ServeUserConfig
from serve_app.generation_schemas import GeneratedRecommendations, GenerateRequest, GenerationArgs
from serve_app.handles import as_reply, call_deployment, from_reply
from serve_app.loading import VersionMetrics, Versions, run_by_version
from serve_app.schemas import inline_schema

log = logging.getLogger("ray.serve")
MODEL_INPUTS = ("model", "item_codes", "precache", "splits")  # what load_run_ranker reads


class GeneratorUserConfig(ServeUserConfig):
    """``user_config`` of :class:`ModelGenerator`: the app's version keys plus batching."""

    max_batch_size: int = Field(16, ge=1, le=1024, description="requests sharing one beam search (1: unbatched)")
    batch_wait_timeout_s: float = Field(0.1, ge=0, le=10, description="how long a batch waits to fill: longer "
                                        "than a burst of arrivals takes to reach the replica")
    answer_spacing_s: float = Field(0.02, ge=0, le=1, description="a batch's answers leave this far apart, so "
                                    "they do not reach the proxy and ingress as one burst (0: all at once)")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    ranker: Any  # semconv.inference.ranker.GenerativeRanker
    limits: GenerationLimits
    known_items: np.ndarray  # sorted item ids with codes
    builds: dict  # build ids of the run's artifacts it was loaded from (MODEL_INPUTS)


def load_model(run_dir: str, args: GenerationArgs, use_gpu: bool, reuse: LoadedModel | None = None) -> LoadedModel | None:
    """The run's fine-tuned model with the precache's settings, or None without a ``model/``;
    ``reuse`` when it was loaded from the very same builds (a switch of the precache alone)."""
    from semconv.inference.run_ranker import load_run_ranker, resolve_settings

    run = RunDir(run_dir)
    if not run.is_complete("model"):
        return None
    builds = {n: build_of(run.manifest(n)) for n in MODEL_INPUTS if run.is_complete(n)}
    if reuse is not None and reuse.builds == builds:
        return reuse
    settings = resolve_settings(run, args.bf16, use_gpu, args.max_len)
    ranker, _ = load_run_ranker(run, settings, use_gpu=use_gpu)
    if settings.precache_dtype and settings.precache_dtype != settings.dtype:
        log.warning("semconv: generating in %s (%s) but the precache ran in %s: answers can differ from the "
                    "precache at near-ties", settings.dtype, settings.dtype_reason, settings.precache_dtype)
    if settings.dtype_warning:
        log.warning("semconv: %s", settings.dtype_warning)
    log.info("semconv: model generator loaded %s", asdict(settings))
    limits = GenerationLimits(settings.model_version, settings.num_beams, args.max_num_beams or settings.num_beams,
                              settings.top_k, settings.max_len, settings.exclude_history, settings.dtype)
    return LoadedModel(ranker, limits, np.sort(ranker.item_ids.astype(np.int64)), builds)


@dataclass
class BatchStats:
    """What a replica's batches held and how long its model ran (``ModelGenerator.stats``): the
    way to tell whether concurrent requests really share beam searches."""

    sizes: Counter = field(default_factory=Counter)  # batch size -> batches
    busy_s: float = 0.0  # seconds inside the model

    def add(self, size: int, seconds: float) -> None:
        self.sizes[size] += 1
        self.busy_s += seconds

    def snapshot(self) -> dict:
        return {"batches": sum(self.sizes.values()), "requests": sum(n * c for n, c in self.sizes.items()),
                "sizes": {str(n): c for n, c in sorted(self.sizes.items())}, "busy_s": self.busy_s}

    @staticmethod
    def between(before: dict, after: dict) -> dict:
        """What the batches between two snapshots held (their sizes, mean size, model seconds)."""
        sizes = {n: c - before["sizes"].get(n, 0) for n, c in after["sizes"].items()}
        sizes = {n: c for n, c in sizes.items() if c}
        batches, requests = after["batches"] - before["batches"], after["requests"] - before["requests"]
        return {"batches": batches, "mean_batch": requests / batches if batches else None, "sizes": sizes,
                "busy_s": after["busy_s"] - before["busy_s"]}


class AnswerSpacing:
    """Spaces the answers of one batched beam search ``spacing_s`` apart.

    A batch finishes all its queries at once. Released together, its answers and the clients'
    next requests cross the proxy and the ingress as one burst (~2 x batch size requests), and a
    lookup arriving then waits behind all of them: on 2 cores that burst was most of the lookups'
    p99 beside batched generation (``bench/RESULTS.md``). Spaced, a lookup waits behind one or two.
    A lone answer (nothing released within ``spacing_s``) leaves at once; the last of a batch of
    16 waits ``15 * spacing_s`` (0.3 s at the default, against seconds of beam search).
    """

    def __init__(self, spacing_s: float):
        self.spacing_s = spacing_s
        self._next = 0.0  # event-loop time at which the next answer may leave

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self.spacing_s
        if slot > now:
            await asyncio.sleep(slot - now)


def set_thread_cpu_priority(priority: str) -> None:
    """Lower this thread's CPU priority, and so that of the threads it starts later (Linux
    keeps policy and niceness per thread and passes them on): ``idle`` is SCHED_IDLE (runs only
    on CPU time no other task wants, and yields it the moment one wakes up), ``low`` nice 19,
    ``normal`` leaves it. Where SCHED_IDLE does not exist, ``idle`` is ``low``."""
    if priority == "normal":
        return
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19 - os.nice(0))


def rank_isolated(loaded: LoadedModel, queries: list[Query]) -> list[dict]:
    """Answers for queries of one model version. When the batch fails, each query runs alone, so
    one query cannot fail the others merged with it; a query that fails alone answers 503 with
    the reason, the same whether it came alone or in a batch."""
    def answers(qs: list[Query]) -> list[dict]:
        ranked = rank_queries(loaded.ranker, qs, loaded.limits.exclude_history)
        return [model_answer(q, items, scores, loaded.limits) for q, (items, scores) in zip(qs, ranked)]

    def failed(exc: Exception) -> dict:
        log.error("semconv: generation failed for one query", exc_info=exc)
        return {"status": 503, "detail": f"generation failed for this history ({type(exc).__name__})"}

    try:
        return answers(queries)
    except Exception as exc:
        if len(queries) == 1:
            return [failed(exc)]
        log.warning("semconv: a generation batch of %d failed; running its queries one by one", len(queries))
    out: list[dict] = []
    for q in queries:
        try:
            out += answers([q])
        except Exception as exc:
            out.append(failed(exc))
    return out


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    max_ongoing_requests=32,
    max_queued_requests=64,
    health_check_period_s=10,
    user_config={},  # so Serve calls reconfigure, the first load included, on every replica
)
class ModelGenerator:
    """The recommender LLM of the current version (and of the one before), ranking the queued
    queries together; ``user_config`` names the version and the batching."""

    def __init__(self, args: dict[str, Any] | AppArgs):
        import ray
        import torch

        self.args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
        gen = self.args.generation
        self.use_gpu = bool(ray.get_gpu_ids())
        if not self.use_gpu:
            set_thread_cpu_priority(gen.cpu_priority)  # before any to_thread: its threads inherit it
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            torch.set_num_threads(gen.torch_threads or max(1, int(cpus)))
        self.metrics = VersionMetrics()
        self.versions: Versions[LoadedModel | None] = Versions(
            self._load, self.args.load_deadline_s, "model", on_change=self.metrics.update)
        self.batch_size = GeneratorUserConfig().max_batch_size
        self.spacing = AnswerSpacing(GeneratorUserConfig().answer_spacing_s)
        self.batches = BatchStats()

    def _load(self, target: Target, _builds: dict, reuse: LoadedModel | None) -> LoadedModel | None:
        loaded = load_model(target.run_dir, self.args.generation, self.use_gpu, reuse)
        if loaded is not None:
            loaded.ranker.batch_size = self.batch_size  # one serve batch = one search
        return loaded

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = GeneratorUserConfig.model_validate(user_config or {})
        self._rank.set_max_batch_size(cfg.max_batch_size)
        self._rank.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.batch_size = cfg.max_batch_size
        self.spacing.spacing_s = cfg.answer_spacing_s
        for loaded in self.versions.held.values():
            if loaded is not None:
                loaded.ranker.batch_size = cfg.max_batch_size
        await self.versions.switch(cfg.target(self.args))

    def check_health(self) -> None:
        self.versions.check()

    def holds(self, version_id: str) -> bool:
        return self.versions.holds(version_id)

    def stats(self) -> dict:
        """Batch sizes and model seconds since the replica started (bench/online_generation.py)."""
        return self.batches.snapshot()

    async def generate(self, version_id: str, history: tuple[int, ...], k: int | None, num_beams: int | None) -> dict:
        """``{"status": 200, "body": answer}`` from version ``version_id``'s model, or an error
        reply (422 / 503) for the ingress; never an exception."""
        try:
            loaded = await self.versions.get(version_id, self.args.generation.timeout_s)
            if loaded is None:
                raise service.Unavailable("online generation is unavailable: no model/ in the run directory")
            try:
                query = check_query(tuple(history), k, num_beams, loaded.limits, loaded.known_items)
            except GenerationInputError as exc:
                raise service.InvalidInput(exc.loc, exc.msg) from None
            answer = await self._rank((loaded, query))
            await self.spacing.wait()
            return answer if "status" in answer else {"status": 200, "body": answer}
        except Exception as exc:
            return as_reply(exc)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.1)
    async def _rank(self, requests: list[tuple[LoadedModel, Query]]) -> list[dict]:
        """One batched beam search per model version among the queued queries, in a thread (the
        replica keeps answering health checks)."""
        async def rank(loaded: LoadedModel, reqs: list[tuple[LoadedModel, Query]]) -> list[dict]:
            t0 = time.perf_counter()
            answers = await asyncio.to_thread(rank_isolated, loaded, [q for _, q in reqs])
            self.batches.add(len(reqs), time.perf_counter() - t0)
            return answers

        return await run_by_version(requests, lambda r: r[0], rank)


def parse_request(catalog: ItemCatalog, body: bytes) -> tuple[tuple[int, ...], GenerateRequest]:
    """A raw generation body -> ``(history item ids, request)`` against ``catalog``, or
    InvalidInput naming the field (run in a thread: a body may hold 4096 ids)."""
    req = service.parse_body(body, GenerateRequest)
    try:
        return resolve_history(catalog, req.history, req.source_history), req
    except GenerationInputError as exc:
        raise service.InvalidInput(exc.loc, exc.msg) from None


class GenerationClient:
    """The ingress side: parses and resolves a posted history against the version the request
    was resolved to, has that version's model rank it, names the items from its catalogue."""

    def __init__(self, handle, args: GenerationArgs):
        self.handle, self.args = handle, args
        self._inflight = 0

    async def recommend(self, state: ServingState, body: bytes) -> dict:
        """The response to one request; raises service.InvalidInput / Overloaded / Unavailable."""
        if self._inflight >= self.args.max_inflight:
            raise service.Overloaded(f"{self._inflight} generation requests in flight: retry later")
        self._inflight += 1
        try:
            history, req = await asyncio.to_thread(parse_request, state.catalog, body)
            reply = await call_deployment(
                self.handle.generate.remote(state.version_id, history, req.k, req.num_beams),
                self.args.timeout_s, "generation")
        finally:
            self._inflight -= 1
        return describe_answer(state.catalog, from_reply(reply))


def add_generation_route(router, backend, current) -> None:
    """``POST /v1/recommendations`` on ``router``: ``backend.generation`` is the replica's
    :class:`GenerationClient` (absent or None: not deployed, 503), ``current(response)`` the
    serving state the request is resolved against (named in the answer's header). The body is read raw and parsed off the event loop
    (the app's body size limit applies first)."""
    responses = {422: {"description": "a bad field, or unknown item ids (named)"},
                 429: {"description": "overloaded: retry later"},
                 503: {"description": "not deployed, loading, or not answered within timeout_s"}}
    body_schema = {"required": True, "content": {"application/json": {"schema": inline_schema(GenerateRequest)}}}

    @router.post("/v1/recommendations", response_model=GeneratedRecommendations, responses=responses,
                 openapi_extra={"requestBody": body_schema})
    async def generate(request: Request, response: Response) -> dict:
        """Top-k items for a posted history from the fine-tuned model: constrained beam search
        with the precache's prompt, beam width, K and history exclusion."""
        client = getattr(backend, "generation", None)
        if client is None:
            raise service.Unavailable("online generation is not deployed")
        return await client.recommend(current(response), await request.body())

"""Online generation in the Serve app: the model deployment and the ingress side of its route.

``POST /v1/recommendations`` ranks a posted history with the fine-tuned model (constrained beam
search, the precache's own decoding, see :mod:`semconv.serving.generation`). The model runs in
:class:`ModelGenerator`, a deployment of its own (own ``ray_actor_options``: CPU by default,
``num_gpus`` on a GPU cluster; own autoscaling and ``max_queued_requests``), so the ingress keeps
answering lookups while beams are searched elsewhere: a generation request only awaits a handle
there. Requests queued within ``batch_wait_timeout_s`` share one batched beam search
(``@serve.batch``; ``max_batch_size: 1`` in its ``user_config`` turns batching off in place).

Limits: the ingress resolves the history against its catalogue (422 naming unknown ids), holds
at most ``generation.max_inflight`` generation requests per replica (more get 429, so they never
fill the slots lookups need), maps the model deployment's full queue to 429 and a request not
answered within ``generation.timeout_s`` to 503; the model deployment checks ``k`` and
``num_beams`` against its model (422) before any model time.
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
    source_item_index,
)
from serve_app import service
from serve_app.config import AppArgs, ServeUserConfig
from serve_app.generation_schemas import GeneratedRecommendations, GenerateRequest, GenerationArgs
from serve_app.handles import call_deployment
from serve_app.loading import VersionMetrics, Versioned, run_by_version

log = logging.getLogger("ray.serve")


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


def load_model(run_dir: str, args: GenerationArgs, use_gpu: bool) -> LoadedModel | None:
    """The run's fine-tuned model with the precache's settings, or None without a ``model/``."""
    from semconv.inference.run_ranker import load_run_ranker, resolve_settings

    run = RunDir(run_dir)
    if not run.is_complete("model"):
        return None
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
    return LoadedModel(ranker, limits, np.sort(ranker.item_ids.astype(np.int64)))


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
    """Answers for queries of one model version; when the batch fails, each query runs alone,
    so one query cannot fail the others merged with it."""
    exclude = loaded.limits.exclude_history
    try:
        return [model_answer(q, i, s, loaded.limits) for q, (i, s) in zip(queries, rank_queries(loaded.ranker, queries, exclude))]
    except Exception:
        if len(queries) == 1:
            raise
        log.exception("semconv: a generation batch of %d failed; running its queries one by one", len(queries))
    out: list[dict] = []
    for q in queries:
        try:
            (items, scores), = rank_queries(loaded.ranker, [q], exclude)
            out.append(model_answer(q, items, scores, loaded.limits))
        except Exception as exc:
            log.exception("semconv: generation failed for one query")
            out.append({"status": 503, "detail": f"generation failed ({type(exc).__name__})"})
    return out


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    max_ongoing_requests=32,
    max_queued_requests=64,
    health_check_period_s=10,
)
class ModelGenerator:
    """One loaded recommender LLM that ranks the queued queries together; ``user_config.run_dir``
    switches to another run's model in place (the old one answers until the new one is loaded)."""

    async def __init__(self, args: dict[str, Any] | AppArgs):
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
        self.versioned: Versioned[LoadedModel | None] = Versioned(
            lambda run_dir, _old: load_model(run_dir, gen, self.use_gpu), self.args.load_deadline_s, "model",
            on_change=lambda v: self.metrics.update(v, v.current.limits.model_version if v.current else None))
        self.batch_size = 16
        self.spacing = AnswerSpacing(GeneratorUserConfig().answer_spacing_s)
        self.batches = BatchStats()
        await self.versioned.first(self.args.run_dir)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = GeneratorUserConfig.model_validate(user_config or {})
        self._rank.set_max_batch_size(cfg.max_batch_size)
        self._rank.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.batch_size = cfg.max_batch_size
        self.spacing.spacing_s = cfg.answer_spacing_s
        if self.versioned.current is not None:
            self.versioned.current.ranker.batch_size = cfg.max_batch_size  # one serve batch = one search
        run_dir, _, _ = cfg.target(self.args)
        if await self.versioned.switch(run_dir) and self.versioned.current is not None:
            self.versioned.current.ranker.batch_size = self.batch_size

    def check_health(self) -> None:
        self.versioned.check()

    def stats(self) -> dict:
        """Batch sizes and model seconds since the replica started (bench/online_generation.py)."""
        return self.batches.snapshot()

    async def generate(self, history: tuple[int, ...], k: int | None, num_beams: int | None) -> dict:
        """``{"status": 200, "body": answer}`` or an error reply (422 / 503) for the ingress."""
        loaded = self.versioned.current
        if loaded is None:
            return {"status": 503, "detail": "online generation is unavailable: no model/ in the run directory"}
        try:
            query = check_query(tuple(history), k, num_beams, loaded.limits, loaded.known_items)
        except GenerationInputError as exc:
            return {"status": 422, "detail": [{"loc": exc.loc, "msg": exc.msg, "type": "value_error"}]}
        answer = await self._rank((loaded, query))
        await self.spacing.wait()
        return answer if "status" in answer else {"status": 200, "body": answer}

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


class GenerationClient:
    """The ingress side: resolves the posted history, calls the model deployment, describes."""

    def __init__(self, handle, args: GenerationArgs):
        self.handle, self.args = handle, args
        self._inflight = 0
        self._sources: tuple[ItemCatalog, Any] | None = None  # (catalogue, its source-id index)

    def _source_index(self, catalog: ItemCatalog):
        if self._sources is None or self._sources[0] is not catalog:
            self._sources = (catalog, source_item_index(catalog))
        return self._sources[1]

    async def recommend(self, catalog: ItemCatalog, body: GenerateRequest) -> dict:
        """The response to one request; raises service.InvalidInput / Overloaded / Unavailable."""
        if self._inflight >= self.args.max_inflight:
            raise service.Overloaded(f"{self._inflight} generation requests in flight: retry later")
        self._inflight += 1
        try:
            # the index sorts every item's source id once per catalogue: off the event loop
            index = (await asyncio.to_thread(self._source_index, catalog)
                     if body.source_history is not None else None)
            try:
                history = resolve_history(catalog, body.history, body.source_history, index)
            except GenerationInputError as exc:
                raise service.InvalidInput(exc.loc, exc.msg) from None
            reply = await self._call(history, body.k, body.num_beams)
        finally:
            self._inflight -= 1
        if reply["status"] == 422:
            d = reply["detail"][0]
            raise service.InvalidInput(d["loc"], d["msg"], d["type"])
        if reply["status"] != 200:
            raise service.Unavailable(reply["detail"])
        return describe_answer(catalog, reply["body"])

    async def _call(self, history: tuple[int, ...], k: int | None, num_beams: int | None) -> dict:
        return await call_deployment(self.handle.generate.remote(history, k, num_beams), self.args.timeout_s,
                                     "generation")


def add_generation_route(router, backend, current) -> None:
    """``POST /v1/recommendations`` on ``router``: ``backend.generation`` is the replica's
    :class:`GenerationClient` (absent or None: not deployed, 503), ``current()`` the serving
    state (the catalogue that names the items)."""
    responses = {422: {"description": "a bad field, or unknown item ids (named)"},
                 429: {"description": "overloaded: retry later"},
                 503: {"description": "not deployed, loading, or not answered within timeout_s"}}

    @router.post("/v1/recommendations", response_model=GeneratedRecommendations, responses=responses)
    async def generate(body: GenerateRequest) -> dict:
        """Top-k items for a posted history from the fine-tuned model: constrained beam search
        with the precache's prompt, beam width, K and history exclusion."""
        client = getattr(backend, "generation", None)
        if client is None:
            raise service.Unavailable("online generation is not deployed")
        return await client.recommend(current().catalog, body)

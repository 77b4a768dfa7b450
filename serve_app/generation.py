"""Online generation in the Serve app: the model deployment and the ingress side of its route.

``POST /v1/recommendations`` ranks a posted history with the fine-tuned model (constrained beam
search, the precache's own decoding, see :mod:`semconv.serving.generation`). The model runs in
:class:`ModelGenerator`, a deployment of its own (own ``ray_actor_options``: CPU by default,
``num_gpus`` on a GPU cluster; own autoscaling and ``max_queued_requests``), so the ingress keeps
answering lookups while beams are searched elsewhere: a generation request only awaits a handle
there. Concurrent requests share one batched beam search (``@serve.batch``).

Limits: the ingress checks a request against the catalog and the model's limits before any model
time (422 naming the field or the unknown ids), holds at most ``max_inflight`` generation
requests per ingress replica (more get 429, so they can never fill the slots lookups need), maps
the model deployment's full queue (``max_queued_requests``) to 429 and a request over
``timeout_s`` to 504.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from semconv.serving.catalog import ItemCatalog
from semconv.serving.generation import (
    GenerationInputError,
    GenerationLimits,
    Query,
    check_query,
    generated_response,
    rank_queries,
    resolve_history,
    source_item_index,
)

log = logging.getLogger("ray.serve")

MAX_HISTORY_ITEMS = 4096  # a posted history may be longer than max_len: the prompt keeps the last
INT64_MAX = 2**63 - 1


class GenerationArgs(BaseModel):
    """``generation:`` in the app's args."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | Literal["auto"] = Field(
        "auto", description="auto: deploy the model when the run directory has a complete model/")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="as precache.bf16: auto is bf16 on a GPU or a CPU with native bf16, else float32")
    max_len: int | None = Field(None, ge=1, description="prompt keeps the last max_len items (None: splits/ max_len)")
    max_num_beams: int | None = Field(None, ge=1, description="largest per-request num_beams (None: the precache's)")
    timeout_s: float = Field(10.0, gt=0, description="a generation request waiting longer gets 504")
    max_inflight: int = Field(32, ge=1, description="generation requests one ingress replica holds; more get 429")
    torch_threads: int | None = Field(None, ge=1, description="None: the CPUs the model replica reserves")


class GeneratorUserConfig(BaseModel):
    """``user_config`` of :class:`ModelGenerator` (changed in place, no restart)."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(16, ge=1, le=1024, description="requests sharing one beam search (1: unbatched)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Annotated[int, Field(ge=0, le=INT64_MAX)]] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY_ITEMS, description="item ids, oldest first")
    source_history: list[Annotated[str, Field(max_length=256)]] | None = Field(
        None, min_length=1, max_length=MAX_HISTORY_ITEMS, description="the dataset's item ids, oldest first")
    k: int | None = Field(None, ge=1, description="how many items (default min(10, num_beams); at most num_beams)")
    num_beams: int | None = Field(None, ge=1, description="beam width (default the precache's; at most max_num_beams)")


class GeneratedRecommendations(BaseModel):
    k: int
    version: str = Field(description="the model version the list came from")
    fallback: bool = Field(False, description="always false: the model answered")
    num_beams: int
    history_used: int = Field(description="history items in the prompt (the last max_len)")
    item_ids: list[int]
    source_ids: list[str]
    titles: list[str]
    scores: list[float] = Field(description="log-probability of each item's code tokens")


@serve.deployment(
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
    max_ongoing_requests=32,
    max_queued_requests=64,
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    health_check_period_s=10,
    user_config={"max_batch_size": 16, "batch_wait_timeout_s": 0.01},
)
class ModelGenerator:
    """One loaded recommender LLM; ranks the queued queries together."""

    async def __init__(self, run_dir: str, args: dict[str, Any]):
        import ray
        import torch

        from semconv.artifacts import RunDir
        from semconv.inference.run_ranker import load_run_ranker, resolve_settings

        a = GenerationArgs.model_validate(args)
        use_gpu = bool(ray.get_gpu_ids())
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        if not use_gpu:
            torch.set_num_threads(a.torch_threads or max(1, int(cpus)))
        run = RunDir(run_dir)
        settings = resolve_settings(run, a.bf16, use_gpu, a.max_len)
        self.ranker, self.settings = await asyncio.to_thread(load_run_ranker, run, settings, use_gpu=use_gpu)
        if settings.precache_dtype and settings.precache_dtype != settings.dtype:
            log.warning("semconv: generating in %s but the precache ran in %s: answers can differ from "
                        "the precache at near-ties", settings.dtype, settings.precache_dtype)
        self.limits_ = GenerationLimits(
            settings.model_version, settings.num_beams, max(a.max_num_beams or settings.num_beams, 1),
            settings.top_k, settings.max_len, settings.exclude_history, settings.dtype)
        log.info("semconv: model generator ready: %s", asdict(settings))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = GeneratorUserConfig.model_validate(user_config or {})
        self._rank.set_max_batch_size(cfg.max_batch_size)
        self._rank.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.ranker.batch_size = cfg.max_batch_size  # one serve batch = one beam search

    def limits(self) -> GenerationLimits:
        return self.limits_

    async def generate(self, query: Query) -> tuple[list[int], list[float]]:
        return await self._rank(query)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _rank(self, queries: list[Query]) -> list[tuple[list[int], list[float]]]:
        """One batched beam search for every query queued within ``batch_wait_timeout_s``
        (in a thread: the replica keeps answering health checks meanwhile)."""
        out = await asyncio.to_thread(rank_queries, self.ranker, queries, self.settings.exclude_history)
        return [(items.tolist(), scores.tolist()) for items, scores in out]


class Overloaded(RuntimeError):
    """Too many generation requests queued (429)."""


class GenerationTimeout(RuntimeError):
    """A generation request waited longer than ``timeout_s`` (504)."""


class OnlineGeneration:
    """The ingress side: checks a request, calls the model deployment, describes the answer."""

    def __init__(self, handle, args: GenerationArgs | dict[str, Any]):
        self.handle = handle
        self.args = args if isinstance(args, GenerationArgs) else GenerationArgs.model_validate(args)
        self._limits: GenerationLimits | None = None
        self._inflight = 0
        self._sources: tuple[ItemCatalog, Any] | None = None  # (catalog, its source-id index)

    async def limits(self) -> GenerationLimits:
        """The model deployment's limits, asked once (the first call waits for the model to load)."""
        if self._limits is None:
            try:
                self._limits = await asyncio.wait_for(self._call(self.handle.limits.remote()), self.args.timeout_s)
            except asyncio.TimeoutError:
                raise GenerationTimeout(f"the model deployment did not answer within {self.args.timeout_s:g}s "
                                        "(still loading?)") from None
        return self._limits

    def _source_index(self, catalog: ItemCatalog):
        if self._sources is None or self._sources[0] is not catalog:
            self._sources = (catalog, source_item_index(catalog))
        return self._sources[1]

    @staticmethod
    async def _call(response):
        from ray.serve.exceptions import BackPressureError

        try:
            return await response
        except BackPressureError:
            raise Overloaded("the model deployment's queue is full: retry later") from None
        except asyncio.CancelledError:
            response.cancel()
            raise

    async def recommend(self, catalog: ItemCatalog, body: GenerateRequest) -> dict:
        """The answer to one request (raises GenerationInputError, Overloaded, GenerationTimeout)."""
        if self._inflight >= self.args.max_inflight:
            raise Overloaded(f"{self._inflight} generation requests in flight on this replica: retry later")
        self._inflight += 1
        try:
            limits = await self.limits()
            index = self._source_index(catalog) if body.source_history is not None else None
            history = resolve_history(catalog, body.history, body.source_history, index)
            query = check_query(history, body.k, body.num_beams, limits)
            try:
                items, scores = await asyncio.wait_for(self._call(self.handle.generate.remote(query)),
                                                       self.args.timeout_s)
            except asyncio.TimeoutError:
                raise GenerationTimeout(f"generation took longer than {self.args.timeout_s:g}s") from None
            return generated_response(catalog, query, items, scores, limits)
        finally:
            self._inflight -= 1


def add_generation_route(router, get_generation, current, invalid_input) -> None:
    """``POST /v1/recommendations`` on ``router`` (the app's /v1 router, so auth covers it).

    ``get_generation()`` returns the replica's :class:`OnlineGeneration` or None (not deployed),
    ``current()`` the serving state (raises while loading), ``invalid_input(loc, msg)`` the
    app's 422 exception.
    """
    responses = {422: {"description": "bad request: field or unknown ids named"},
                 429: {"description": "overloaded: retry later"}, 503: {"description": "not deployed or loading"},
                 504: {"description": "generation timed out"}}

    @router.post("/v1/recommendations", response_model=GeneratedRecommendations, responses=responses)
    async def generate(body: GenerateRequest):
        """Top-k items for a posted history, from the fine-tuned model (constrained beam search
        as in the precache; history items excluded as there)."""
        generation = get_generation()
        if generation is None:
            return JSONResponse(status_code=503, content={"detail": "online generation is not deployed "
                                                                    "(no model/ in the run directory, or generation.enabled: false)"})
        state = current()
        try:
            return await generation.recommend(state.catalog, body)
        except GenerationInputError as exc:
            raise invalid_input(exc.loc, exc.msg) from None
        except Overloaded as exc:
            return JSONResponse(status_code=429, content={"detail": str(exc)}, headers={"Retry-After": "1"})
        except GenerationTimeout as exc:
            return JSONResponse(status_code=504, content={"detail": str(exc)})

"""Cold-start tokenization as its own deployment (``CodeTokenizer``), with its own replicas.

The ingress forwards the raw request body here through a ``DeploymentHandle``: the JSON is
parsed and validated on this deployment's replicas, so a burst of large tokenize bodies queues
here (and gets 429s past ``max_queued_requests``) instead of stalling the lookups on the
ingress. Requests arriving within a few milliseconds share one codebook search
(``@serve.batch``); a batch that fails is re-run request by request, so one bad request fails
only itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from semconv.artifacts import RunDir
from serve_app import service
from serve_app.config import AppArgs, ServeUserConfig
from serve_app.loading import VersionMetrics, Versioned, run_by_version
from serve_app.schemas import tokenize_request_model

log = logging.getLogger("ray.serve")
Encode = Callable[[np.ndarray, list[str] | None], Awaitable[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True, eq=False)
class LoadedTokenizer:
    tokenizer: Any  # semconv.tokenize.cold_start.CodebookTokenizer
    version: str  # the codebook manifest's created_at (never a path)

    @property
    def dim(self) -> int:
        return int(self.tokenizer.dim)


def load_tokenizer(run_dir: str) -> LoadedTokenizer | None:
    """The run directory's codebook with its ``item_codes/`` (collisions), or None without one.

    Refuses an ``item_codes/`` older than the codebook: codes of another codebook would make
    collision checks wrong.
    """
    rd = RunDir(run_dir)
    if not rd.is_complete("codebook"):
        return None
    from semconv.tokenize.cold_start import CodebookTokenizer

    book = rd.manifest("codebook").get("created_at") or "unversioned"
    codes = None
    if rd.is_complete("item_codes"):
        made = rd.manifest("item_codes").get("created_at")
        if made and book != "unversioned" and made < book:
            raise ValueError(f"item_codes/ ({made}) predates codebook/ ({book}): they are not one version")
        codes = rd.local("item_codes")
    return LoadedTokenizer(CodebookTokenizer.from_pretrained(rd.local("codebook"), item_codes=codes), book)


async def tokenize_body(loaded: LoadedTokenizer | None, model, body: bytes, encode: Encode) -> dict:
    """A tokenize response for a raw body, or InvalidInput (422) / Unavailable (503)."""
    if loaded is None:
        raise service.Unavailable("cold-start tokenization is unavailable: no codebook/ in the run directory")
    emb, texts = service.parse_tokenize(body, model, loaded.dim)
    codes, collides = await encode(emb, texts)
    return service.codes_response(loaded.version, codes, collides)


def as_reply(exc: Exception) -> dict:
    """An error as a plain reply the ingress re-raises (exceptions do not cross handles intact)."""
    if isinstance(exc, service.InvalidInput):
        return {"status": 422, "detail": exc.detail()}
    if isinstance(exc, service.Unavailable):
        return {"status": exc.status, "detail": str(exc)}
    raise exc


def from_reply(reply: dict) -> dict:
    """The ingress side of :func:`as_reply`: the body, or the error raised again."""
    status = reply["status"]
    if status == 200:
        return reply["body"]
    if status == 422:
        d = reply["detail"][0]
        raise service.InvalidInput(d["loc"], d["msg"], d["type"])
    raise (service.Overloaded if status == 429 else service.Unavailable)(reply["detail"])


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},  # fits `serve run` on 2 CPUs; cluster/serve.yaml reserves 1
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
)
class CodeTokenizer:
    """Loads the codebook before taking traffic; ``user_config.run_dir`` switches versions."""

    async def __init__(self, args: dict[str, Any] | AppArgs):
        self.args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
        self.model = tokenize_request_model(self.args.max_batch)
        self.metrics = VersionMetrics()
        self.versioned: Versioned[LoadedTokenizer | None] = Versioned(
            lambda run_dir, _old: load_tokenizer(run_dir), self.args.load_deadline_s, "codebook",
            on_change=lambda v: self.metrics.update(v, v.current.version if v.current else None))
        await self.versioned.first(self.args.run_dir)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        run_dir, _, _ = ServeUserConfig.model_validate(user_config or {}).target(self.args)
        await self.versioned.switch(run_dir)

    def check_health(self) -> None:
        self.versioned.check()

    def info(self) -> dict | None:
        loaded = self.versioned.current
        return {"dim": loaded.dim, "codebook": loaded.version} if loaded is not None else None

    async def tokenize(self, body: bytes) -> dict:
        try:
            return {"status": 200, "body": await tokenize_body(self.versioned.current, self.model, body, self._encode_one)}
        except (service.InvalidInput, service.Unavailable) as exc:
            return as_reply(exc)

    async def _encode_one(self, emb: np.ndarray, texts: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        out = await self._encode((self.versioned.current, emb, texts))
        if isinstance(out, Exception):
            raise out
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode(self, requests: list[tuple[LoadedTokenizer, np.ndarray, list[str] | None]]) -> list:
        """One codebook search per version for the requests queued within a few milliseconds."""
        return await run_by_version(requests, lambda r: r[0], lambda loaded, reqs: asyncio.to_thread(
            service.encode_isolated, loaded.tokenizer, [(e, t) for _, e, t in reqs]))

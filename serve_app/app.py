"""The Ray Serve application: a FastAPI ingress that answers lookups, plus deployments it calls.

``serve run serve_app.app:app_builder run_dir=runs/demo`` or ``cluster/serve.yaml``.
Composition (:func:`app_builder`): every deployment is bound here and handed to the ingress as a
``DeploymentHandle``; each has its own replicas, autoscaling and queue limits (one entry per
deployment in ``cluster/serve.yaml``):

- ``SemconvIngress``: HTTP, auth, the lookups (precache, catalogue, fallback held in process: a
  lookup is microseconds, so it takes no extra hop);
- ``CodeTokenizer`` (``serve_app/tokenizer.py``): cold-start tokenization, reached through
  ``self.tokenizer``.

Every deployment loads its version in its constructor (no traffic before) and switches versions
in place when ``user_config`` (``run_dir`` / ``precache`` / ``fallback``) changes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from semconv.serving.state import ServingState, load_state
from serve_app import service
from serve_app.api import age_s, build_api
from serve_app.config import AppArgs, ServeUserConfig, serve_http_host
from serve_app.generation import GenerationClient, ModelGenerator
from serve_app.handles import call_deployment
from serve_app.loading import VersionMetrics, Versioned
from serve_app.middleware import serve_counter_recorder
from serve_app.tokenizer import CodeTokenizer, from_reply

log = logging.getLogger("ray.serve")


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},  # fits `serve run` on 2 CPUs; cluster/serve.yaml reserves 1
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=10,
)
@serve.ingress()
class SemconvIngress:
    """Holds one :class:`ServingState` reference; every request reads it once."""

    async def __init__(self, args: dict[str, Any] | AppArgs, tokenizer: DeploymentHandle | None = None,
                       generator: DeploymentHandle | None = None):
        self.args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
        self.api_token = self.args.api_token(serve_http_host())  # raises when a token is required and unset
        self.max_batch = self.args.max_batch
        self.tokenizer = tokenizer
        self.generation = GenerationClient(generator, self.args.generation) if generator is not None else None
        self._metrics = VersionMetrics()
        from ray.serve.metrics import Counter, Gauge

        self._fallbacks = Counter("semconv_fallback", description="lookups answered with the popularity fallback")
        self._age = Gauge("semconv_precache_age_seconds", description="age of the precache served (its created_at)")
        self.versioned: Versioned[ServingState] = Versioned(
            self._load, self.args.load_deadline_s, "serving state", on_change=self._published)
        await self.versioned.first(ServeUserConfig().target(self.args))
        self.embedding_dim = await self._tokenizer_dim()

    async def _tokenizer_dim(self) -> int | None:
        """The codebook's input dimension for the OpenAPI schema (None when unknown: the
        tokenizer validates either way)."""
        if self.tokenizer is None:
            return None
        try:
            info = await asyncio.wait_for(self.tokenizer.info.remote(), 60)
        except Exception as exc:
            log.warning("semconv: tokenizer info unavailable (%s); the schema omits the embedding length", exc)
            return None
        return info["dim"] if info else None

    def __serve_build_asgi_app__(self):
        return build_api(self, max_body_bytes=self.args.max_body_bytes, make_recorder=serve_counter_recorder,
                         api_token=self.api_token, docs=self.args.docs)

    # ---- versions ---------------------------------------------------------------------------
    @property
    def state(self) -> ServingState | None:
        return self.versioned.current

    def _load(self, target: tuple[str, str | None, bool], old: ServingState | None) -> ServingState:
        run_dir, precache, fallback = target
        return load_state(run_dir, precache, fallback, self.args.cache_dir, reuse=old)

    def _published(self, versioned: Versioned) -> None:
        state = versioned.current
        self._metrics.update(versioned, state.version if state else None)
        if state is not None:
            log.info("semconv: serving precache version %s (%d users, K=%d, %.2fs)",
                     state.version, state.store.num_users, state.store.k, state.load_s)
        self._export_age()

    def _export_age(self) -> None:
        age = age_s(self.state.created_at) if self.state is not None else None
        if age is not None:
            self._age.set(age)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Switch to the version named in ``user_config`` once it is fully loaded and checked."""
        await self.versioned.switch(ServeUserConfig.model_validate(user_config or {}).target(self.args))

    def check_health(self) -> None:
        """Unhealthy when nothing is loaded or a reload hangs past ``load_deadline_s``."""
        self._export_age()
        self.versioned.check()

    # ---- the Backend of serve_app.api -------------------------------------------------------------
    def status(self) -> dict:
        return self.versioned.status()

    def record_fallback(self) -> None:
        self._fallbacks.inc()

    async def tokenizer_ready(self) -> bool:
        if self.tokenizer is None:
            return False
        try:
            return await asyncio.wait_for(self.tokenizer.info.remote(), 2) is not None
        except Exception:
            return False

    async def tokenize(self, body: bytes) -> dict:
        if self.tokenizer is None:
            raise service.Unavailable("cold-start tokenization is not deployed")
        reply = await call_deployment(self.tokenizer.tokenize.remote(body), self.args.tokenize_timeout_s,
                                      "tokenization")
        return from_reply(reply)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run serve_app.app:app_builder run_dir=...``."""
    parsed = AppArgs.model_validate(args).model_dump()
    return SemconvIngress.bind(parsed, tokenizer=CodeTokenizer.bind(parsed), generator=ModelGenerator.bind(parsed))


build_app = app_builder

"""The Ray Serve application: a FastAPI ingress that answers lookups, plus deployments it calls.

``serve run serve_app.app:app_builder run_dir=runs/demo`` or ``cluster/serve.yaml``.
Composition (:func:`app_builder`): every deployment is bound here and handed to the ingress as a
``DeploymentHandle``; each has its own replicas, autoscaling and queue limits (one entry per
deployment in ``cluster/serve.yaml``):

- ``SemconvIngress``: HTTP, auth, the lookups (precache, catalogue, fallback held in process: a
  lookup is microseconds, so it takes no extra hop);
- ``CodeTokenizer`` (``serve_app/tokenizer.py``): cold-start tokenization;
- ``ModelGenerator`` (``serve_app/generation.py``): online generation.

One version everywhere (``serve_app/loading.py``): each request is resolved against the ingress's
current version, whose id goes with every call to the other deployments, which answer from that
version or 503. A switch (``user_config``) loads the new version on every deployment; the
ingress flips last, once every replica of the others holds it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from semconv.serving.state import ServingState, load_state
from semconv.serving.version import Target
from serve_app import service
from serve_app.api import age_s, build_api
from serve_app.config import AppArgs, ServeUserConfig, serve_http_host
from serve_app.generation import GenerationClient, ModelGenerator
from serve_app.handles import await_version, call_deployment, from_reply
from serve_app.loading import VersionMetrics, Versions
from serve_app.middleware import serve_counter_recorder
from serve_app.tokenizer import CodeTokenizer

log = logging.getLogger("ray.serve")


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},  # fits `serve run` on 2 CPUs; cluster/serve.yaml reserves 1
    max_ongoing_requests=64,
    max_queued_requests=256,
    health_check_period_s=10,
    user_config={},  # so Serve calls reconfigure, the first load included, on every replica
)
@serve.ingress()
class SemconvIngress:
    """Holds the :class:`ServingState` of the current version (and of the one before); every
    request reads the current one once and names it to the deployments it calls."""

    async def __init__(self, args: dict[str, Any] | AppArgs, tokenizer: DeploymentHandle | None = None,
                       generator: DeploymentHandle | None = None):
        self.args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
        self.api_token = self.args.api_token(serve_http_host())  # raises when a token is required and unset
        self.max_batch = self.args.max_batch
        self.tokenizer, self.generator = tokenizer, generator
        self.generation = GenerationClient(generator, self.args.generation) if generator is not None else None
        self._metrics = VersionMetrics()
        from ray.serve.metrics import Counter, Gauge

        self._fallbacks = Counter("semconv_fallback", description="lookups answered with the popularity fallback")
        self._age = Gauge("semconv_precache_age_seconds", description="age of the precache served (its created_at)")
        self.versions: Versions[ServingState] = Versions(
            self._load, self.args.load_deadline_s, "serving state", on_change=self._published,
            before_flip=self._await_deployments)
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
        return self.versions.current

    def _load(self, target: Target, builds: dict, reuse: ServingState | None) -> ServingState:
        return load_state(target.run_dir, target.precache, target.fallback, self.args.cache_dir,
                          reuse=reuse, builds=builds)

    async def _await_deployments(self, version_id: str) -> None:
        """Before this replica flips: wait (up to ``load_deadline_s``) until every replica of the
        other deployments holds the version, so no request resolved to it meets one that does not."""
        handles = [h for h in (self.tokenizer, self.generator) if h is not None]
        missing = await await_version(handles, version_id, self.args.load_deadline_s)
        if missing:
            log.warning("semconv: %s do not hold version %s after %.0f s; switching anyway (their requests get "
                        "503 until they do)", ", ".join(missing), version_id, self.args.load_deadline_s)

    def _published(self, versions: Versions) -> None:
        state = versions.current
        self._metrics.update(versions)
        if state is not None and versions.last_error is None:
            log.info("semconv: serving version %s (precache %s, %d users, K=%d, %.2fs)",
                     versions.current_id, state.version, state.store.num_users, state.store.k, state.load_s)
        self._export_age()

    def _export_age(self) -> None:
        age = age_s(self.state.created_at) if self.state is not None else None
        if age is not None:
            self._age.set(age)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Switch to the version named in ``user_config`` once it is loaded here and held by the
        other deployments (the first call, right after the constructor, loads it before traffic)."""
        await self.versions.switch(ServeUserConfig.model_validate(user_config or {}).target(self.args))

    def check_health(self) -> None:
        """Unhealthy when nothing is loaded or the target version has not loaded within
        ``load_deadline_s``."""
        self._export_age()
        self.versions.check()

    # ---- the Backend of serve_app.api -------------------------------------------------------------
    def status(self) -> dict:
        return self.versions.status()

    def record_fallback(self) -> None:
        self._fallbacks.inc()

    async def tokenizer_ready(self) -> bool:
        if self.tokenizer is None or self.state is None:
            return False
        try:
            return await asyncio.wait_for(self.tokenizer.holds.remote(self.state.version_id), 2)
        except Exception:
            return False

    async def tokenize(self, version_id: str, body: bytes) -> dict:
        if self.tokenizer is None:
            raise service.Unavailable("cold-start tokenization is not deployed")
        reply = await call_deployment(self.tokenizer.tokenize.remote(version_id, body), self.args.tokenize_timeout_s,
                                      "tokenization")
        return from_reply(reply)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run serve_app.app:app_builder run_dir=...``."""
    parsed = AppArgs.model_validate(args).model_dump()
    return SemconvIngress.bind(parsed, tokenizer=CodeTokenizer.bind(parsed), generator=ModelGenerator.bind(parsed))

"""Cold-start tokenization as its own deployment (``CodeTokenizer``), with its own replicas.

The ingress forwards the raw request body here through a ``DeploymentHandle``, with the id of
the version it resolved the request against: the JSON is parsed and validated on this
deployment's replicas (a burst of large tokenize bodies queues here, and gets 429s past
``max_queued_requests``, instead of stalling the lookups on the ingress), and the codes come
from that version's codebook and ``item_codes/`` only, read once per request. Requests arriving
within a few milliseconds share one codebook search (``@serve.batch``); a batch that fails is
re-run request by request, so one bad request fails only itself.
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
from semconv.serving.version import Target, build_of
from serve_app import service
from serve_app.config import AppArgs, ServeUserConfig
from serve_app.handles import as_reply
from serve_app.loading import VersionMetrics, Versions, run_by_version
from serve_app.schemas import tokenize_request_model

log = logging.getLogger("ray.serve")
Encode = Callable[[np.ndarray, list[str] | None], Awaitable[tuple[np.ndarray, np.ndarray]]]
INPUTS = ("codebook", "item_codes")


@dataclass(frozen=True, eq=False)
class LoadedTokenizer:
    tokenizer: Any  # semconv.tokenize.cold_start.CodebookTokenizer
    version: str  # the codebook's build id (never a path), named in every answer
    builds: dict  # codebook / item_codes build ids it was loaded from

    @property
    def dim(self) -> int:
        return int(self.tokenizer.dim)


def check_one_tokenize_run(codebook: dict, item_codes: dict) -> None:
    """Refuse an ``item_codes/`` from another tokenize run than the codebook (their lineage
    fingerprints differ): collision checks against another codebook's codes would be wrong."""
    ours, theirs = ((m.get("lineage") or {}).get("fingerprint") for m in (codebook, item_codes))
    if ours and theirs and ours != theirs:
        raise ValueError(f"item_codes/ (lineage {theirs}) and codebook/ (lineage {ours}) come from different "
                         "tokenize runs: rerun the tokenize stage")


def load_tokenizer(run_dir: str, reuse: LoadedTokenizer | None = None) -> LoadedTokenizer | None:
    """The run directory's codebook with its ``item_codes/`` (collisions), or None without one;
    ``reuse`` when it was loaded from the very same builds."""
    rd = RunDir(run_dir)
    if not rd.is_complete("codebook"):
        return None
    manifests = {n: rd.manifest(n) for n in INPUTS if rd.is_complete(n)}
    builds = {n: build_of(m) for n, m in manifests.items()}
    if reuse is not None and reuse.builds == builds:
        return reuse
    from semconv.tokenize.cold_start import CodebookTokenizer

    codes = None
    if "item_codes" in manifests:
        check_one_tokenize_run(manifests["codebook"], manifests["item_codes"])
        codes = rd.local("item_codes")
    return LoadedTokenizer(CodebookTokenizer.from_pretrained(rd.local("codebook"), item_codes=codes),
                           builds["codebook"], builds)


async def tokenize_body(loaded: LoadedTokenizer | None, model, body: bytes, encode: Encode) -> dict:
    """A tokenize response for a raw body, or InvalidInput (422) / Unavailable (503)."""
    if loaded is None:
        raise service.Unavailable("cold-start tokenization is unavailable: no codebook/ in the run directory")
    emb, texts = service.parse_tokenize(body, model, loaded.dim)
    codes, collides = await encode(emb, texts)
    return service.codes_response(loaded.version, codes, collides)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},  # fits `serve run` on 2 CPUs; cluster/serve.yaml reserves 1
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    user_config={},  # so Serve calls reconfigure, the first load included, on every replica
)
class CodeTokenizer:
    """Holds the codebook of the current version (and of the one before); ``user_config``
    names the version, loaded by ``reconfigure`` before the replica takes traffic."""

    def __init__(self, args: dict[str, Any] | AppArgs):
        self.args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
        self.model = tokenize_request_model(self.args.max_batch)
        self.metrics = VersionMetrics()
        self.versions: Versions[LoadedTokenizer | None] = Versions(
            self._load, self.args.load_deadline_s, "codebook", on_change=self.metrics.update)

    @staticmethod
    def _load(target: Target, _builds: dict, reuse: LoadedTokenizer | None) -> LoadedTokenizer | None:
        return load_tokenizer(target.run_dir, reuse)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.versions.switch(ServeUserConfig.model_validate(user_config or {}).target(self.args))

    def check_health(self) -> None:
        self.versions.check()

    def holds(self, version_id: str) -> bool:
        return self.versions.holds(version_id)

    def info(self) -> dict | None:
        loaded = self.versions.current
        return {"dim": loaded.dim, "codebook": loaded.version} if loaded is not None else None

    async def tokenize(self, version_id: str, body: bytes) -> dict:
        """``{"status": 200, "body": ...}`` from version ``version_id``'s codebook, or an error reply."""
        try:
            loaded = await self.versions.get(version_id, self.args.tokenize_timeout_s)

            async def encode(emb: np.ndarray, texts: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
                out = await self._encode((loaded, emb, texts))
                if isinstance(out, Exception):
                    raise out
                return out

            return {"status": 200, "body": await tokenize_body(loaded, self.model, body, encode)}
        except Exception as exc:
            return as_reply(exc)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode(self, requests: list[tuple[LoadedTokenizer, np.ndarray, list[str] | None]]) -> list:
        """One codebook search per version for the requests queued within a few milliseconds."""
        return await run_by_version(requests, lambda r: r[0], lambda loaded, reqs: asyncio.to_thread(
            service.encode_isolated, loaded.tokenizer, [(e, t) for _, e, t in reqs]))

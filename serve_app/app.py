"""The Ray Serve application: one FastAPI ingress deployment over a run directory.

``serve run serve_app.app:app_builder run_dir=runs/demo`` or ``cluster/serve.yaml``. The replica
loads ``precache/``, ``items/``, ``item_codes/``, ``splits/`` (fallback) and ``codebook/`` once;
``user_config: {precache: <dir or manifest>}`` switches to another precache version atomically
(see :meth:`SemconvServer.reconfigure`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from semconv.artifacts import RunDir
from semconv.serving.state import ServingState, load_state
from serve_app import service
from serve_app.api import build_api
from serve_app.middleware import serve_counter_recorder

log = logging.getLogger("ray.serve")


class AppArgs(BaseModel):
    """Arguments of :func:`app_builder` (``args:`` in the Serve config file)."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str = Field(description="run directory with precache/, items/, item_codes/, codebook/, splits/")
    precache: str | None = Field(None, description="precache dir or its _SUCCESS manifest (default <run_dir>/precache)")
    fallback: bool = Field(True, description="serve the train-split popularity top-K to unknown users (else 404)")
    max_batch: int = Field(256, ge=1, le=4096, description="most items in one tokenize request")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="larger request bodies get 413")
    cache_dir: str | None = Field(None, description="local dir for the memory-mapped precache arrays")


class ServeUserConfig(BaseModel):
    """``user_config`` (hot-reloadable without restarting replicas)."""

    model_config = ConfigDict(extra="forbid")
    precache: str | None = None
    fallback: bool | None = None


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    health_check_period_s=10,
)
@serve.ingress()
class SemconvServer:
    """Holds one :class:`ServingState` reference; every request reads it once."""

    async def __init__(self, args: dict[str, Any] | AppArgs):
        self.args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
        self.max_batch = self.args.max_batch
        self.state: ServingState | None = None
        self.last_error: str | None = None
        self._precache = self.args.precache
        self._fallback = self.args.fallback
        self._tokenizer = None  # semconv.tokenize.cold_start.CodebookTokenizer once loaded
        self._codebook_dir = RunDir(self.args.run_dir).path("codebook")
        self._load_lock = threading.Lock()
        self._requested = 0  # bumped per load request; only the newest one may publish
        threading.Thread(target=self._load, args=(self._next_request(),), daemon=True, name="semconv-load").start()

    def __serve_build_asgi_app__(self):
        return build_api(self, max_body_bytes=self.args.max_body_bytes, make_recorder=serve_counter_recorder)

    # ---- loading and hot reload ------------------------------------------------------------
    def _next_request(self) -> int:
        self._requested += 1
        return self._requested

    def _load(self, request: int) -> bool:
        """Build a whole new state on the side, then publish it with one reference swap."""
        with self._load_lock:
            if request != self._requested:
                return False  # a newer reload superseded this one
            try:
                new = load_state(self.args.run_dir, self._precache, self._fallback, self.args.cache_dir,
                                 reuse=self.state)  # same run dir: keep the catalog
                if self._tokenizer is None:
                    self._tokenizer = self._load_tokenizer()
                if request != self._requested:
                    return False  # superseded while loading: the newer request publishes
            except Exception as exc:  # keep serving the previous version
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("semconv: loading precache %s failed; still serving %s",
                              self._precache, self.state.version if self.state else None)
                return False
            self.state = new  # the atomic switch
            self.last_error = None
            log.info("semconv: serving precache version %s (%d users, K=%d, %.2fs)",
                     new.version, new.store.num_users, new.store.k, new.load_s)
            return True

    def _load_tokenizer(self):
        rd = RunDir(self.args.run_dir)
        if not rd.is_complete("codebook"):
            return None
        try:
            from semconv.tokenize.cold_start import CodebookTokenizer

            codes = rd.local("item_codes") if rd.is_complete("item_codes") else None
            return CodebookTokenizer.from_pretrained(rd.local("codebook"), item_codes=codes)
        except Exception as exc:  # lookups still work without cold start
            log.warning("semconv: cold-start tokenizer unavailable: %s", exc)
            return None

    def check_health(self) -> None:
        """Unhealthy only when nothing could ever be served: the first load failed.

        Serve then restarts the replica (a retry) and ``serve status`` shows the error. A failed
        *reload* leaves the previous version serving, so the replica stays healthy.
        """
        if self.state is None and self.last_error is not None:
            raise RuntimeError(f"semconv: no precache loaded: {self.last_error}")

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Switch to the precache named in ``user_config`` once it is fully loaded."""
        cfg = ServeUserConfig.model_validate(user_config or {})
        precache = cfg.precache if cfg.precache is not None else self.args.precache
        fallback = cfg.fallback if cfg.fallback is not None else self.args.fallback
        if (precache, fallback) == (self._precache, self._fallback) and self.last_error is None:
            return  # already serving (or loading) exactly this
        self._precache, self._fallback = precache, fallback
        await asyncio.to_thread(self._load, self._next_request())

    # ---- cold start -----------------------------------------------------------------------
    def tokenizer_info(self) -> tuple[str, int] | None:
        tok = self._tokenizer
        return (self._codebook_dir, tok.dim) if tok is not None else None

    async def encode(self, embeddings: np.ndarray, texts: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        return await self._encode((embeddings, texts))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode(self, requests: list[tuple[np.ndarray, list[str] | None]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One codebook search for all requests queued within a few milliseconds."""
        return await asyncio.to_thread(service.encode_requests, self._tokenizer, requests)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run serve_app.app:app_builder run_dir=...``."""
    parsed = AppArgs.model_validate(args)
    return SemconvServer.bind(parsed.model_dump())


build_app = app_builder

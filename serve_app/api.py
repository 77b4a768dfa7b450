"""The HTTP API (FastAPI, OpenAPI at ``/docs``), built per replica around a serving backend.

``build_api`` takes any object with the :class:`Backend` shape, so the Serve deployment and the
benchmark's bare uvicorn baseline run the very same routes. Every route reads the backend's
current :class:`ServingState` once, so a hot reload mid-request cannot mix two versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse

from semconv.serving.state import ServingState
from serve_app import service
from serve_app.middleware import BodySizeLimit, RequestMetrics
from serve_app.schemas import (
    ErrorBody,
    Health,
    Item,
    Readiness,
    Recommendations,
    TokenizeRequest,
    TokenizeResponse,
)

INT64_MAX = 2**63 - 1
MAX_K = 100_000
log = logging.getLogger("semconv.serve")


class Backend(Protocol):
    state: ServingState | None
    last_error: str | None
    max_batch: int

    def tokenizer_info(self) -> tuple[str, int] | None:
        """(codebook dir, input dim) when cold-start tokenization is available."""

    async def encode(self, embeddings: np.ndarray, texts: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """``(codes (n, L), collides_with (n,))`` for a validated batch."""


class NotReady(RuntimeError):
    pass


def _error(status: int, detail) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def build_api(
    backend: Backend,
    max_body_bytes: int = 8 << 20,
    make_recorder: Callable[[], Callable[[str, str, int], None]] | None = None,
) -> FastAPI:
    """The FastAPI app of one replica (or of the bare baseline)."""
    api = FastAPI(
        title="semconv serving",
        description="Precached generative recommendations and cold-start item tokenization.",
        version="1",
        docs_url="/docs",
    )
    responses = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @api.exception_handler(service.InvalidInput)
    async def _invalid(_: Request, exc: service.InvalidInput) -> JSONResponse:
        return _error(422, exc.detail())

    @api.exception_handler(service.NotFound)
    async def _not_found(_: Request, exc: service.NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @api.exception_handler(NotReady)
    async def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return _error(503, str(exc))

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the replica keeps serving; the client gets a 500
        return _error(500, f"internal error: {type(exc).__name__}")

    def current() -> ServingState:
        state = backend.state
        if state is None:
            raise NotReady(f"artifacts are still loading{f' (last error: {backend.last_error})' if backend.last_error else ''}")
        return state

    k_query = Query(None, ge=1, le=MAX_K, description="how many items (default min(10, cached K); at most the cached K)")

    @api.get("/v1/users/{user_id}/recommendations", response_model=Recommendations, responses=responses)
    async def user_recommendations(user_id: int = Path(ge=0, le=INT64_MAX), k: int | None = k_query) -> dict:
        """The user's precached top-K; the popularity fallback (``fallback: true``) for an unknown user."""
        return service.recommendations(current(), user_id, k)

    @api.get("/v1/source-users/{source_user_id}/recommendations", response_model=Recommendations, responses=responses)
    async def source_user_recommendations(source_user_id: str = Path(max_length=256), k: int | None = k_query) -> dict:
        """The same lookup keyed by the dataset's own user id (``sequences.source_user_id``)."""
        return service.source_user_recommendations(current(), source_user_id, k)

    @api.get("/v1/items/{item_id}", response_model=Item, responses=responses)
    async def get_item(item_id: int = Path(ge=0, le=INT64_MAX)) -> dict:
        """An item's title and semantic codes."""
        return service.item(current(), item_id)

    @api.post("/v1/items/tokenize", response_model=TokenizeResponse, responses=responses)
    async def tokenize(body: TokenizeRequest) -> dict:
        """Codes for new items from the saved codebook (cold start, no retraining)."""
        info = backend.tokenizer_info()
        if info is None:
            raise NotReady("cold-start tokenization is unavailable: no loadable codebook/ in the run directory")
        codebook, dim = info
        emb = service.check_embeddings([it.embedding for it in body.items], dim, backend.max_batch)
        texts = None
        if any(it.title or it.description for it in body.items):
            texts = [" ".join(t for t in (it.title, it.description) if t) for it in body.items]
        codes, collides = await backend.encode(emb, texts)
        return service.codes_response(codebook, codes, collides)

    @api.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz():
        """Readiness: 200 only once the precache and catalog are loaded."""
        state = backend.state
        body = {"ready": state is not None, "tokenizer": backend.tokenizer_info() is not None, "last_error": backend.last_error}
        if state is None:
            return JSONResponse(status_code=503, content=body)
        body.update(version=state.version, users=state.store.num_users, k=state.store.k,
                    items=state.catalog.num_items, load_s=round(state.load_s, 3))
        return body

    if make_recorder is not None:
        api.add_middleware(RequestMetrics, make_recorder=make_recorder)
    api.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return api

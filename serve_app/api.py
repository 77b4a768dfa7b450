"""The HTTP API (FastAPI, OpenAPI at ``/docs``), built per replica around a serving backend.

``build_api`` takes any object with the :class:`Backend` shape: the Serve ingress
(``serve_app.app.SemconvIngress``, tokenizing through the ``CodeTokenizer`` deployment) and
:class:`LocalBackend` (the benchmark's bare uvicorn baseline, the in-process tests) run the very
same routes. Every route reads the backend's current :class:`ServingState` once and answers from
that version alone (a tokenize or generation call names its ``version_id`` to the deployment
that answers it), so a switch mid-request cannot mix two versions; the answer names the version
in its ``semconv-version`` header. With a token, every ``/v1`` route needs
``Authorization: Bearer <token>``; ``/healthz`` and ``/readyz`` stay open for probes.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable
from typing import Protocol

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from semconv.serving.state import ServingState
from serve_app import service
from serve_app.middleware import BearerAuth, BodySizeLimit, RequestMetrics
from serve_app.schemas import (
    ErrorBody,
    Health,
    Item,
    Readiness,
    Recommendations,
    TokenizeResponse,
    tokenize_body_schema,
    tokenize_request_model,
)
from serve_app.generation import add_generation_route
from serve_app.tokenizer import LoadedTokenizer, tokenize_body

INT64_MAX = 2**63 - 1
MAX_K = 100_000
VERSION_HEADER = "semconv-version"  # the version_id every /v1 answer came from
log = logging.getLogger("semconv.serve")


class Backend(Protocol):
    state: ServingState | None
    max_batch: int
    embedding_dim: int | None  # the codebook's input dimension, stated in the schema when known

    def status(self) -> dict:
        """``version_id``, ``reloading``, ``reloads``, ``reload_failures``, ``last_error`` (paths removed)."""

    async def tokenizer_ready(self) -> bool:
        """Whether cold-start tokenization can answer for the current version now."""

    async def tokenize(self, version_id: str, body: bytes) -> dict:
        """A tokenize response for the raw body from version ``version_id``; raises
        InvalidInput / Unavailable."""

    def record_fallback(self) -> None:
        """Count one lookup answered with the popularity fallback."""


class LocalBackend:
    """One fixed version (a state and its codebook), tokenizing in process (bench baseline,
    in-process tests)."""

    def __init__(self, state: ServingState | None, tokenizer: LoadedTokenizer | None = None, max_batch: int = 256):
        self.state, self.tokenizer, self.max_batch = state, tokenizer, max_batch
        self.embedding_dim = tokenizer.dim if tokenizer is not None else None
        self.model = tokenize_request_model(max_batch)
        self.fallbacks = 0

    def status(self) -> dict:
        return {"version_id": self.state.version_id if self.state else None, "reloading": False,
                "reloads": int(self.state is not None), "reload_failures": 0, "last_error": None}

    async def tokenizer_ready(self) -> bool:
        return self.tokenizer is not None

    async def tokenize(self, version_id: str, body: bytes) -> dict:
        async def encode(emb, texts):
            (out,) = service.encode_isolated(self.tokenizer.tokenizer, [(emb, texts)])
            if isinstance(out, Exception):
                raise out
            return out

        return await tokenize_body(self.tokenizer, self.model, body, encode)

    def record_fallback(self) -> None:
        self.fallbacks += 1


def _error(status: int, detail, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def age_s(created_at: str | None) -> float | None:
    """Seconds since a manifest's ``created_at`` (``%Y-%m-%dT%H:%M:%SZ``), None when unknown."""
    try:
        return round(time.time() - calendar.timegm(time.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ")), 1)
    except (TypeError, ValueError):
        return None


def _secure_openapi(api: FastAPI) -> None:
    """Declare the bearer scheme on every /v1 operation (schemathesis and clients read it)."""
    plain = api.openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, ops in schema["paths"].items():
                if path.startswith("/v1"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
                        op["responses"]["401"] = {"description": "missing or wrong bearer token"}
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi


def build_api(
    backend: Backend,
    max_body_bytes: int = 8 << 20,
    make_recorder: Callable[[], Callable[[str, str, int], None]] | None = None,
    api_token: str | None = None,
    docs: bool = True,
) -> FastAPI:
    """The FastAPI app of one replica (or of the bare baseline)."""
    api = FastAPI(
        title="semconv serving",
        description="Precached generative recommendations and cold-start item tokenization.",
        version="1",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    responses = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}

    @api.exception_handler(service.InvalidInput)
    async def _invalid(_: Request, exc: service.InvalidInput) -> JSONResponse:
        return _error(422, exc.detail())

    @api.exception_handler(service.NotFound)
    async def _not_found(_: Request, exc: service.NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @api.exception_handler(service.Unavailable)
    async def _unavailable(_: Request, exc: service.Unavailable) -> JSONResponse:
        return _error(exc.status, service.redact(str(exc)), {"retry-after": str(exc.retry_after_s)})

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the replica keeps serving; the client gets a 500
        return _error(500, f"internal error: {type(exc).__name__}")

    def current(response: Response) -> ServingState:
        """The version this request is answered from, named in the answer's header."""
        state = backend.state
        if state is None:
            raise service.Unavailable("artifacts are still loading")
        response.headers[VERSION_HEADER] = state.version_id
        return state

    def counted(out: dict) -> dict:
        if out["fallback"]:
            backend.record_fallback()
        return out

    k_query = Query(None, ge=1, le=MAX_K, description="how many items (default min(10, cached K); at most the cached K)")

    @api.get("/v1/users/{user_id}/recommendations", response_model=Recommendations, responses=responses)
    async def user_recommendations(response: Response, user_id: int = Path(ge=0, le=INT64_MAX),
                                   k: int | None = k_query) -> dict:
        """The user's precached top-K; the popularity fallback (``fallback: true``) for an unknown user."""
        return counted(service.recommendations(current(response), user_id, k))

    @api.get("/v1/source-users/{source_user_id}/recommendations", response_model=Recommendations, responses=responses)
    async def source_user_recommendations(response: Response, source_user_id: str = Path(max_length=256),
                                          k: int | None = k_query) -> dict:
        """The same lookup keyed by the dataset's own user id (``sequences.source_user_id``)."""
        return counted(service.source_user_recommendations(current(response), source_user_id, k))

    @api.get("/v1/items/{item_id}", response_model=Item, responses=responses)
    async def get_item(response: Response, item_id: int = Path(ge=0, le=INT64_MAX)) -> dict:
        """An item's title and semantic codes."""
        return service.item(current(response), item_id)

    body_schema = tokenize_body_schema(backend.max_batch, backend.embedding_dim)

    @api.post("/v1/items/tokenize", response_model=TokenizeResponse,
              responses={**responses, 429: {"model": ErrorBody}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}})
    async def tokenize(request: Request, response: Response) -> dict:
        """Codes for new items from the saved codebook (cold start, no retraining); at most
        ``max_batch`` items. The body is parsed by the tokenize deployment, not here."""
        return await backend.tokenize(current(response).version_id, await request.body())

    add_generation_route(api, backend, current)  # POST /v1/recommendations (serve_app/generation.py)

    @api.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz():
        """Readiness: 200 only once a version is loaded; its version, age and reload status."""
        state = backend.state
        body = {"ready": state is not None, "tokenizer": await backend.tokenizer_ready(), **backend.status()}
        if state is None:
            return JSONResponse(status_code=503, content=body)
        body.update(version=state.version, users=state.store.num_users, k=state.store.k,
                    items=state.catalog.num_items, load_s=round(state.load_s, 3),
                    precache_created_at=state.created_at, precache_age_s=age_s(state.created_at))
        return body

    # outermost last: metrics see every answer (401s too), auth runs before any body is read
    api.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if api_token:
        api.add_middleware(BearerAuth, token=api_token)
        _secure_openapi(api)
    if make_recorder is not None:
        api.add_middleware(RequestMetrics, make_recorder=make_recorder)
    return api

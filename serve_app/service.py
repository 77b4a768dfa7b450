"""What each endpoint answers, as plain functions of one :class:`ServingState` (no HTTP, no Ray).

The Serve deployment and the benchmark's bare FastAPI baseline both call these, so the benchmark
measures the serving stack, not two different handlers.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from semconv.codes import item_tokens
from semconv.serving.state import ServingState

DEFAULT_K = 10
log = logging.getLogger("semconv.serve")


class NotFound(LookupError):
    """An unknown user (fallback off) or item."""


class InvalidInput(ValueError):
    """A request value outside what this deployment can answer (mapped to 422)."""

    def __init__(self, loc: list, msg: str, kind: str = "value_error"):
        super().__init__(msg)
        self.loc, self.msg, self.kind = loc, msg, kind

    def detail(self) -> list[dict]:
        """The same shape FastAPI uses for its own validation errors."""
        return [{"loc": self.loc, "msg": self.msg, "type": self.kind}]


class Unavailable(RuntimeError):
    """Cannot answer now (still loading, no codebook, a dependency down): 503, retry later."""

    status = 503

    def __init__(self, msg: str, retry_after_s: int = 1):
        super().__init__(msg)
        self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    """A queue is full (``max_queued_requests``): 429, retry later."""

    status = 429


_PATH = re.compile(r"(?:\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"),]+|(?<![\w.])/[^\s'\"),:]+)")


def redact(msg: str | None) -> str | None:
    """``msg`` without filesystem paths and URIs (clients must not learn the server's layout)."""
    return _PATH.sub("<path>", msg) if msg else msg


def resolve_k(state: ServingState, k: int | None) -> int:
    if k is None:
        return min(DEFAULT_K, state.store.k)
    if not 1 <= k <= state.store.k:
        raise InvalidInput(["query", "k"], f"k must be between 1 and the cached K={state.store.k}, got {k}")
    return k


def recommendations(state: ServingState, user_id: int, k: int | None) -> dict:
    """The user's precached top-k, or the popularity fallback for an unknown user."""
    k = resolve_k(state, k)
    rec = state.store.lookup(user_id, k)
    fallback = rec is None
    if fallback:
        if state.fallback_items is None:
            raise NotFound(f"user {user_id} is not in precache version {state.version} (fallback is off)")
        items, scores = state.fallback_items[:k], state.fallback_scores[:k]
    else:
        items, scores = rec.items, rec.scores
    source_ids, titles = state.catalog.describe(items)
    return {
        "user_id": int(user_id),
        "k": k,
        "version": state.version,
        "fallback": fallback,
        "item_ids": items.tolist(),
        "source_ids": source_ids,
        "titles": titles,
        "scores": [float(s) for s in scores],
    }


def source_user_recommendations(state: ServingState, source_user_id: str, k: int | None) -> dict:
    if state.source_users is None:
        raise NotFound("this run directory has no sequences/ table mapping source_user_id to user_id")
    user_id = state.source_users.lookup(source_user_id)
    if user_id is None:
        if state.fallback_items is None:
            raise NotFound(f"source_user_id {source_user_id!r} is unknown (fallback is off)")
        user_id = -1  # never cached: the fallback answers
    out = recommendations(state, user_id, k)
    out["source_user_id"] = source_user_id
    return out


def item(state: ServingState, item_id: int) -> dict:
    found = state.catalog.item(item_id)
    if found is None:
        raise NotFound(f"item {item_id} is not in the catalog")
    return found


M = TypeVar("M", bound=BaseModel)


def parse_body(body: bytes, model: type[M]) -> M:
    """A raw JSON body as ``model``, or InvalidInput naming the first bad field (FastAPI's shape)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        raise InvalidInput(["body", *first["loc"]], first["msg"], first["type"]) from None


def parse_tokenize(body: bytes, model: type[BaseModel], dim: int) -> tuple[np.ndarray, list[str] | None]:
    """A raw tokenize body -> ``(embeddings (n, dim) float32, texts or None)``, or InvalidInput.

    ``model`` is :func:`serve_app.schemas.tokenize_request_model` (its item cap is ``max_batch``).
    Parsed here, in the tokenize deployment, so a large body never stalls the lookup replicas.
    """
    req = parse_body(body, model)
    emb = check_embeddings([it.embedding for it in req.items], dim)
    texts = None
    if any(it.title or it.description for it in req.items):
        texts = [" ".join(t for t in (it.title, it.description) if t) for it in req.items]
    return emb, texts


def check_embeddings(embeddings: list[list[float]], dim: int) -> np.ndarray:
    """Validate a tokenize batch: one dimension, finite values; return ``(n, dim)`` float32."""
    for i, e in enumerate(embeddings):
        if len(e) != dim:
            raise InvalidInput(["body", "items", i, "embedding"], f"embedding must have {dim} values (the codebook's input dimension), got {len(e)}")
        if not all(math.isfinite(v) for v in e):
            raise InvalidInput(["body", "items", i, "embedding"], "embedding has a NaN or infinite value")
    with np.errstate(over="ignore"):
        arr = np.asarray(embeddings, dtype=np.float64).astype(np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidInput(["body", "items", bad, "embedding"], "embedding value overflows float32")
    # the codebook search computes squared distances in float32: a vector whose squared norm
    # overflows (values from ~1e19) finds no code, and would fail the whole batch
    norms = np.square(arr, dtype=np.float64).sum(axis=1)
    huge = norms >= np.finfo(np.float32).max / 4
    if huge.any():
        bad = int(np.flatnonzero(huge)[0])
        raise InvalidInput(["body", "items", bad, "embedding"],
                           "embedding's squared norm overflows float32 (keep values below ~1e18)")
    return arr


def encode_requests(tokenizer, requests: list[tuple[np.ndarray, list[str] | None]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cold-start codes for several requests with one codebook search (``@serve.batch``).

    ``tokenizer`` is a ``semconv.tokenize.cold_start.CodebookTokenizer``. Returns, per request,
    ``(codes, collides_with)`` exactly as ``tokenizer.tokenize_unique`` gives for that request
    alone: the raw nearest-code tuples of all requests come from one search, and only a request
    with a collision (against the catalog or inside itself) is resolved again on its own.
    """
    raw = tokenizer(np.concatenate([e for e, _ in requests]))
    out, start = [], 0
    for emb, texts in requests:
        part = raw[start : start + len(emb)]
        start += len(emb)
        clash = tokenizer.collides_with(part)
        unique_inside = len({tuple(r) for r in part.tolist()}) == len(part)
        if (clash >= 0).any() or not unique_inside:
            out.append(tokenizer.tokenize_unique(emb, texts))
        else:
            out.append((part, clash))
    return out


def encode_isolated(tokenizer, requests: list[tuple[np.ndarray, list[str] | None]]) -> list:
    """:func:`encode_requests`, but a request that fails fails alone.

    When the merged batch raises, each request is run again on its own, so one bad request
    (an input validation did not foresee) cannot fail the others merged with it. Returns per
    request ``(codes, collides_with)`` or an :class:`InvalidInput` naming the failure.
    """
    def failed(exc: Exception) -> InvalidInput:
        log.error("tokenize: a request failed on its own", exc_info=exc)
        return InvalidInput(["body", "items"], f"these embeddings cannot be tokenized ({type(exc).__name__})",
                            "tokenize_failed")

    try:
        return encode_requests(tokenizer, requests)
    except Exception as exc:
        if len(requests) == 1:
            return [failed(exc)]
        log.warning("tokenize: a batch of %d requests failed; retrying them one by one", len(requests))
    out = []
    for req in requests:
        try:
            out.append(encode_requests(tokenizer, [req])[0])
        except Exception as exc:
            out.append(failed(exc))
    return out


def codes_response(codebook: str, codes: np.ndarray, collides_with: np.ndarray) -> dict:
    rows = [[int(c) for c in row] for row in np.asarray(codes)]
    return {"codebook": codebook, "codes": rows, "tokens": [item_tokens(r) for r in rows],
            "collides_with": [int(c) for c in collides_with]}

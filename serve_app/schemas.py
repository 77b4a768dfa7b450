"""Request and response bodies of the serving API (they make the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

# Static schema bounds; the item cap is the deployment's max_batch (tokenize_request_model).
MAX_ITEMS_PER_REQUEST = 4096
MAX_EMBEDDING_DIM = 65536
MAX_TEXT_CHARS = 20000


class Recommendations(BaseModel):
    user_id: int = Field(description="dense user id (-1 for an unknown source_user_id)")
    source_user_id: str | None = Field(None, description="set when looked up by the dataset's own user id")
    k: int
    version: str = Field(description="precache version the list came from")
    fallback: bool = Field(description="true when the user is not cached and the popularity list was served")
    item_ids: list[int]
    source_ids: list[str]
    titles: list[str]
    scores: list[float]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding: list[float] = Field(
        min_length=1, max_length=MAX_EMBEDDING_DIM,
        description="the item's behaviour embedding (the codebook's input dimension, finite values)",
    )
    title: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


@lru_cache(maxsize=8)
def tokenize_request_model(max_batch: int) -> type[TokenizeRequest]:
    """The tokenize body with the deployment's item cap, so ``/openapi.json`` states the real limit."""
    if not 1 <= max_batch <= MAX_ITEMS_PER_REQUEST:
        raise ValueError(f"max_batch must be in [1, {MAX_ITEMS_PER_REQUEST}], got {max_batch}")
    return create_model("TokenizeRequest", __base__=TokenizeRequest,
                        items=(list[ItemIn], Field(min_length=1, max_length=max_batch)))


def tokenize_body_schema(max_batch: int, dim: int | None) -> dict[str, Any]:
    """The tokenize body's JSON schema for ``/openapi.json``: the item cap and, when the codebook
    is known, its exact embedding length (so generated requests reach the value checks)."""
    schema = inline_schema(tokenize_request_model(max_batch))
    if dim is not None:
        schema["properties"]["items"]["items"]["properties"]["embedding"].update(minItems=dim, maxItems=dim)
    return schema


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, to embed in an OpenAPI operation."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


class TokenizeResponse(BaseModel):
    codebook: str = Field(description="the build id of the codebook the codes came from (its manifest's build)")
    codes: list[list[int]] = Field(
        description="one code tuple per item, coarse to fine; unique against the catalog's codes and within the request")
    tokens: list[str] = Field(description="the same codes as LLM tokens, e.g. <a_12><b_7><c_201><d_3>")
    collides_with: list[int] = Field(
        description="the existing item whose codes equal this item's nearest codes (then `codes` is the nearest free tuple), else -1")


class Item(BaseModel):
    item_id: int
    source_id: str
    title: str
    codes: list[int] | None
    tokens: str | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    version_id: str | None = Field(None, description="the version served: every deployment names it alike")
    version: str | None = Field(None, description="the precache's version")
    users: int | None = None
    k: int | None = None
    items: int | None = None
    tokenizer: bool = False
    load_s: float | None = None
    precache_created_at: str | None = Field(None, description="when the served precache was published")
    precache_age_s: float | None = None
    reloading: bool = Field(False, description="a version is loading (the current one keeps serving)")
    reloads: int = Field(0, description="versions this replica has switched to (the first load counts)")
    reload_failures: int = 0
    last_error: str | None = Field(None, description="the last failed switch, paths removed; null once the target "
                                   "version is served")


class ErrorBody(BaseModel):
    detail: str | list

"""Request and response bodies of the serving API (they make the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Static schema bounds; the deployment's args set tighter limits checked per request.
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


class TokenizeResponse(BaseModel):
    codebook: str = Field(description="the codebook directory the codes came from")
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
    version: str | None = None
    users: int | None = None
    k: int | None = None
    items: int | None = None
    tokenizer: bool = False
    load_s: float | None = None
    last_error: str | None = None


class ErrorBody(BaseModel):
    detail: str | list

"""Config of the ``embed`` stage: behaviour (collaborative) and LLM text item embeddings."""

from __future__ import annotations

from pydantic import Field

from semconv.schema import Section


class CFConfig(Section):
    """The collaborative-filtering model trained when no item embeddings are supplied."""

    dim: int = Field(32, ge=2, description="embedding size (the paper's DCCF uses 32)")
    layers: int = Field(3, ge=0)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    num_workers: int = Field(1, ge=1, description="Ray Train workers")


class EmbedConfig(Section):
    item_embeddings: str | None = Field(
        None, description="user-supplied Parquet (item_id, embedding); skips CF training"
    )
    cf: CFConfig = CFConfig()
    text_model: str = Field("smollm2-135m", description="bundled model name or HF directory")
    text_batch_size: int = Field(256, ge=1)
    text_max_tokens: int = Field(256, ge=1, description="title+description tokens kept per item")

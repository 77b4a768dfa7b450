"""Config of the ``precache`` stage (constrained beam search, Ray Data batch inference)."""

from __future__ import annotations

from pydantic import Field

from semconv.schema import Section


class PrecacheConfig(Section):
    top_k: int = Field(10, ge=1)
    num_beams: int = Field(20, ge=1)
    batch_size: int = Field(16, ge=1)
    num_actors: int = Field(1, ge=1)
    exclude_history: bool = False
    bf16: bool = True
    use_gpu: bool = False
    users_per_shard: int = Field(2048, ge=1)

"""Config of the ``tokenize`` stage (Alignment Tokenization)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semconv.schema import Section


class TokenizeConfig(Section):
    levels: int = Field(4, ge=1, le=26)
    codes_per_level: int = Field(256, ge=2)
    distance: Literal["l2", "cosine"] = "l2"
    commitment_weight: float = Field(0.25, ge=0)
    llm_alignment: bool = True
    llm_alignment_weight: float = Field(0.1, ge=0)
    encoder_decoder: bool = Field(False, description="RQ-VAE-style 'ED' ablation")
    epochs: int = Field(50, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    kmeans_iters: int = Field(25, ge=1)
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    use_gpu: bool = False

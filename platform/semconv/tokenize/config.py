"""Config of the ``tokenize`` stage (Alignment Tokenization)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semconv.schema import Section


class TokenizeConfig(Section):
    """The residual codebook and its training.

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``checkpoint_every``, ``max_failures`` (a resumed run continues the same
    trajectory). ``num_workers`` and ``use_gpu`` are in it: they change the data sharding and the
    floating-point results.
    """

    levels: int = Field(4, ge=1, le=26)
    codes_per_level: int = Field(256, ge=2)
    distance: Literal["l2", "cosine"] = Field(
        "l2", description="behaviour-alignment distance between a level's input and its code"
    )
    commitment_weight: float = Field(0.25, ge=0)
    llm_alignment: bool = Field(True, description="false = the 'w/o LA' ablation")
    llm_alignment_weight: float = Field(0.1, ge=0)
    llm_distance: Literal["cosine", "l2"] = Field(
        "cosine", description="distance between projected code prefixes and the text embedding"
    )
    encoder_decoder: bool = Field(False, description="RQ-VAE-style 'ED' ablation")
    ed_hidden_dim: int = Field(256, ge=1, description="ED ablation: MLP hidden width")
    ed_latent_dim: int | None = Field(None, ge=1, description="ED ablation: code space (None: d)")
    epochs: int = Field(50, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0)
    kmeans_iters: int = Field(25, ge=1)
    kmeans_max_points: int = Field(
        262_144, ge=1, description="k-means init sample per level (all items when fewer)"
    )
    reseed_dead_codes: bool = Field(True, description="re-seed unused codes at epoch ends")
    num_workers: int = Field(
        1, ge=0, description="Ray Train workers; 0 trains in-process without Ray (quick local runs)"
    )
    use_gpu: bool = False
    checkpoint_every: int = Field(5, ge=1, description="epochs between Ray Train checkpoints")
    max_failures: int = Field(3, ge=0, description="Ray Train FailureConfig: worker restarts")

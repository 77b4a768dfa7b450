"""Config of the ``precache`` stage (constrained beam search, Ray Data batch inference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from semconv.schema import Section


class PrecacheConfig(Section):
    """Constrained beam search over every (or a sample of) test user.

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``batch_size``, ``sort_window`` (padding is masked), ``num_actors``,
    ``cpus_per_actor``, ``threads_per_actor``, ``share_prefix`` (the same preamble KV, computed once)
    and ``users_per_shard`` (the same rows in other files; the partial shards of an interrupted
    run are kept only for the same shard plan).
    """

    top_k: int = Field(10, ge=1, description="items cached per user")
    num_beams: int = Field(20, ge=1, description="beam width of the constrained search (>= top_k)")
    batch_size: int = Field(16, ge=1, description="users per beam-search batch")
    sort_window: int = Field(8, ge=1, description="batches per actor call; users sorted by prompt "
                                                   "length inside it to limit padding")
    num_actors: int = Field(1, ge=1, description="Ray Data actor pool size (one model each)")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs each actor reserves when not use_gpu "
                                "(the actors must leave one CPU for Ray Data's read tasks)")
    threads_per_actor: int | None = Field(
        2, ge=1, description="torch threads per actor (None: cpus_per_actor); the demo reserves "
                             "1 CPU per actor but runs 2 threads to use both cores of a laptop")
    exclude_history: bool = Field(True, description="never recommend an item of the user's whole history: "
                                  "the one rule of the precache, a refresh, online generation and every "
                                  "baseline of the report (semconv.protocol)")
    share_prefix: bool = Field(True, description="compute the shared prompt preamble's KV once")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="auto: bf16 on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), else "
                            "float32 (bf16 is ~28x slower there); true / false force it "
                            "(see semconv.hardware.inference_dtype)")
    use_gpu: bool = False
    max_users: int | None = Field(
        None, ge=1, description="None: every test user (production). A number precaches a seeded "
                                "sample of that many users, for a CPU demo; evaluate then scores "
                                "every system on the same sample")
    users_per_shard: int = Field(2048, ge=1, description="users per output shard (unit of resume)")

    @model_validator(mode="after")
    def _beams_cover_k(self) -> PrecacheConfig:
        if self.num_beams < self.top_k:
            raise ValueError(f"precache.num_beams ({self.num_beams}) must be >= precache.top_k ({self.top_k})")
        return self

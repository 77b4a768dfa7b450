"""Config of the ``finetune`` stage (LoRA SFT on Ray Train)."""

from __future__ import annotations

from pydantic import Field

from semconv.schema import Section


class FinetuneConfig(Section):
    base_model: str = Field("smollm2-135m", description="bundled model name or HF directory")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    max_steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    max_seq_len: int = Field(192, ge=8)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    deepspeed_config: str | None = None
    bf16: bool = True
    merge: bool = False

"""Config of the ``finetune`` stage (LoRA SFT on Ray Train).

Defaults run on one worker on 2 cores with bf16 autocast where the CPU has native bf16 (fp32
elsewhere). Measured in the demo job on a 2-core EPYC held to fp32 and AVX2 (2026-12-01): 2.85
rows/s (a step of 8 in ~2.8 s) on the history-weighted demo tasks (82% history rows of ~30
tokens, each teaching ~4 next items), so ``configs/demo.yaml``'s 20-minute budget
(``max_minutes``) ran 429 steps and taught ~11k next items; the earlier one-target instruction
prompts (~73 tokens) ran 2.3-2.5 rows/s in bf16 and taught one item each.
A full-protocol run (``configs/full.yaml``) raises ``max_steps`` to a few epochs of ``sft/`` and
runs on GPUs with DeepSpeed ZeRO-2 (``use_gpu: true``,
``deepspeed_config: configs/deepspeed_zero2.json``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from semconv.schema import Section


class FinetuneConfig(Section):
    """LoRA fine-tuning (module docstring).

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``checkpoint_every``, ``log_every``, ``max_failures``, ``cpus_per_worker`` (a
    resumed run continues the same trajectory). ``max_minutes`` is in it (it decides how many
    steps run), and so are ``num_workers`` (the global batch) and ``use_gpu`` / ``deepspeed_config``.
    """

    base_model: str = Field("smollm2-135m", description="bundled model name or HF directory")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="module names that get LoRA",
    )
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: LoRA on target_modules + the code-token rows; full: every weight "
        "(the code-token rows keep code_token_lr_scale)")
    num_layers: int | None = Field(
        None, ge=1, description="keep the base's first N transformer layers (None: all): a step costs "
        "about N / depth as much, so a CPU budget buys more epochs; model/ then holds the whole merged "
        "model, which plain from_pretrained loads")
    code_rows_first: float = Field(
        0.0, ge=0, lt=1, description="fraction of the training budget (steps or minutes) that trains "
        "only the code-token rows, the LLM frozen, before everything trains together")
    max_steps: int = Field(60, ge=1, description="optimizer steps (at most)")
    max_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget of the training loop: it stops at the first step "
        "past it (all workers together) and the LR schedule decays over whichever of steps and time "
        "runs out first, so a slower CPU trains fewer steps instead of taking longer")
    pack_len: int = Field(256, ge=8, description="tokens per packed sequence (rows are laid end to end, "
                          "each attending only to itself); also the longest a row may be")
    batch_size: int = Field(4, ge=1, description="packed sequences per micro-batch per worker")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    code_token_lr_scale: float = Field(1.0, gt=0, description="LR multiplier of the code-token rows")
    code_softmax: Literal["level", "vocabulary"] = Field(
        "level", description="level: a code-token label competes only with its level's code tokens, "
        "the choice constrained decoding makes (the model is then decoded the same way, see "
        "semconv.decoding); vocabulary: the LLM's full softmax")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5, ge=0)
    lr_schedule: Literal["cosine", "linear"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of lr")
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(30, ge=1, description="steps between held-out loss evaluations")
    eval_samples: int = Field(32, ge=1, description="fixed sample of sft split=='valid' rows")
    checkpoint_every: int = Field(30, ge=1, description="steps between checkpoints (resume points)")
    log_every: int = Field(10, ge=1, description="steps between progress reports")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts (Ray FailureConfig)")
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: int | None = Field(None, ge=1, description="None: the Ray cluster's CPUs / workers")
    use_gpu: bool = False
    deepspeed_config: str | None = Field(None, description="DeepSpeed JSON (used with use_gpu)")
    bf16: bool = Field(True, description="bf16 autocast where the CPU supports it; bf16 on GPU")
    merge: bool = Field(False, description="also save a merged full model in model/merged/")

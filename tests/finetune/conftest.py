"""Fixtures for fine-tuning tests: a planted next-item rule written as an ``sft/`` artifact.

16 items with unique 4-level codes over K=4 codes per level, ``(a, b, 2a-b, 3a-2b) mod 4``. The
rule: users move from an item to the item whose every code is one higher (mod 4), a permutation
of the catalogue (this set of codes is closed under it). A model that learns it reads the codes
of the last item in the prompt and writes them back, each incremented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from semconv.artifacts import RunDir
from semconv.codes import item_tokens
from semconv.config import PipelineConfig
from semconv.prompts import sequential_prompt

LEVELS, K, N_ITEMS = 4, 4, 16
MAX_HISTORY = 3


def item_codes(i: int) -> tuple[int, int, int, int]:
    """Unique per item (the first two levels spell ``i`` in base 4)."""
    a, b = divmod(i, 4)
    return (a, b, (2 * a - b) % 4, (3 * a - 2 * b) % 4)


def next_item(i: int) -> int:
    """The planted rule: the item whose codes are each one higher (mod 4)."""
    a, b = divmod(i, 4)
    return 4 * ((a + 1) % 4) + (b + 1) % 4


def _run(first: int, length: int) -> tuple[list[int], int]:
    history = [first]
    for _ in range(length - 1):
        history.append(next_item(history[-1]))
    return history, next_item(history[-1])


def planted_rows(n: int, seed: int, max_history: int = MAX_HISTORY) -> list[tuple[list[int], int]]:
    """``n`` (history, next item) pairs: runs of 1..max_history items that follow the rule."""
    rng = np.random.default_rng(seed)
    return [_run(int(rng.integers(N_ITEMS)), int(rng.integers(1, max_history + 1))) for _ in range(n)]


def all_planted_histories(max_history: int = MAX_HISTORY) -> list[tuple[list[int], int]]:
    """Every distinct prompt of the rule (each start item, each history length)."""
    return [_run(i, n) for i in range(N_ITEMS) for n in range(1, max_history + 1)]


# The history ends the instruction, right before the response, so a two-layer model finds it fast.
INSTRUCTION = "Can you predict the next item? The user has interacted with items {history}"


def planted_example(history: list[int], target: int) -> tuple[str, str]:
    prompt = sequential_prompt([item_codes(h) for h in history], instruction=INSTRUCTION)
    return prompt, item_tokens(item_codes(target))


def sft_table(n_train: int, n_valid: int, seed: int = 0) -> pa.Table:
    return sft_table_of(planted_rows(n_train, seed), planted_rows(n_valid, seed + 1))


def sft_table_of(train: list[tuple[list[int], int]], valid: list[tuple[list[int], int]] = ()) -> pa.Table:
    """An ``sft/`` table (the tasks stage's columns) of planted (history, target) pairs."""
    rows = [(r, "train") for r in train] + [(r, "valid") for r in valid]
    prompts, labels = zip(*(planted_example(h, t) for (h, t), _ in rows))
    return pa.table({
        "task": ["sequential"] * len(rows),
        "prompt": list(prompts),
        "label": list(labels),
        "split": [s for _, s in rows],
        "user_id": pa.array(range(len(rows)), pa.int64()),
        "item_id": pa.array([t for (_, t), _ in rows], pa.int64()),
    })


def train_planted(model, tok, train, steps: int, max_len: int) -> list[float]:
    """LoRA steps on planted rows (batches of 16); the per-step losses.

    The code-token rows learn at 3x the LR (the demo's recipe): with one LR for all, a planted run
    sits on a plateau (loss ~1.9, one code level unlearnt) or escapes it on float rounding alone.
    """
    import torch

    from semconv.finetune.data import BatchPlan, encode_batch
    from semconv.finetune.optim import build_optimizer, build_scheduler
    from semconv.finetune.train import optimizer_step

    plan = BatchPlan(train.lengths(), batch_size=16, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(list(model.named_parameters()), lr=5e-3, weight_decay=0.0, code_token_lr_scale=3.0)
    sched = build_scheduler(opt, 10, steps, "cosine", 0.1)
    model.train()
    return [optimizer_step(model, [encode_batch(tok, train, plan[s], max_len)], opt, sched, params, 1.0,
                           False, torch.device("cpu")) for s in range(steps)]


def tiny_config(run_dir: Path, base: Path, **finetune) -> PipelineConfig:
    """A pipeline config for the planted rule on a tiny model (fast on 2 CPU cores)."""
    ft = {"base_model": str(base), "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "max_steps": 6,
          "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3, "eval_samples": 8,
          "checkpoint_every": 3, "log_every": 1, "max_seq_len": 128, "cpus_per_worker": 1, **finetune}
    return PipelineConfig.model_validate({
        "run_dir": str(run_dir), "tokenize": {"levels": LEVELS, "codes_per_level": K}, "finetune": ft,
    })


@pytest.fixture()
def planted_run_dir(tmp_path: Path) -> Path:
    """A run directory holding only ``sft/`` for the planted rule."""
    run_dir = tmp_path / "run"
    RunDir(run_dir).write_table("sft", sft_table(64, 8))
    return run_dir

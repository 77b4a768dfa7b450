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


def planted_histories(n: int, seed: int) -> list[list[int]]:
    """``n`` whole histories of 3-6 items that follow the rule (the history-level objective's rows)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = [int(rng.integers(N_ITEMS))]
        for _ in range(int(rng.integers(2, 6))):
            h.append(next_item(h[-1]))
        out.append(h)
    return out


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


def train_planted(base: Path, rows, steps: int, pack_len: int, code_softmax: str = "level", **over):
    """The package's loop (:func:`semconv.finetune.recipe.train`) on planted rows in one process:
    LoRA r=16, ~16 rows a step; returns its :class:`~semconv.finetune.recipe.Trained`.

    The code-token rows learn at 3x the LR (the demo's recipe): with one LR for all, a planted run
    sits on a plateau (loss ~1.9, one code level unlearnt) or escapes it on float rounding alone.
    """
    from semconv.finetune.optim import TrainBudget
    from semconv.finetune.recipe import FinetuneData, LoraSettings, Recipe, train
    from semconv.training import Session

    recipe = Recipe(base_path=str(base), levels=LEVELS, codes_per_level=K, lora=LoraSettings(16, 32, 0.0),
                    code_softmax=code_softmax, pack_len=pack_len, lr=5e-3, code_token_lr_scale=3.0,
                    budget=TrainBudget(steps, None, 10, "cosine", 0.1), eval_every=10**9, bf16=False, **over)
    return train(recipe, FinetuneData(rows), Session(checkpoint_every=10**9))


def tiny_config(run_dir: Path, base: Path, **finetune) -> PipelineConfig:
    """A pipeline config for the planted rule on a tiny model (fast on 2 CPU cores)."""
    ft = {"base_model": str(base), "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "max_steps": 6,
          "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 3, "eval_samples": 8,
          "checkpoint_every": 3, "log_every": 1, "pack_len": 128, "cpus_per_worker": 1, **finetune}
    return PipelineConfig.model_validate({
        "run_dir": str(run_dir), "tokenize": {"levels": LEVELS, "codes_per_level": K}, "finetune": ft,
    })


@pytest.fixture()
def planted_run_dir(tmp_path: Path) -> Path:
    """A run directory holding only ``sft/`` for the planted rule."""
    run_dir = tmp_path / "run"
    RunDir(run_dir).write_table("sft", sft_table(64, 8))
    return run_dir


def held_out_loss(model, tok, examples, pack_len: int = 128, code_softmax: str = "level") -> float:
    """Mean label loss of ``examples`` under a saved (merged) model, as the loop's held-out
    evaluation takes it: rows packed, the ``code_softmax`` loss per label token."""
    import torch

    from semconv.codes import all_code_tokens
    from semconv.finetune.lm import PackedLM
    from semconv.finetune.packing import collate_packs, encode_rows, pack_rows
    from semconv.finetune.step import label_count

    rows = encode_rows(tok, examples, pack_len)
    lm = PackedLM(model, tok.convert_tokens_to_ids(all_code_tokens(LEVELS, K)), LEVELS, code_softmax).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for pack in pack_rows(rows.lengths(), range(len(rows)), pack_len):
            batch = collate_packs(rows, [pack], pack_len, tok.pad_token_id)
            total += float(lm(**batch))
            count += label_count(batch)
    return total / count

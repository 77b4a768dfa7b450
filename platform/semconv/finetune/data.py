"""Alignment-task examples as token ids: prompt masked, label learned.

Cross-entropy only on the label (the item codes, or the title for text tasks), with EOS appended
so the model learns where an answer stops; ``history`` rows (``tasks.history``: a whole history,
the label every later item's codes) get no EOS, since decoding stops after the last code level.
Rows are then packed into fixed-length sequences (:mod:`semconv.finetune.packing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semconv.tasks.history import TASK as HISTORY_TASK

IGNORE_INDEX = -100


class SftDataError(ValueError):
    """An ``sft/`` table that cannot be trained on (missing column, no rows, ...)."""


@dataclass(frozen=True)
class SftExamples:
    """Prompt/label pairs of one split."""

    prompts: list[str]
    labels: list[str]
    eos: list[bool] | None = None  # per row: append EOS to the label (None: every row)

    def __len__(self) -> int:
        return len(self.prompts)


def split_examples(table: Any, split: str) -> SftExamples:
    """The rows of ``split`` from an ``sft/`` pyarrow table."""
    missing = {"prompt", "label", "split"} - set(table.column_names)
    if missing:
        raise SftDataError(f"sft/ lacks column(s) {sorted(missing)}; has {table.column_names}")
    splits = table.column("split").to_pylist()
    prompts = table.column("prompt").to_pylist()
    labels = table.column("label").to_pylist()
    tasks = table.column("task").to_pylist() if "task" in table.column_names else [None] * len(splits)
    keep = [i for i, s in enumerate(splits) if s == split]
    for i in keep:
        if not prompts[i] or not labels[i]:
            raise SftDataError(f"sft/ row {i} ({split}) has an empty prompt or label")
    return SftExamples([prompts[i] for i in keep], [labels[i] for i in keep],
                       [tasks[i] != HISTORY_TASK for i in keep])


def encode_ids(
    prompt_ids: Sequence[int], label_ids: Sequence[int], max_len: int, eos_id: int | None,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with the prompt masked to ``IGNORE_INDEX`` and ``eos_id`` after the
    label (``None``: no EOS).

    A label longer than half the budget is cut (and then gets no EOS: the model must not learn to
    stop mid-description); a prompt that does not fit loses its oldest tokens. Without EOS
    (history rows, whose prompt is short and whose label is the long part) the prompt is kept
    whole and the label's newest tokens are cut instead.
    """
    p_ids, l_ids = list(prompt_ids), list(label_ids)
    if eos_id is None:
        l_ids = l_ids[: max(0, max_len - len(p_ids))]
        return p_ids + l_ids, [IGNORE_INDEX] * len(p_ids) + l_ids
    l_ids = l_ids + [eos_id]
    if len(l_ids) > max_len // 2:
        l_ids = l_ids[: max_len // 2]
    budget = max_len - len(l_ids)
    if len(p_ids) > budget:
        p_ids = p_ids[len(p_ids) - budget :]
    return p_ids + l_ids, [IGNORE_INDEX] * len(p_ids) + l_ids


def encode_example(tokenizer: Any, prompt: str, label: str, max_len: int, eos: bool = True) -> tuple[list[int], list[int]]:
    """:func:`encode_ids` of one prompt/label pair, tokenized as fine-tuning and decoding do (no
    special tokens added)."""
    return encode_ids(tokenizer(prompt, add_special_tokens=False)["input_ids"],
                      tokenizer(label, add_special_tokens=False)["input_ids"], max_len,
                      tokenizer.eos_token_id if eos else None)


def eval_sample(n_rows: int, n: int, seed: int) -> list[int]:
    """A fixed seeded sample of ``n`` of ``n_rows`` held-out rows (the same rows at every evaluation)."""
    rng = np.random.default_rng([seed, 7])
    return sorted(int(i) for i in rng.choice(n_rows, size=min(n, n_rows), replace=False)) if n_rows else []

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
    """Prompt/label pairs of one split: lists, or Arrow string arrays (what :func:`split_examples`
    gives: millions of rows stay columnar, and reach a Ray Train worker without becoming Python
    strings until they are tokenized, a chunk at a time)."""

    prompts: Sequence[str]
    labels: Sequence[str]
    eos: Sequence[bool] | None = None  # per row: append EOS to the label (None: every row)

    def __len__(self) -> int:
        return len(self.prompts)

    def texts(self, start: int, end: int) -> tuple[list[str], list[str], list[bool]]:
        """Rows ``[start, end)`` as Python lists: prompts, labels, EOS flags."""
        def chunk(col: Any) -> list:
            part = col[start:end]
            return part.to_pylist() if hasattr(part, "to_pylist") else list(part)

        eos = [True] * (min(end, len(self)) - start) if self.eos is None else [bool(e) for e in chunk(self.eos)]
        return chunk(self.prompts), chunk(self.labels), eos


def split_examples(table: Any, split: str) -> SftExamples:
    """The rows of ``split`` from an ``sft/`` pyarrow table, kept as Arrow arrays."""
    import pyarrow.compute as pc

    missing = {"prompt", "label", "split"} - set(table.column_names)
    if missing:
        raise SftDataError(f"sft/ lacks column(s) {sorted(missing)}; has {table.column_names}")
    mask = pc.fill_null(pc.equal(table.column("split"), split), False)
    prompts = table.column("prompt").filter(mask).combine_chunks()
    labels = table.column("label").filter(mask).combine_chunks()
    empty = pc.or_(*(pc.fill_null(pc.equal(pc.utf8_length(c), 0), True) for c in (prompts, labels)))
    if pc.any(empty).as_py():
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        i = int(rows[int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])])
        raise SftDataError(f"sft/ row {i} ({split}) has an empty prompt or label")
    eos = None
    if "task" in table.column_names:
        eos = pc.fill_null(pc.not_equal(table.column("task").filter(mask), HISTORY_TASK), True).combine_chunks()
    return SftExamples(prompts, labels, eos)


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

"""Alignment-task examples as token ids: prompt masked, label learned, batches by length.

Cross-entropy only on the label (the item codes, or the title for text tasks), with EOS appended
so the model learns where an answer stops; ``history`` rows (``tasks.history``: a whole history,
the label every later item's codes) get no EOS, since decoding stops after the last code level. Batches are drawn from a deterministic plan, so the
k-th micro-batch of a run is the same after a resume: a restarted worker continues exactly where
the checkpoint left off. Length bucketing (sort within windows, shuffle the batches) cuts the
padding that dominates CPU step time when prompts range from 60 to 200 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from semconv.tasks.history import TASK as HISTORY_TASK

IGNORE_INDEX = -100


class SftDataError(ValueError):
    """An ``sft/`` table that cannot be trained on (missing column, no rows, ...)."""


@dataclass(frozen=True)
class SftExamples:
    """Prompt/label pairs of one split, with a cheap length proxy for bucketing."""

    prompts: list[str]
    labels: list[str]
    eos: list[bool] | None = None  # per row: append EOS to the label (None: every row)

    def __len__(self) -> int:
        return len(self.prompts)

    def lengths(self) -> np.ndarray:
        return np.array([len(p) + len(l) for p, l in zip(self.prompts, self.labels)], dtype=np.int64)


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


def encode_example(
    tokenizer: Any, prompt: str, label: str, max_len: int, eos: bool = True
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with the prompt masked to ``IGNORE_INDEX`` and EOS after the label.

    A label longer than half the budget is cut (and then gets no EOS: the model must not learn to
    stop mid-description); a prompt that does not fit loses its oldest tokens. Without ``eos``
    (history rows, whose prompt is short and whose label is the long part) the prompt is kept
    whole and the label's newest tokens are cut instead.
    """
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    l_ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    if not eos:
        l_ids = l_ids[: max(0, max_len - len(p_ids))]
        return p_ids + l_ids, [IGNORE_INDEX] * len(p_ids) + l_ids
    l_ids = l_ids + [tokenizer.eos_token_id]
    if len(l_ids) > max_len // 2:
        l_ids = l_ids[: max_len // 2]
    budget = max_len - len(l_ids)
    if len(p_ids) > budget:
        p_ids = p_ids[len(p_ids) - budget :]
    return p_ids + l_ids, [IGNORE_INDEX] * len(p_ids) + l_ids


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and loss."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def encode_batch(tokenizer: Any, examples: SftExamples, index: Sequence[int], max_len: int) -> dict[str, torch.Tensor]:
    eos = examples.eos or [True] * len(examples)
    pairs = [encode_example(tokenizer, examples.prompts[i], examples.labels[i], max_len, eos[i]) for i in index]
    return collate(pairs, tokenizer.pad_token_id)


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: bool = True, window: int = 32
) -> list[np.ndarray]:
    """One epoch's batches: shuffled, and (with ``bucket``) length-sorted within windows."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    span = batch_size * window if bucket else len(order)
    for start in range(0, len(order), max(span, 1)):
        chunk = order[start : start + span]
        if bucket:
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BatchPlan:
    """The k-th micro-batch of a run, for any k: epochs are generated on demand from the seed.

    Worker ``rank`` of ``world`` at optimizer step ``s`` with ``accum`` micro-steps reads global
    micro-batches ``(s * accum + a) * world + rank``, so no two workers share a batch and a
    resumed run continues the same sequence.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, bucket: bool = True):
        if len(lengths) == 0:
            raise SftDataError("no training rows (sft/ has no split == 'train')")
        self.lengths, self.batch_size, self.seed, self.bucket = lengths, batch_size, seed, bucket
        self._epochs: dict[int, list[np.ndarray]] = {}
        self.per_epoch = len(epoch_batches(lengths, batch_size, seed, 0, bucket))

    def __getitem__(self, k: int) -> np.ndarray:
        epoch, i = divmod(k, self.per_epoch)
        if epoch not in self._epochs:
            self._epochs = {epoch: epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.bucket)}
        return self._epochs[epoch][i]

    def micro_batch(self, step: int, micro: int, accum: int, rank: int, world: int) -> np.ndarray:
        return self[(step * accum + micro) * world + rank]


def eval_sample(examples: SftExamples, n: int, seed: int) -> list[int]:
    """A fixed sample of held-out rows, sorted by length (same rows at every evaluation)."""
    rng = np.random.default_rng([seed, 7])
    idx = rng.choice(len(examples), size=min(n, len(examples)), replace=False) if len(examples) else []
    lengths = examples.lengths()
    return sorted((int(i) for i in idx), key=lambda i: (lengths[i], i))

"""Packed micro-batches: several ``sft/`` rows in one fixed-length sequence, each seeing only itself.

The demo's rows are short and uneven (history rows ~30 tokens, text and negative rows ~80), so a
padded batch of 8 is ~300 tokens with 14% padding, too small a matmul for a CPU to run near its
rate, and bucketing rows by length to cut the padding separated the tasks into batches of their
own (a demo run with token-count buckets stalled). Packing fixes both: rows are drawn in a seeded
random order and laid end to end into sequences of ``pack_len`` tokens, so every pack mixes
tasks as the order does and padding is only a pack's unfilled tail. The attention mask is block
diagonal (a row attends causally within itself) and position ids restart per row, so a packed
row's loss is its loss alone (``tests/finetune/test_lm.py``).

:class:`PackPlan` gives the k-th pack of a run for any k (epochs are generated from the seed), so
a resumed or restarted worker continues exactly where the checkpoint left off.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from semconv.finetune.data import IGNORE_INDEX, SftDataError, SftExamples, encode_ids


@dataclass(frozen=True)
class EncodedRows:
    """Token ids and labels (prompt masked to ``IGNORE_INDEX``) of one split's rows."""

    ids: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    def label_tokens(self) -> int:
        """Tokens the loss is taken over (labels after the first token of their row)."""
        return int(sum(int((lab[1:] != IGNORE_INDEX).sum()) for lab in self.labels))


ENCODE_CHUNK = 8192  # rows tokenized per call: the tokenizer's Python lists of ints stay small


def encode_rows(tokenizer: Any, examples: SftExamples, max_len: int) -> EncodedRows:
    """Tokenize every row once (:func:`~semconv.finetune.data.encode_example`), at most
    ``max_len`` tokens a row, ``ENCODE_CHUNK`` rows at a time, kept as int32 arrays (a token
    list of Python ints costs ~9x its int32 array: at millions of rows that is the difference
    between a few GB and tens)."""
    ids, labs = [], []
    for start in range(0, len(examples), ENCODE_CHUNK):
        prompt_texts, label_texts, eos = examples.texts(start, start + ENCODE_CHUNK)
        prompts = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
        labels = tokenizer(label_texts, add_special_tokens=False)["input_ids"]
        for p, l, e in zip(prompts, labels, eos):
            x, y = encode_ids(p, l, max_len, tokenizer.eos_token_id if e else None)
            ids.append(np.asarray(x, dtype=np.int32))
            labs.append(np.asarray(y, dtype=np.int32))
    return EncodedRows(ids, labs)


def pack_rows(lengths: np.ndarray, order: Sequence[int], pack_len: int, lookahead: int = 64) -> list[list[int]]:
    """Rows in ``order`` laid into packs of at most ``pack_len`` tokens: each pack starts with the
    oldest unplaced row and is topped up with the next of up to ``lookahead`` unplaced rows that
    still fit, so the order (and the task mix it holds) is kept and little of a pack is left
    empty. Linear in the rows: rows that did not fit wait in a queue of at most ``lookahead``."""
    if len(lengths) and int(np.max(lengths)) > pack_len:
        raise SftDataError(f"a row of {int(np.max(lengths))} tokens does not fit finetune.pack_len={pack_len}")
    source = iter(order)
    waiting: deque[int] = deque()
    packs: list[list[int]] = []

    def next_row() -> int | None:
        return waiting.popleft() if waiting else next(source, None)

    while (first := next_row()) is not None:
        pack, room, skipped = [first], pack_len - int(lengths[first]), []
        for _ in range(lookahead):
            if room <= 0 or (row := next_row()) is None:
                break
            if lengths[row] <= room:
                pack.append(row)
                room -= int(lengths[row])
            else:
                skipped.append(row)
        waiting.extendleft(reversed(skipped))  # older than every row still waiting
        packs.append(pack)
    return packs


def epoch_packs(lengths: np.ndarray, pack_len: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's packs: every row once, in a seeded random order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    return pack_rows(lengths, order.tolist(), pack_len)


class PackPlan:
    """The k-th pack of a run, for any k. Worker ``rank`` of ``world`` at optimizer step ``s``
    with ``accum`` micro-batches of ``per_micro`` packs reads packs
    ``((s * accum + a) * world + rank) * per_micro + [0, per_micro)``: no two workers share a
    pack, and a resumed run continues the same sequence."""

    def __init__(self, lengths: np.ndarray, pack_len: int, seed: int):
        if len(lengths) == 0:
            raise SftDataError("no training rows (sft/ has no split == 'train')")
        self.lengths, self.pack_len, self.seed = lengths, pack_len, seed
        self._epoch: tuple[int, list[list[int]]] | None = None
        first = self._packs(0)
        self.per_epoch = len(first)
        self.tokens_per_epoch = int(lengths.sum())

    def _packs(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_packs(self.lengths, self.pack_len, self.seed, epoch))
        return self._epoch[1]

    def __getitem__(self, k: int) -> list[int]:
        epoch, i = divmod(k, self.per_epoch)
        packs = self._packs(epoch)
        return packs[i] if i < len(packs) else []  # a later epoch may pack into fewer packs

    def micro_batch(self, step: int, micro: int, accum: int, rank: int, world: int, per_micro: int) -> list[list[int]]:
        first = ((step * accum + micro) * world + rank) * per_micro
        return [self[first + j] for j in range(per_micro)]


def collate_packs(rows: EncodedRows, packs: Sequence[Sequence[int]], pack_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``labels``, ``position_ids`` ``(B, S)`` and the block-diagonal causal
    ``attention_mask`` ``(B, 1, S, S)`` of ``packs`` (lists of row indices). ``S`` is the longest
    pack's length (at most ``pack_len``); a pack's tail is padding that attends only to itself."""
    width = max([sum(len(rows.ids[i]) for i in p) for p in packs] + [1])
    if width > pack_len:
        raise SftDataError(f"a pack holds {width} tokens, more than pack_len={pack_len}")
    b = len(packs)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((b, width), dtype=torch.long)
    segment = torch.full((b, width), -1, dtype=torch.long)
    for r, pack in enumerate(packs):
        at = 0
        for s, i in enumerate(pack):
            n = len(rows.ids[i])
            input_ids[r, at : at + n] = torch.from_numpy(rows.ids[i])
            labels[r, at : at + n] = torch.from_numpy(rows.labels[i])
            positions[r, at : at + n] = torch.arange(n)
            segment[r, at : at + n] = s
            at += n
        positions[r, at:] = torch.arange(width - at)
        segment[r, at:] = len(pack)  # the tail: one more segment, masked out of the loss
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "attention_mask": mask[:, None]}

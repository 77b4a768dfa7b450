"""History-level sequential rows: every next-item target of a user's history in one row.

Why two sequential objectives exist (``tasks.sequential_objective``):

* ``prompt`` is the paper's sequential alignment task: one instruction prompt per (history,
  next item) pair, the loss on that one item's codes. It is what LC-Rec-style recommenders train
  on, and it reads like the other Alignment Tasks, but each ~75-token row teaches one target and
  recomputes the same preamble and history for every target of a user.
* ``history`` (the default) trains the way SASRec and TIGER-style generative recommenders do:
  one row holds a user's whole training history in the ``history`` prompt format
  (:func:`semconv.prompts.history_prompt`), with the loss on the code tokens of every item after
  the first. Causal attention makes the loss on item ``j`` see only items ``< j``, so one pass
  trains every prefix's next-item target: about 20x more targets per token on the demo data.
  The inference prompt of a history is exactly the prefix that precedes a target in training.

A row is stored in the ``sft/`` schema as prompt = header + first item, label = the rest of the
items' code tokens (no EOS: the beam search stops after the last code level). Histories longer
than ``max_len + 1`` items are cut into windows of at most ``max_len + 1`` items, so no target
sees more context than inference gives it (``prepare.max_len``) and each target appears once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from semconv.codes import item_tokens
from semconv.prompts import HISTORY_HEADER, history_prompt
from semconv.protocol import train_end
from semconv.tasks.rows import Rows

TASK = "history"


def history_windows(length: int, max_len: int) -> list[tuple[int, int]]:
    """``[start, end)`` item windows of a history of ``length`` items, newest first: each holds at
    most ``max_len + 1`` items and every item after the first is a target in exactly one window."""
    if length < 2:
        return []
    out, end = [], length
    while True:
        start = max(0, end - max_len - 1)
        out.append((start, end))
        if start == 0:
            return out
        end = start + 1


def train_histories(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    """The training part of each full history (:func:`semconv.protocol.train_end`)."""
    return [list(s[: train_end(len(s))]) for s in sequences]


def history_rows(
    user_ids: Sequence[int], histories: Sequence[Sequence[int]], codes: np.ndarray, max_len: int,
    repeats: np.ndarray | None = None,
) -> pa.Table:
    """Train rows (``task='history'``) for each user's training history; ``repeats[i]`` copies
    of user ``i``'s windows (task weight, see ``sampling.repeat_counts``)."""
    out = Rows()
    tokens: dict[int, str] = {}

    def tok(item: int) -> str:
        if item not in tokens:
            tokens[item] = item_tokens(codes[item])
        return tokens[item]

    for i, (user, hist) in enumerate(zip(user_ids, histories)):
        for _ in range(1 if repeats is None else int(repeats[i])):
            for start, end in history_windows(len(hist), max_len):
                window = hist[start:end]
                out.add(TASK, HISTORY_HEADER + tok(window[0]), "".join(tok(h) for h in window[1:]),
                        "train", user, window[-1])
    return out.table()


HISTORY_COLUMNS = ("user_id", "history", "repeats")


def history_batch(batch: pa.Table, codes: np.ndarray, max_len: int) -> pa.Table:
    """:func:`history_rows` for a batch with :data:`HISTORY_COLUMNS` (full ``sequences/``
    histories, task-weight copies): a pure function of the batch, run as is locally and by Ray
    Data's ``map_batches``."""
    users = batch.column("user_id").to_pylist()
    histories = train_histories(batch.column("history").to_pylist())
    return history_rows(users, histories, codes, max_len, batch.column("repeats").to_numpy())


def heldout_history_rows(valid: pa.Table, codes: np.ndarray) -> pa.Table:
    """Held-out rows (``split='valid'``): the inference prompt of the valid history, the valid
    target's codes as label, for the fine-tune stage's eval loss."""
    out = Rows()
    for user, history, target in zip(*(valid.column(c).to_pylist() for c in ("user_id", "history", "target"))):
        out.add(TASK, history_prompt(codes[history].tolist()), item_tokens(codes[target]), "valid", user, target)
    return out.table()

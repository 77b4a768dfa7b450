"""Behaviour tasks: sequential alignment and negative-behaviour prompts, one batch at a time.

Sequential alignment: for a train row of the protocol (history -> target), the prompt lists the
history's item codes exactly as ``prompts.sequential_prompt`` spells them (with one of the
configured paraphrases) and the label is the target's codes.

Negative behaviour (our formulation of the paper's "items the user is unlikely to interact
with"): with no explicit negatives in the data, a negative is an item drawn uniformly from those
never in the user's full history (``sequences/``, which includes the held-out valid and test
items) nor the row's target. The prompt states the same history and asks which item the user is
*unlikely* to interact with next; the label is the negative's codes. Each positive row gets
``negative_ratio`` negatives (distinct when the catalogue allows), so the ratio is exact.

:func:`behaviour_rows` is a pure function of one batch, used as is locally and by Ray Data's
``map_batches``; its draws depend on each row's global ``row`` number only.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from semconv.codes import item_tokens
from semconv.prompts import history_text, wrap
from semconv.tasks.rows import Rows
from semconv.tasks.sampling import row_seeds, sample_negatives
from semconv.tasks.templates import render_sequential, template_choice

# prompts.history_text joins item tokens with this; a test pins the two spellings together.
HISTORY_SEPARATOR = history_text([(0,), (0,)])[len(item_tokens((0,))) : -len(item_tokens((0,)))]
BATCH_COLUMNS = ("row", "user_id", "history", "target", "full_history", "seq_repeats", "neg_repeats")


@dataclass(frozen=True)
class BehaviourSpec:
    seed: int
    num_items: int
    sequential_templates: tuple[str, ...]
    negative_templates: tuple[str, ...]
    negative_ratio: int


def behaviour_rows(batch: pa.Table, codes: np.ndarray, spec: BehaviourSpec) -> pa.Table:
    """Sequential and negative train rows for a batch with :data:`BATCH_COLUMNS`.

    ``seq_repeats`` / ``neg_repeats`` are the per-row copies that the task weights asked for
    (see ``sampling.repeat_counts``); a row yields ``negative_ratio * neg_repeats`` negatives.
    """
    col = {c: batch.column(c).to_pylist() for c in BATCH_COLUMNS}
    rows_np = np.asarray(col["row"], dtype=np.int64)
    seq_t = template_choice(spec.seed, "sequential", rows_np, 0, len(spec.sequential_templates))
    neg_t = template_choice(spec.seed, "negative", rows_np, 0, len(spec.negative_templates))
    neg_seeds = row_seeds(spec.seed, "negative", rows_np)
    tokens: dict[int, str] = {}  # item -> its code tokens, spelled once per batch

    def tok(item: int) -> str:
        if item not in tokens:
            tokens[item] = item_tokens(codes[item])
        return tokens[item]

    seq, neg = Rows(), Rows()
    for i in range(len(rows_np)):
        user, history, target = col["user_id"][i], col["history"][i], col["target"][i]
        hist = HISTORY_SEPARATOR.join(tok(h) for h in history)  # == prompts.history_text
        label = tok(target)
        for r in range(col["seq_repeats"][i]):
            t = spec.sequential_templates[(seq_t[i] + r) % len(spec.sequential_templates)]
            seq.add("sequential", wrap(t.format(history=hist)), label, "train", user, target)
        k = spec.negative_ratio * col["neg_repeats"][i]
        if k == 0:
            continue
        seen = itertools.chain(col["full_history"][i], history, (target,))
        negatives = sample_negatives(random.Random(neg_seeds[i]), spec.num_items, seen, k, user)
        for j, item in enumerate(negatives):
            t = spec.negative_templates[(neg_t[i] + j) % len(spec.negative_templates)]
            neg.add("negative", wrap(t.format(history=hist)), tok(item), "train", user, item)
    return pa.concat_tables([seq.table(), neg.table()])


def heldout_rows(valid: pa.Table, codes: np.ndarray, template: str) -> pa.Table:
    """Held-out sequential rows (``split='valid'``) for the eval loss, in the inference wording."""
    out = Rows()
    users = valid.column("user_id").to_pylist()
    histories = valid.column("history").to_pylist()
    targets = valid.column("target").to_pylist()
    for user, history, target in zip(users, histories, targets):
        prompt = render_sequential(template, codes[history].tolist())
        out.add("sequential", prompt, item_tokens(codes[target]), "valid", user, target)
    return out.table()

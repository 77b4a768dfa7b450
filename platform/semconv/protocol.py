"""The leave-last-out protocol: the one home of its rules, used by every stage and by serving.

* **Held out.** A history of 3 or more items holds out its last item (the test target) and the
  one before it (the valid target); shorter histories are training only (:func:`train_end`).
* **Splits.** ``splits/`` rows are every prefix -> next item of the training part (``train``),
  then one ``valid`` and one ``test`` row, each history cut to its last ``max_len`` items
  (:func:`leave_last_out`), the context the model is trained and prompted with.
* **Train interactions.** The (user, item) pairs of the training parts
  (:func:`train_interactions`): the CF graph's edges, and what :func:`popularity` counts.
* **History exclusion.** With ``precache.exclude_history`` (the one knob) a user is never
  recommended an item they already have: their *whole* history before the target
  (:func:`history_before`), not only the last ``max_len`` items the prompt shows. Why the whole:
  the data has no repeat interactions (``prepare`` and a refresh drop repeated pairs), so an old
  item can never be a target and excluding it costs no hit, while serving it again is a wrong
  answer; and the scope must not depend on a model's context length, or precache, refresh and
  online generation would disagree on long histories. The precache ranks each test user from
  :func:`history_before` (the prompt keeps its last ``max_len`` items), and evaluation excludes
  the same items from every baseline, so all systems are scored under one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.metrics import topk_from_scores

SPLITS = ("train", "valid", "test")
SPLITS_SCHEMA = pa.schema([("split", pa.string()), ("user_id", pa.int64()),
                           ("history", pa.list_(pa.int64())), ("target", pa.int64())])
_TARGET_FROM_END = {"valid": 2, "test": 1}  # a held-out target's position, counted from the end


def train_end(n: int) -> int:
    """Items of a history of length ``n`` that belong to training: all but the valid and test
    items, which a history of 3 or more holds out (shorter ones are train only)."""
    return n - 2 if n >= 3 else n


def leave_last_out(sequences: pa.Table, max_len: int) -> pa.Table:
    """``splits/`` rows for a batch of users (pure; Ray Data maps it over shards of users)."""
    split, user, hist, target = [], [], [], []
    for uid, seq in zip(sequences.column("user_id").to_pylist(), sequences.column("history").to_pylist()):
        seq = seq or []
        n = len(seq)
        for i in range(1, train_end(n)):
            split.append("train"); user.append(uid); hist.append(seq[max(0, i - max_len):i]); target.append(seq[i])
        for name in ("valid", "test") if train_end(n) < n else ():  # the held-out targets
            t = n - _TARGET_FROM_END[name]
            split.append(name); user.append(uid); hist.append(seq[max(0, t - max_len):t]); target.append(seq[t])
    return pa.table({"split": split, "user_id": pa.array(user, pa.int64()),
                     "history": pa.array(hist, pa.list_(pa.int64())), "target": pa.array(target, pa.int64())},
                    schema=SPLITS_SCHEMA)


def history_before(sequences: pa.Table, split: str) -> pa.Table:
    """``user_id``, ``history``: for each user of ``sequences`` with a ``split`` target, everything
    before that target, oldest first and uncut: what they are ranked from and what is excluded."""
    if split not in _TARGET_FROM_END:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    hist = sequences.column("history")
    hist = hist.combine_chunks() if isinstance(hist, pa.ChunkedArray) else hist
    hist = pc.fill_null(hist, pa.scalar([], hist.type))
    lengths = pc.list_value_length(hist).to_numpy(zero_copy_only=False)
    keep = np.fromiter((train_end(n) < n for n in lengths.tolist()), bool, len(lengths))  # users with targets
    rows = hist.filter(pa.array(keep))
    starts = rows.offsets.to_numpy()[:-1]  # absolute positions in rows.values
    take = lengths[keep] - _TARGET_FROM_END[split]
    first = np.repeat(starts - np.r_[0, np.cumsum(take)[:-1]], take)
    flat = rows.values.to_numpy(zero_copy_only=False)[first + np.arange(int(take.sum()))]
    offsets = np.r_[0, np.cumsum(take)].astype(np.int32)
    users = sequences.column("user_id").filter(pa.array(keep))
    return pa.table({"user_id": pa.array(users.to_numpy(zero_copy_only=False), pa.int64()),
                     "history": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int64()))})


def train_interactions(splits: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs of the training parts, sorted, as ``(users, items)``.

    A training part is every item of a user's ``train`` rows (histories and targets) and of their
    ``valid`` row's history: together exactly the items before the valid target, also for a user
    of 3 items (no train rows) and whatever ``max_len`` cut the histories (a user of one item has
    no row: there is no next item to learn from it).
    """
    rows = splits.filter(pc.is_in(splits.column("split"), value_set=pa.array(["train", "valid"])))
    hist = rows.column("history").combine_chunks()
    lengths = pc.list_value_length(hist).fill_null(0).to_numpy(zero_copy_only=False)
    row_users = rows.column("user_id").to_numpy()
    is_train = np.asarray(pc.equal(rows.column("split"), "train").to_numpy(zero_copy_only=False), dtype=bool)
    users = np.concatenate([np.repeat(row_users, lengths), row_users[is_train]]).astype(np.int64)
    items = np.concatenate([pc.list_flatten(hist).to_numpy(zero_copy_only=False),
                            rows.column("target").to_numpy()[is_train]]).astype(np.int64)
    pairs = np.unique(np.stack([users, items], axis=1), axis=0) if len(users) else np.zeros((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]


def popularity(splits: pa.Table, num_items: int) -> np.ndarray:
    """Train interactions per item (``int64[num_items]``): the report's most-popular baseline
    and the serving fallback count with this, and never see a held-out item."""
    _, items = train_interactions(splits)
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        bad = int(items[(items < 0) | (items >= num_items)][0])
        raise ValueError(f"splits/ train item {bad} is outside items/ ids 0..{num_items - 1}")
    return np.bincount(items, minlength=num_items).astype(np.int64)


def popularity_topk(
    counts: np.ndarray, n_users: int, k: int, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Top-``k`` items per user by ``counts`` (ties: lower item id first), best first; without
    exclusions every user gets the same list, computed once."""
    if exclude is None:
        top = topk_from_scores(counts[None, :].astype(np.float64), k)[0]
        return np.tile(top, (n_users, 1))
    k = min(k, len(counts))
    out = np.empty((n_users, k), dtype=np.int64)
    for start in range(0, n_users, 1024):
        stop = min(start + 1024, n_users)
        scores = np.broadcast_to(counts.astype(np.float64), (stop - start, len(counts)))
        out[start:stop] = topk_from_scores(scores, k, exclude[start:stop])
    return out

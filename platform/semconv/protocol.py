"""The leave-last-out protocol: the one home of its rules, used by every stage and by serving.

* **Held out.** A history of 3 or more items holds out its last item (the test target) and the
  one before it (the valid target); shorter histories are training only (:func:`train_end`).
* **Splits.** ``splits/`` stores where the held-out targets are, one row per user
  (:func:`split_bounds`), never the rows themselves: whatever needs the protocol's rows (every
  prefix -> next item of the training part, then one ``valid`` and one ``test`` row, each history
  cut to its last ``max_len`` items) derives them when it needs them (:func:`split_rows`), so
  the stored split does not grow with history length or ``max_len``.
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


SPLITS = ("train", "valid", "test")
BOUNDS_SCHEMA = pa.schema([("user_id", pa.int64()), ("valid", pa.int32()), ("test", pa.int32())])
ROWS_SCHEMA = pa.schema([("split", pa.string()), ("user_id", pa.int64()),
                         ("history", pa.list_(pa.int64())), ("target", pa.int64())])
_TARGET_FROM_END = {"valid": 2, "test": 1}  # a held-out target's position, counted from the end


def train_end(n: int) -> int:
    """Items of a history of length ``n`` that belong to training: all but the valid and test
    items, which a history of 3 or more holds out (shorter ones are train only)."""
    return n - 2 if n >= 3 else n


def _histories(sequences: pa.Table) -> pa.ListArray:
    hist = sequences.column("history")
    hist = hist.combine_chunks() if isinstance(hist, pa.ChunkedArray) else hist
    return pc.fill_null(hist, pa.scalar([], hist.type))


def _lengths(hist: pa.ListArray) -> np.ndarray:
    return pc.list_value_length(hist).to_numpy(zero_copy_only=False).astype(np.int64)


def split_bounds(sequences: pa.Table) -> pa.Table:
    """``splits/``: per user of ``sequences`` (same order), the positions of the ``valid`` and
    ``test`` targets in their history, null for a train-only history. Stored once per user
    instead of one row per prefix, so the split costs 16 bytes a user at any history length."""
    n = _lengths(_histories(sequences))
    held = n >= 3
    valid = pa.array(np.where(held, n - 2, 0).astype(np.int32), mask=~held)
    test = pa.array(np.where(held, n - 1, 0).astype(np.int32), mask=~held)
    users = sequences.column("user_id")
    return pa.table([users.combine_chunks() if isinstance(users, pa.ChunkedArray) else users, valid, test],
                    schema=BOUNDS_SCHEMA)


def _positions(sequences: pa.Table, bounds: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``bounds``' valid / test positions per row of ``sequences`` (-1: none), checked against
    each history's length; a user of ``sequences`` that ``bounds`` lacks has no held-out target."""
    seq_users = sequences.column("user_id").to_numpy().astype(np.int64)
    b_users = bounds.column("user_id").to_numpy().astype(np.int64)
    valid = bounds.column("valid").fill_null(-1).to_numpy().astype(np.int64)
    test = bounds.column("test").fill_null(-1).to_numpy().astype(np.int64)
    if not np.array_equal(seq_users, b_users):  # not the same build's order: match by user_id
        if not len(b_users):
            valid = test = np.full(len(seq_users), -1, np.int64)
        else:  # splits/ is stored sorted by user_id: a batch of users is a binary search away
            order = None if (b_users[1:] >= b_users[:-1]).all() else np.argsort(b_users, kind="stable")
            ordered = b_users if order is None else b_users[order]
            at = np.minimum(np.searchsorted(ordered, seq_users), len(ordered) - 1)
            found, at = ordered[at] == seq_users, (at if order is None else order[at])
            valid, test = np.where(found, valid[at], -1), np.where(found, test[at], -1)
    n = _lengths(_histories(sequences))
    bad = ((valid >= n) | (test >= n) | (valid == 0) | (test == 0)
           | ((valid >= 0) & (test >= 0) & (valid >= test)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"splits/ user_id {int(seq_users[i])}: valid {int(valid[i])} / test {int(test[i])} do "
                         f"not fit their history of {int(n[i])} items (0 < valid < test < length)")
    return valid, test, n


def split_rows(sequences: pa.Table, bounds: pa.Table, max_len: int,
               splits: Sequence[str] = SPLITS, keep: np.ndarray | None = None) -> pa.Table:
    """The protocol's rows (``split``, ``user_id``, ``history``, ``target``), derived when needed
    and never stored: per user, each train prefix -> next item up to the first held-out target,
    then the ``valid`` and ``test`` rows, every history cut to its last ``max_len`` items (the
    context the model is trained and prompted with). Vectorised: the cost is the rows' size.
    ``keep`` (a mask over the rows of ``splits``, in this order) derives only those rows, so a
    caller that samples a few rows never holds them all."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits must be among {SPLITS}, got {sorted(unknown)}")
    valid, test, n = _positions(sequences, bounds)
    hist = _histories(sequences)
    starts = hist.offsets.to_numpy()[:-1].astype(np.int64)
    values = hist.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    n_train = _train_rows(n, valid, test)
    has_v, has_t = valid >= 0, test >= 0
    count = n_train + has_v + has_t
    user = np.repeat(np.arange(len(count)), count)
    j = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    pos, label = j + 1, np.zeros(len(j), np.int8)
    at_v = (j == n_train[user]) & has_v[user]
    at_t = (j == n_train[user] + has_v[user]) & has_t[user]
    pos[at_v], label[at_v] = valid[user][at_v], 1
    pos[at_t], label[at_t] = test[user][at_t], 2
    chosen = np.isin(label, [SPLITS.index(s) for s in splits])
    user, pos, label = user[chosen], pos[chosen], label[chosen]
    if keep is not None:
        if len(keep) != len(user):
            raise ValueError(f"keep has {len(keep)} entries for {len(user)} rows of {list(splits)}")
        user, pos, label = user[keep], pos[keep], label[keep]
    length = np.minimum(pos, max_len)
    offsets = np.r_[0, np.cumsum(length)]
    flat = np.repeat(starts[user] + pos - length - offsets[:-1], length) + np.arange(int(offsets[-1]))
    names = pa.DictionaryArray.from_arrays(pa.array(label, pa.int8()), pa.array(SPLITS)).cast(pa.string())
    user_ids = sequences.column("user_id").to_numpy().astype(np.int64)
    return pa.table([names, pa.array(user_ids[user], pa.int64()),
                     pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[flat], pa.int64())),
                     pa.array(values[starts[user] + pos], pa.int64())], schema=ROWS_SCHEMA)


def train_rows(sequences: pa.Table, bounds: pa.Table) -> np.ndarray:
    """Per user of ``sequences``, how many ``train`` rows :func:`split_rows` derives."""
    valid, test, n = _positions(sequences, bounds)
    return _train_rows(n, valid, test)


def _train_rows(n: np.ndarray, valid: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Train rows: every prefix -> next item before the first held-out target (or the end)."""
    return np.maximum(_train_end(n, valid, test) - 1, 0)


def _train_end(n: np.ndarray, valid: np.ndarray, test: np.ndarray) -> np.ndarray:
    return np.where(valid >= 0, valid, np.where(test >= 0, test, n))


def row_counts(bounds: pa.Table, train: int) -> dict[str, int]:
    """Rows per split (``splits/``' manifest), given the sum of :func:`train_rows`."""
    return {"train": int(train), "valid": bounds.num_rows - bounds.column("valid").null_count,
            "test": bounds.num_rows - bounds.column("test").null_count}


def history_before(sequences: pa.Table, bounds: pa.Table, split: str) -> pa.Table:
    """``user_id``, ``history``: for each user of ``sequences`` with a ``split`` target, everything
    before that target, oldest first and uncut: what they are ranked from and what is excluded."""
    if split not in _TARGET_FROM_END:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    valid, test, _ = _positions(sequences, bounds)
    take = valid if split == "valid" else test
    keep = take >= 0
    hist = _histories(sequences)
    starts = hist.offsets.to_numpy()[:-1].astype(np.int64)[keep]
    take = take[keep]
    offsets = np.r_[0, np.cumsum(take)]
    flat = np.repeat(starts - offsets[:-1], take) + np.arange(int(offsets[-1]))
    values = hist.values.to_numpy(zero_copy_only=False)
    users = sequences.column("user_id").to_numpy().astype(np.int64)[keep]
    return pa.table({"user_id": pa.array(users, pa.int64()),
                     "history": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                                         pa.array(values[flat], pa.int64()))})


def train_interactions(sequences: pa.Table, bounds: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs of the training parts, sorted, as ``(users, items)``.

    A user's training part is every item before their first held-out target (all of it for a
    train-only history), the items of their train rows and of their valid row's history,
    whatever ``max_len`` cuts; a user of one item has none (no next item to learn from it).
    """
    valid, test, n = _positions(sequences, bounds)
    hist = _histories(sequences)
    take = np.where(n >= 2, _train_end(n, valid, test), 0)
    starts = hist.offsets.to_numpy()[:-1].astype(np.int64)
    offsets = np.r_[0, np.cumsum(take)]
    flat = np.repeat(starts - offsets[:-1], take) + np.arange(int(offsets[-1]))
    items = hist.values.to_numpy(zero_copy_only=False).astype(np.int64)[flat]
    users = np.repeat(sequences.column("user_id").to_numpy().astype(np.int64), take)
    if not len(users):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def popularity(sequences: pa.Table, bounds: pa.Table, num_items: int) -> np.ndarray:
    """Train interactions per item (``int64[num_items]``): the report's most-popular baseline
    and the serving fallback count with this, and never see a held-out item."""
    _, items = train_interactions(sequences, bounds)
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        bad = int(items[(items < 0) | (items >= num_items)][0])
        raise ValueError(f"sequences/ train item {bad} is outside items/ ids 0..{num_items - 1}")
    return np.bincount(items, minlength=num_items).astype(np.int64)


def popularity_topk(
    counts: np.ndarray, n_users: int, k: int, exclude: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """Top-``k`` items per user by ``counts`` (ties: lower item id first), best first; without
    exclusions every user gets the same list, computed once. With them a user's list is the
    first ``k`` unexcluded items of the one global order, found among its first ``k + len(excluded)``
    (never a users x items score matrix: at 100k users and 300k items that was minutes); a user
    left with fewer than ``k`` items is padded with -1."""
    order = np.argsort(-np.asarray(counts, dtype=np.float64), kind="stable")
    k = min(k, len(counts))
    if exclude is None:
        return np.tile(order[:k], (n_users, 1))
    out = np.full((n_users, k), -1, dtype=np.int64)
    for u in range(n_users):
        excluded = np.asarray(exclude[u], dtype=np.int64)
        head = order[: k + len(excluded)]  # at most len(excluded) of these are excluded
        keep = head[~np.isin(head, excluded)][:k]
        out[u, : len(keep)] = keep
    return out

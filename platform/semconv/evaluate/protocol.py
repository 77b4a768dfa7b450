"""Scoring under the protocol: split rows, rankings per user, HR@K / NDCG@K.

Every system (ours from ``precache/``, and each baseline) is scored by the same code: a ranking
(best first) per evaluated user, aligned with that user's held-out target, fed to
:func:`semconv.metrics.ranking_metrics`. A user a system has no ranking for counts as a miss
(an empty ranking), so no system looks better by dropping hard users. The rules themselves
(held-out items, history exclusion) live in :mod:`semconv.protocol`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.metrics import ranking_metrics
from semconv.protocol import history_before, split_rows


class EvaluationError(ValueError):
    """Evaluation inputs that do not fit the protocol (bad split rows, short or duplicate rankings)."""


@dataclass(frozen=True, eq=False)
class RaggedIds(Sequence[np.ndarray]):
    """Per-user id lists as one flat array and row bounds: row ``i`` is ``values[starts[i]:ends[i]]``.

    A list of per-user arrays costs a ~100-byte array object a user; the evaluation holds four
    such lists of every user (valid and test, model input and whole history), ~0.75 GB of
    objects alone at 1.6M users. Rows are views made on access; slicing, :meth:`take` and
    :meth:`trim` only move bounds, so a sample or a shifted copy shares ``values``.
    """

    values: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def from_arrow(cls, lists: pa.ChunkedArray | pa.ListArray) -> RaggedIds:
        lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
        values = lists.flatten().to_numpy(zero_copy_only=False)  # Arrow's own buffer where it can
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        return cls.laid_end_to_end(values, lengths)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> RaggedIds:
        if isinstance(rows, RaggedIds):
            return rows
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        values = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]) if len(rows) else \
            np.zeros(0, np.int64)
        return cls.laid_end_to_end(values, lengths)

    @classmethod
    def laid_end_to_end(cls, values: np.ndarray, lengths: np.ndarray) -> RaggedIds:
        """Rows of ``lengths`` ids that follow each other in ``values``."""
        ends = np.cumsum(lengths, dtype=np.int64)
        return cls(values, ends - lengths, ends)

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> RaggedIds: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return RaggedIds(self.values, self.starts[i], self.ends[i])
        return self.values[self.starts[i]:self.ends[i]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for a, b in zip(self.starts.tolist(), self.ends.tolist()):
            yield self.values[a:b]

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def take(self, rows: np.ndarray) -> RaggedIds:
        """The rows at ``rows`` (a boolean mask or indices), in that order."""
        return RaggedIds(self.values, self.starts[rows], self.ends[rows])

    def trim(self, head: int = 0, tail: int = 0) -> RaggedIds:
        """Every row without its first ``head`` and last ``tail`` ids (``row[head:len - tail]``)."""
        starts = np.minimum(self.starts + head, self.ends)
        return RaggedIds(self.values, starts, np.maximum(self.ends - tail, starts))

    def right_aligned(self, width: int, offset: int = 0, dtype: type = np.int64) -> np.ndarray:
        """``(len, width)`` of ``dtype``: each row's last ``width`` ids plus ``offset`` at the right,
        0 at the left where a row is shorter (SASRec's left-padded, shifted input)."""
        n = np.minimum(self.lengths, width)
        out = np.zeros((len(self), width), dtype=dtype)
        row = np.repeat(np.arange(len(self)), n)
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        out[row, width - n[row] + within] = self.values[np.repeat(self.ends - n, n) + within] + offset
        return out


@dataclass(frozen=True)
class SplitRows:
    """The rows of one held-out split: user ``i`` has ``histories[i]`` (oldest first, cut to
    ``max_len``: a model's input) and ``targets[i]``; ``seen[i]`` is everything before the target
    (uncut: what history exclusion masks; None where a caller built rows without it)."""

    split: str
    user_ids: np.ndarray
    histories: RaggedIds
    targets: np.ndarray
    seen: RaggedIds | None = None

    def __post_init__(self) -> None:  # callers may pass plain lists of ids
        object.__setattr__(self, "histories", RaggedIds.from_lists(self.histories))
        if self.seen is not None:
            object.__setattr__(self, "seen", RaggedIds.from_lists(self.seen))

    def __len__(self) -> int:
        return len(self.user_ids)

    def restrict(self, user_ids: np.ndarray) -> SplitRows:
        """The rows of the users in ``user_ids`` (order kept): every system scored on one sample."""
        keep = np.isin(self.user_ids, user_ids)
        seen = None if self.seen is None else self.seen.take(keep)
        return SplitRows(self.split, self.user_ids[keep], self.histories.take(keep), self.targets[keep], seen)


def read_split(sequences: pa.Table, bounds: pa.Table, split: str, max_len: int) -> SplitRows:
    """The ``valid`` or ``test`` rows of ``sequences/`` under ``splits/`` (one per user holding
    that target), each with ``seen``: the whole history before the target."""
    if split not in ("valid", "test"):
        raise EvaluationError(f"split must be 'valid' or 'test', got {split!r}")
    missing = {"user_id", "history"} - set(sequences.column_names)
    if missing:
        raise EvaluationError(f"sequences/ table lacks column(s) {sorted(missing)}")
    try:
        rows = split_rows(sequences, bounds, max_len, (split,))
        before = history_before(sequences, bounds, split)  # the same users, in the same order
    except ValueError as err:
        raise EvaluationError(str(err)) from err
    user_ids = rows.column("user_id").to_numpy()
    uniq, counts = np.unique(user_ids, return_counts=True)
    if len(uniq) != len(user_ids):
        raise EvaluationError(f"sequences/ has {counts.max()} rows for user_id {int(uniq[counts > 1][0])}; "
                              "expected one")
    return SplitRows(split, user_ids.astype(np.int64), RaggedIds.from_arrow(rows.column("history")),
                     rows.column("target").to_numpy().astype(np.int64),
                     RaggedIds.from_arrow(before.column("history")))


def rankings_from_precache(
    precache: pa.Table, user_ids: Sequence[int], min_k: int
) -> tuple[list[list[int]], int]:
    """Per-user ranked items from a ``precache/`` table, in the order of ``user_ids``.

    Returns the rankings and how many of ``user_ids`` the precache lacks (their ranking is
    empty: a miss). A precache list shorter than ``min_k`` (the largest metric cut-off) for a
    user with a full list elsewhere would understate HR@K, so the manifest K must cover ``min_k``;
    individual short lists are allowed (a trie can hold fewer valid items than K).
    """
    for col in ("user_id", "items"):
        if col not in precache.column_names:
            raise EvaluationError(f"precache/ table lacks column {col!r}")
    cached_users = precache.column("user_id").to_pylist()
    cached_items = precache.column("items").to_pylist()
    by_user: dict[int, list[int]] = {}
    for row, (u, items) in enumerate(zip(cached_users, cached_items)):
        if u is None:
            raise EvaluationError(f"precache/ row {row} has a null user_id")
        if u in by_user:
            raise EvaluationError(f"precache/ has more than one row for user_id {u}")
        by_user[int(u)] = [int(i) for i in (items or [])]
    longest = max((len(v) for v in by_user.values()), default=0)
    if by_user and longest < min_k:
        raise EvaluationError(
            f"precache/ keeps at most {longest} items per user but metrics need K={min_k}; "
            f"re-run precache with precache.top_k >= {min_k} or lower evaluate.ks"
        )
    rankings = [by_user.get(int(u), []) for u in user_ids]
    missing = sum(1 for u in user_ids if int(u) not in by_user)
    return rankings, missing


def evaluate_rankings(
    rankings: Sequence[Sequence[int]] | np.ndarray, rows: SplitRows, ks: Sequence[int]
) -> dict[str, float]:
    """HR@K / NDCG@K of rankings aligned with ``rows`` (one ranking per row, best first)."""
    if len(rankings) != len(rows):
        raise EvaluationError(f"{len(rankings)} rankings for {len(rows)} {rows.split} users")
    return ranking_metrics(rankings, rows.targets.tolist(), ks)


def history_exclusions(rows: SplitRows, exclude_history: bool) -> RaggedIds | None:
    """The per-user items to mask out of a full ranking when configured: everything before the
    target (:mod:`semconv.protocol`, "History exclusion"), as the precache excludes it."""
    if not exclude_history:
        return None
    if rows.seen is None:
        raise EvaluationError(f"{rows.split} rows carry no whole histories (seen): read them with read_split")
    return rows.seen

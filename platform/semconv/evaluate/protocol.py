"""Scoring under the protocol: split rows, rankings per user, HR@K / NDCG@K.

Every system (ours from ``precache/``, and each baseline) is scored by the same code: a ranking
(best first) per evaluated user, aligned with that user's held-out target, fed to
:func:`semconv.metrics.ranking_metrics`. A user a system has no ranking for counts as a miss
(an empty ranking), so no system looks better by dropping hard users. The rules themselves
(held-out items, history exclusion) live in :mod:`semconv.protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.metrics import ranking_metrics
from semconv.protocol import SPLITS, history_before


class EvaluationError(ValueError):
    """Evaluation inputs that do not fit the protocol (bad split rows, short or duplicate rankings)."""


@dataclass(frozen=True)
class SplitRows:
    """The rows of one split: user ``i`` has ``histories[i]`` (oldest first, cut to ``max_len``:
    a model's input) and ``targets[i]``; ``seen[i]`` is everything before the target (uncut: what
    history exclusion masks; None when read without ``sequences/``)."""

    split: str
    user_ids: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray
    seen: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    def restrict(self, user_ids: np.ndarray) -> SplitRows:
        """The rows of the users in ``user_ids`` (order kept): every system scored on one sample."""
        keep = np.isin(self.user_ids, user_ids)
        seen = None if self.seen is None else [h for h, k in zip(self.seen, keep) if k]
        return SplitRows(self.split, self.user_ids[keep],
                         [h for h, k in zip(self.histories, keep) if k], self.targets[keep], seen)


def split_rows(splits: pa.Table, split: str, sequences: pa.Table | None = None) -> SplitRows:
    """The ``split`` rows of a ``splits/`` table; valid and test must have one row per user.

    With ``sequences`` (``sequences/``: ``user_id``, ``history``) valid and test rows also get
    ``seen``, each user's whole history before the target (:func:`semconv.protocol.history_before`).
    """
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {SPLITS}, got {split!r}")
    missing = {"split", "user_id", "history", "target"} - set(splits.column_names)
    if missing:
        raise EvaluationError(f"splits/ table lacks column(s) {sorted(missing)}")
    rows = splits.filter(pc.equal(splits.column("split"), split))
    user_ids = np.asarray(rows.column("user_id").to_pylist(), dtype=np.int64)
    targets = rows.column("target").to_pylist()
    if any(t is None for t in targets):
        raise EvaluationError(f"splits/ {split} row {targets.index(None)} has a null target")
    histories = [np.asarray(h or [], dtype=np.int64) for h in rows.column("history").to_pylist()]
    if split != "train":
        uniq, counts = np.unique(user_ids, return_counts=True)
        if len(uniq) != len(user_ids):
            dup = int(uniq[counts > 1][0])
            raise EvaluationError(f"splits/ has {counts.max()} {split} rows for user_id {dup}; expected one")
    seen = None
    if sequences is not None and split != "train":
        before = history_before(sequences, split)
        by_user = dict(zip(before.column("user_id").to_pylist(), before.column("history").to_pylist()))
        lost = [int(u) for u in user_ids if int(u) not in by_user]
        if lost:
            raise EvaluationError(f"sequences/ has no {split} target for user_id {lost[0]} of splits/ "
                                  f"({len(lost)} such users): rerun the prepare stage")
        seen = [np.asarray(by_user[int(u)], dtype=np.int64) for u in user_ids]
    return SplitRows(split, user_ids, histories, np.asarray(targets, dtype=np.int64), seen)


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


def history_exclusions(rows: SplitRows, exclude_history: bool) -> list[np.ndarray] | None:
    """The per-user items to mask out of a full ranking when configured: everything before the
    target (:mod:`semconv.protocol`, "History exclusion"), as the precache excludes it."""
    if not exclude_history:
        return None
    if rows.seen is None:
        raise EvaluationError(f"{rows.split} rows were read without sequences/, so their whole histories "
                              "are unknown: pass sequences to split_rows")
    return list(rows.seen)

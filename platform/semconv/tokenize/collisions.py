"""Collision resolution: make every item's code tuple unique, deterministically.

Reference procedure (``resolve_collisions``):

1. Group items by their first ``L-1`` codes (their prefix). Inside a group, an item whose full
   tuple nobody else has keeps it. The colliding items (those sharing a full tuple) are
   re-assigned last-level codes among the codes still free in the group (their own collided
   codes included) by a **minimum-cost assignment** (Hungarian algorithm, ``min_cost_assignment``;
   scipy is not a dependency) with cost ``||r_L - C_L[k]||^2``: the total extra quantization error
   is the least possible, and one item of each collided tuple keeps it when that is cheapest.
2. Fallback when a group has more colliding items than free last-level codes (and for L = 1):
   the items the assignment could not place (the most expensive ones) take, in item order, the
   nearest *free* full tuple found by a beam search over all levels (``nearest_free_tuple``),
   so L stays fixed and no extra disambiguation level is needed.

Everything is ordered by item index and ties go to the lower index, so the result is a pure
function of (embeddings, codebooks).

Scale (a million items and more): tuples are compared as one fixed-width key per row
(``tuple_keys``), items are sorted by prefix once and the groups with a collision visited as
contiguous runs of that order, the last-level residual is computed for the colliding items only,
and the fallback's "taken" set is a sorted key array searched by bisection (``TakenTuples``)
rather than a Python set of every item's tuple. Each step is ``O(n log n)`` time and ``O(n)``
small integers of memory; each group's assignment is at most ``K x K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semconv.codes import tuple_keys
from semconv.tokenize.assign import level_inputs


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """Columns (distinct) for each row of an ``(n, m)`` cost matrix, ``n <= m``, minimising the sum.

    Shortest-augmenting-path Hungarian algorithm with potentials, ``O(n^2 m)``, vectorised over
    columns; deterministic (first minimum wins). Two shortcuts return the only optimum at once
    when there is exactly one (so the result is the algorithm's): every row's strict cheapest
    column when no two rows share it, and for two rows that share it, the better of "row 0 keeps
    it, row 1 takes its second" and the converse. Most prefix groups of a large catalogue are two
    items on one tuple: ~0.6 ms of Python saved each (tested against the full algorithm).
    """
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n > m:
        raise ValueError(f"min_cost_assignment needs rows <= columns, got {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix has NaN or infinite entries")
    if n and m > 1:
        best = cost.argmin(1)
        two = np.partition(cost, 1, axis=1)
        if (two[:, 0] < two[:, 1]).all() and len(np.unique(best)) == n:
            return best.astype(np.int64)
        if n == 2 and best[0] == best[1] and (two[:, 0] < two[:, 1]).all():
            second = np.where(np.arange(m) == best[0], np.inf, cost).argmin(1)
            third = np.partition(cost, 2, axis=1)[:, 2] if m > 2 else np.full(2, np.inf)
            keep0, keep1 = two[0, 0] + two[1, 1], two[0, 1] + two[1, 0]  # who keeps the shared column
            if (two[:, 1] < third).all() and keep0 != keep1:
                return np.array([best[0], second[1]] if keep0 < keep1 else [second[0], best[1]], np.int64)
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row (1-based) matched to column j; 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used
            free[0] = False
            cur = cost[i0 - 1] - u[i0] - v[1:]
            cols = np.flatnonzero(free[1:] & (cur < minv[1:])) + 1
            minv[cols] = cur[cols - 1]
            way[cols] = j0
            cand = np.where(free, minv, np.inf)
            j1 = int(np.argmin(cand))
            delta = cand[j1]
            u[p[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    out = np.empty(n, dtype=np.int64)
    for j in range(1, m + 1):
        if p[j]:
            out[p[j] - 1] = j - 1
    return out


def _beam(z: np.ndarray, books: np.ndarray, width: int) -> np.ndarray:
    """Full code tuples ``(m, L)`` of the ``width``-wide beam, in increasing error (ties: lexical)."""
    L = books.shape[0]
    paths = np.zeros((1, 0), dtype=np.int64)
    res = np.asarray(z, dtype=np.float64)[None, :]
    for level in range(L):
        d = ((res[:, None, :] - books[level][None, :, :]) ** 2).sum(-1)  # (B, K)
        B, K = d.shape
        tuples = np.concatenate([np.repeat(paths, K, 0), np.tile(np.arange(K), B)[:, None]], 1)
        flat = d.ravel()
        keys = [tuples[:, j] for j in range(tuples.shape[1] - 1, -1, -1)] + [flat]
        order = np.lexsort(keys)  # by error, then by tuple
        if level < L - 1:
            order = order[:width]
        paths = tuples[order]
        res = (res[:, None, :] - books[level][None, :, :]).reshape(B * K, -1)[order]
    return paths


def nearest_free_tuple(
    z: np.ndarray, codebooks: np.ndarray, taken: set[tuple[int, ...]] | TakenTuples,
    widths=(8, 64, 512, 4096),
) -> tuple[int, ...]:
    """The lowest-error full code tuple not in ``taken``, by beam search widened until one is free.

    The last width keeps every prefix when ``K^(L-1)`` is small enough, so a free tuple is found
    whenever one exists in that case.
    """
    L, K, _ = codebooks.shape
    books = codebooks.astype(np.float64)
    for width in widths:
        for row in _beam(z, books, width):
            t = tuple(int(c) for c in row)
            if t not in taken:
                return t
        if width >= K ** (L - 1):
            break
    raise RuntimeError(
        f"no free code tuple found for an item (L={L}, K={K}) with beam width {widths[-1]}; "
        "increase tokenize.levels or tokenize.codes_per_level"
    )


@dataclass
class Resolution:
    """Unique codes ``(n, L)`` and which items moved: by the assignment, and by the fallback."""

    codes: np.ndarray
    reassigned: np.ndarray
    fallback: np.ndarray


class TakenTuples:
    """The code tuples already taken: a sorted key array (searched by bisection) plus the tuples
    added since. ``t in taken`` and ``taken.add(t)`` take tuples, like a set."""

    def __init__(self, codes: np.ndarray):
        self.keys = np.sort(tuple_keys(codes))
        self.added: set[tuple[int, ...]] = set()

    def __contains__(self, t: tuple[int, ...]) -> bool:
        if t in self.added:
            return True
        key = tuple_keys(np.asarray([t]))[0]
        i = int(np.searchsorted(self.keys, key))
        return i < len(self.keys) and self.keys[i] == key

    def add(self, t: tuple[int, ...]) -> None:
        self.added.add(t)


def resolve_collisions(z: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> Resolution:
    """Unique code tuples for every item (see the module docstring for the procedure)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, L = codes.shape
    K = codebooks.shape[1]
    if n > K**L:
        raise ValueError(f"{n} items cannot have unique codes with only K^L = {K}^{L} tuples")
    out = codes.copy()
    _, inverse, counts = np.unique(tuple_keys(codes), return_inverse=True, return_counts=True)
    colliding = counts[inverse] > 1
    del inverse, counts
    if not colliding.any():
        return Resolution(out, np.empty(0, np.int64), np.empty(0, np.int64))
    # the last-level residual of the colliding items only (the only ones that move)
    movers_all = np.flatnonzero(colliding)
    r_last = level_inputs(z[movers_all], codebooks, codes[movers_all], L - 1).astype(np.float64)
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[movers_all] = np.arange(len(movers_all))
    book = codebooks[L - 1].astype(np.float64)
    if L > 1:
        group = np.unique(tuple_keys(codes[:, : L - 1]), return_inverse=True)[1]
    else:
        group = np.zeros(n, dtype=np.int64)
    hot = np.zeros(int(group.max()) + 1, dtype=bool)
    hot[group[colliding]] = True
    members_all = np.flatnonzero(hot[group])  # items of groups with a collision, by item index
    members_all = members_all[np.argsort(group[members_all], kind="stable")]  # grouped, item order kept
    bounds = np.flatnonzero(np.diff(group[members_all])) + 1
    del group, hot
    overflow: list[int] = []
    for members in np.split(members_all, bounds):
        movers = members[colliding[members]]
        free_mask = np.ones(K, dtype=bool)
        free_mask[codes[members[~colliding[members]], L - 1]] = False
        free = np.flatnonzero(free_mask)
        cost = ((r_last[row_of[movers]][:, None, :] - book[free][None, :, :]) ** 2).sum(-1)
        if len(movers) <= len(free):
            out[movers, L - 1] = free[min_cost_assignment(cost)]
        else:  # more movers than codes: the cheapest set of movers gets the codes
            placed_col = min_cost_assignment(cost.T)  # for each free code, a mover
            placed = np.zeros(len(movers), dtype=bool)
            placed[placed_col] = True
            out[movers[placed_col], L - 1] = free
            overflow.extend(int(i) for i in movers[~placed])
    overflow.sort()
    if overflow:
        keep = np.ones(n, dtype=bool)
        keep[overflow] = False
        taken = TakenTuples(out[keep])
        for i in overflow:
            t = nearest_free_tuple(z[i], codebooks, taken)
            out[i] = t
            taken.add(t)
    moved = np.flatnonzero((out != codes).any(1))
    return Resolution(out, moved, np.asarray(overflow, dtype=np.int64))

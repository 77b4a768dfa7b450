"""Behaviour embeddings for new items, from what is known about them.

In order of preference, per item:

1. ``supplied``: the delta file's ``embedding`` column (the user's own recommender's vector).
2. ``fold_in``: the item has interactions in the delta. Each of its users is summarised by the
   mean behaviour embedding of the (already embedded) items in their history; the item's feature
   is the mean over its users. A ridge map learned on the existing items (feature computed the
   same way from their own users, the item itself left out) takes the feature to the behaviour
   space, so no CF retraining is needed.
3. ``text``: no interactions. The mean behaviour vector of the ``refresh.text_neighbours`` existing
   items nearest to the item's LLM text embedding (``item_text_emb/``, the embed stage's recipe),
   by cosine (:func:`neighbour_map`; a linear map did no better than chance on the demo).

Both maps are measured before use on held-back existing items (``refresh.holdout``): the share whose
*first-level* code from the mapped embedding equals the code from their real embedding, next to
the share of the most common first-level code (what a constant guess would get).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """``W`` (d_in + 1, d_out) minimising ``||[x 1] W - y||^2 + lam ||W||^2`` (bias not penalised)."""
    xb = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
    reg = lam * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y.astype(np.float64))


def apply_ridge(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) @ w[:-1] + w[-1]).astype(np.float32)


def user_profiles(offsets: np.ndarray, flat: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user (histories as list offsets + flat item ids): the sum of the embeddings of their
    embedded items (ids < len(emb)), and how many there are."""
    n_users = len(offsets) - 1
    owner = np.repeat(np.arange(n_users), np.diff(offsets))
    ok = flat < len(emb)
    sums = np.zeros((n_users, emb.shape[1]), np.float64)
    np.add.at(sums, owner[ok], emb[flat[ok]])
    return sums, np.bincount(owner[ok], minlength=n_users)


def fold_in_features(pair_users: np.ndarray, pair_items: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                     num_items: int, emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean, over each item's users, of the user's mean item embedding without the item itself.

    ``pair_*``: one (user row, item index < num_items) per interaction. ``emb``: the items' own
    embeddings, subtracted from their users' sums (existing items); None for new items, which are
    in no sum. Returns ``(features (num_items, d), has)``, ``has`` False for items none of whose
    users has another embedded item.
    """
    own = emb[pair_items] if emb is not None else 0.0
    n_other = counts[pair_users] - (1 if emb is not None else 0)
    ok = n_other > 0
    profile = (sums[pair_users[ok]] - (own[ok] if emb is not None else 0.0)) / n_other[ok, None]
    feats = np.zeros((num_items, sums.shape[1]), np.float64)
    np.add.at(feats, pair_items[ok], profile)
    n = np.bincount(pair_items[ok], minlength=num_items)
    has = n > 0
    feats[has] /= n[has, None]
    return feats, has


@dataclass
class MapReport:
    """How well a learned map reproduces held-back items' first-level codes."""

    kind: str
    held_out: int
    first_level_agreement: float
    majority_baseline: float

    def as_dict(self) -> dict:
        return {"kind": self.kind, "held_out": self.held_out,
                "first_level_agreement": round(self.first_level_agreement, 4),
                "majority_baseline": round(self.majority_baseline, 4)}


def ridge_map(lam: float):
    """``fit(x, y) -> predict(x_new)``: a linear map with an L2 penalty (fold-in features)."""
    def fit(x, y):
        w = fit_ridge(x, y, lam)
        return lambda x_new: apply_ridge(w, x_new)
    return fit


def neighbour_map(k: int):
    """``fit(x, y) -> predict(x_new)``: the mean target of the ``k`` nearest rows by cosine.

    For text: on the demo a linear map from LLM text embeddings to LightGCN vectors reproduced
    held-back items' first-level codes no better than the most common code (2.5% vs 2.3%), the
    5 nearest items by text did 6.7% (``bench/RESULTS.md``)."""
    def fit(x, y):
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

        def predict(x_new):
            q = x_new / np.maximum(np.linalg.norm(x_new, axis=1, keepdims=True), 1e-12)
            nn = np.argsort(-(q @ xn.T), axis=1, kind="stable")[:, :k]
            return y[nn].mean(1).astype(np.float32)
        return predict
    return fit


def learn_map(kind: str, features: np.ndarray, targets: np.ndarray, usable: np.ndarray, first_code,
              holdout: float, fit, seed: int):
    """Fit on the usable items minus a held-back share, measure on it, then refit on all usable.

    ``fit(x, y) -> predict`` is :func:`ridge_map` or :func:`neighbour_map`;
    ``first_code(embeddings) -> (n,)`` gives the first-level code of behaviour embeddings.
    Returns ``(predict, report)``.
    """
    idx = np.flatnonzero(usable)
    if len(idx) < 10:
        raise ValueError(f"{kind} map: only {len(idx)} existing items to learn from")
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(idx, max(1, int(round(holdout * len(idx)))), replace=False))
    rest = np.setdiff1d(idx, held)
    real, mapped = first_code(targets[held]), first_code(fit(features[rest], targets[rest])(features[held]))
    counts = np.bincount(real)
    report = MapReport(kind, len(held), float((real == mapped).mean()), float(counts.max() / len(real)))
    return fit(features[idx], targets[idx]), report

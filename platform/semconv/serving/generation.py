"""Online generation, the pure part: check a posted history, rank many at once, describe the answer.

``POST /v1/recommendations`` answers a history the precache does not hold from the fine-tuned
model itself. Requests are checked here against the catalog and the model's limits (so a bad one
is a 422 naming the field, before any model time is spent), queued requests are ranked together
by :func:`rank_queries` (one batched constrained beam search per beam width, through
:meth:`semconv.inference.ranker.GenerativeRanker.rank`, the precache's own decoding), and the
answer has the lookup's shape. No Ray or HTTP here: the Serve deployment in
``serve_app/generation.py`` wraps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from semconv.serving.catalog import ItemCatalog, named_ids

DEFAULT_K = 10


class GenerationInputError(ValueError):
    """A request the model cannot answer (unknown items, k or num_beams out of range)."""

    def __init__(self, loc: list, msg: str):
        super().__init__(msg)
        self.loc, self.msg = loc, msg


@dataclass(frozen=True)
class GenerationLimits:
    """What one model deployment decodes with and allows (sent to the ingress once)."""

    model_version: str
    num_beams: int  # the precache's beam width: the default
    max_num_beams: int  # the most a request may ask for
    top_k: int  # the precache's K
    max_len: int | None  # prompts keep the last max_len items
    exclude_history: bool
    dtype: str


@dataclass(frozen=True)
class Query:
    """One checked request: item ids oldest first (all of them, the prompt keeps the last
    ``max_len``; exclusion uses all), how many items, which beam width."""

    history: tuple[int, ...]
    k: int
    num_beams: int


def resolve_history(
    catalog: ItemCatalog,
    history: Sequence[int] | None,
    source_history: Sequence[str] | None,
) -> tuple[int, ...]:
    """Item ids of the posted history; every one must be in the catalog with semantic codes.

    ``source_history`` is mapped by the catalogue's source-id index (checked at load); raises
    :class:`GenerationInputError` naming every unknown id.
    """
    if (history is None) == (source_history is None):
        raise GenerationInputError(["body"], "give exactly one of 'history' (item ids) or 'source_history' "
                                             "(the dataset's item ids)")
    if source_history is not None:
        ids = [catalog.by_source.lookup(s) for s in source_history]
        unknown = [s for s, i in zip(source_history, ids) if i is None]
        if unknown:
            raise GenerationInputError(["body", "source_history"],
                                       f"unknown source item ids (not in items/): {named_ids(unknown)}")
    ids = np.asarray(history if source_history is None else ids, dtype=np.int64)
    rows = catalog.rows(ids)
    known = rows >= 0
    if catalog.levels and known.any():
        known[known] = (catalog.codes[rows[known]] >= 0).all(axis=1)
    elif not catalog.levels:
        known[:] = False
    if not known.all():
        bad = list(dict.fromkeys(int(i) for i in ids[~known]))
        raise GenerationInputError(["body", "history" if source_history is None else "source_history"],
                                   f"unknown item ids (not in the catalog or without semantic codes): {named_ids(bad)}")
    return tuple(int(i) for i in ids)


def check_query(history: tuple[int, ...], k: int | None, num_beams: int | None, limits: GenerationLimits,
                known_items: np.ndarray | None = None) -> Query:
    """The query for a resolved history: ``num_beams`` defaults to the precache's and may not pass
    ``max_num_beams``; ``k`` defaults to min(10, beam width) and may not pass the beam width;
    with ``known_items`` (the model's item ids, sorted) every history item must be one."""
    beams = limits.num_beams if num_beams is None else num_beams
    if not 1 <= beams <= limits.max_num_beams:
        raise GenerationInputError(["body", "num_beams"],
                                   f"num_beams must be between 1 and {limits.max_num_beams}, got {beams}")
    k = min(DEFAULT_K, beams) if k is None else k
    if not 1 <= k <= beams:
        raise GenerationInputError(["body", "k"], f"k must be between 1 and the beam width {beams}, got {k}")
    if known_items is not None:
        ids = np.asarray(history, dtype=np.int64)
        pos = np.minimum(np.searchsorted(known_items, ids), len(known_items) - 1)
        unknown = ids[known_items[pos] != ids]
        if unknown.size:
            raise GenerationInputError(["body", "history"], "item ids without semantic codes in this model's "
                                       f"item_codes/: {named_ids(list(dict.fromkeys(unknown.tolist())))}")
    return Query(history, k, beams)


def rank_queries(ranker, queries: Sequence[Query], exclude_history: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(items, scores)`` per query, best first, at most ``k`` each (fewer when fewer are reachable).

    Queries sharing a beam width run as one batched beam search with K = the largest k asked (at
    least the ranker's K, as the precache decodes) and are cut to their own k afterwards: the
    first k of a top-K are the top-k, so a query's answer does not depend on its batch mates.
    """
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
    for beams in sorted({q.num_beams for q in queries}):
        idx = [i for i, q in enumerate(queries) if q.num_beams == beams]
        top_k = min(beams, max(ranker.top_k, *(queries[i].k for i in idx)))
        items, scores = ranker.rank([queries[i].history for i in idx], exclude_history,
                                    num_beams=beams, top_k=top_k)
        for row, i in enumerate(idx):
            keep = items[row] >= 0
            k = queries[i].k
            out[i] = items[row][keep][:k], scores[row][keep][:k]
    return out  # type: ignore[return-value]


def model_answer(query: Query, items: np.ndarray, scores: np.ndarray, limits: GenerationLimits) -> dict:
    """What the model deployment sends back for one query (plain values: it crosses a handle)."""
    used = len(query.history) if limits.max_len is None else min(limits.max_len, len(query.history))
    return {"k": query.k, "version": limits.model_version, "num_beams": query.num_beams, "history_used": used,
            "items": [int(i) for i in items], "scores": [float(s) for s in scores]}


def describe_answer(catalog: ItemCatalog, answer: dict) -> dict:
    """The response, in the lookup's shape: the model's answer with source ids and titles."""
    source_ids, titles = catalog.describe(np.asarray(answer["items"], dtype=np.int64))
    return {"k": answer["k"], "version": answer["version"], "fallback": False, "num_beams": answer["num_beams"],
            "history_used": answer["history_used"], "item_ids": answer["items"], "source_ids": source_ids,
            "titles": titles, "scores": answer["scores"]}

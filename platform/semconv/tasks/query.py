"""Query alignment: a user's query text -> the item's codes.

Sources (``tasks.query_source``):

- ``reviews``: every non-empty review in ``sequences/`` gives a row (review text, cut to
  ``max_words`` words -> that item's codes, with the reviewer's ``user_id``). Reviews of each
  user's held-out items (the valid and test targets, :func:`semconv.protocol.train_end`) are left
  out: training on them would leak held-out interactions.
- ``metadata``: data without reviews (the demo) gets one query per item built from its metadata,
  the way a shopper would type it: category-path leaf, brand and the title's most specific
  words (rarest across titles, brand and leaf words removed), e.g.
  ``"capacitors from Supco with relay, hard, torque"``. Parts that are missing are left out.
- ``auto``: reviews when ``sequences/`` has a ``reviews`` column, plus metadata queries for the
  items that no usable review covers; metadata only otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.codes import item_tokens
from semconv.protocol import train_end
from semconv.tasks.inputs import TaskInputError, TaskInputs
from semconv.tasks.keywords import title_keywords, words
from semconv.tasks.text import clean_text, weighted_item_rows

_CATEGORY_SEP = re.compile(r"\s*(?:,|>|\|)\s*")


def category_leaf(categories: str | None) -> str:
    """The most specific category of a comma- (or '>' / '|') joined path."""
    parts = [p for p in _CATEGORY_SEP.split(categories or "") if p.strip()]
    return parts[-1].strip() if parts else ""


def metadata_query(leaf: str, brand: str, keywords: Sequence[str]) -> str:
    query = leaf.lower()
    if brand:
        query += f" from {brand}" if query else brand
    if keywords:
        query += (" with " if query else "") + ", ".join(keywords)
    return query


def metadata_queries(items: pa.Table, n_keywords: int) -> list[str]:
    """One query per item (in ``items`` order) from its category leaf, brand and title words."""
    n = items.num_rows
    brands = items.column("brand").to_pylist() if "brand" in items.column_names else [""] * n
    cats = items.column("categories").to_pylist() if "categories" in items.column_names else [""] * n
    brands = [(b or "").strip() for b in brands]
    leaves = [category_leaf(c) for c in cats]
    exclude = [words(b) + words(l) for b, l in zip(brands, leaves)]
    kws = title_keywords(items.column("title").to_pylist(), n_keywords, exclude)
    return [metadata_query(l, b, k) for l, b, k in zip(leaves, brands, kws)]


def review_queries(sequences: pa.Table, max_words: int) -> tuple[list[int], list[int], list[str]]:
    """(user_id, item_id, review) for every usable review (held-out positions left out)."""
    hist = sequences.column("history").combine_chunks()
    items = pc.list_flatten(hist).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(hist).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(hist).to_numpy(zero_copy_only=False)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    position = np.arange(len(items)) - offsets[parents]
    reviews = pc.list_flatten(sequences.column("reviews").combine_chunks()).to_pylist()
    users = sequences.column("user_id").to_numpy()
    out_u, out_i, out_r = [], [], []
    train_part = np.asarray([train_end(n) for n in lengths.tolist()], dtype=np.int64)
    for k in np.flatnonzero(position < train_part[parents]).tolist():
        text = clean_text(reviews[k], max_words)
        if text:
            out_u.append(int(users[parents[k]]))
            out_i.append(int(items[k]))
            out_r.append(text)
    return out_u, out_i, out_r


def resolve_source(source: str, sequences: pa.Table) -> str:
    has_reviews = "reviews" in sequences.column_names
    if source == "reviews" and not has_reviews:
        raise TaskInputError(
            "tasks.query_source='reviews' but sequences/ has no 'reviews' column; "
            "use query_source='metadata' (or 'auto')"
        )
    if source == "auto":
        return "reviews+metadata" if has_reviews else "metadata"
    return source


def query_rows(
    inputs: TaskInputs,
    source: str,
    templates: Sequence[str],
    weight: float,
    seed: int,
    max_words: int,
    n_keywords: int,
) -> tuple[pa.Table, dict[str, object]]:
    """``query2item`` rows and a summary (resolved source, base queries per source)."""
    resolved = resolve_source(source, inputs.sequences)
    tokens = [item_tokens(c) for c in inputs.codes]
    users: list[int | None] = []
    item_ids: list[int] = []
    texts: list[str] = []
    if resolved.startswith("reviews"):
        review_users, item_ids, texts = review_queries(inputs.sequences, max_words)
        users = list(review_users)
    n_reviews = len(texts)
    if "metadata" in resolved:
        covered = set(item_ids)
        queries = metadata_queries(inputs.items, n_keywords)
        for item, q in zip(inputs.items.column("item_id").to_pylist(), queries):
            if item not in covered and q:
                users.append(None)
                item_ids.append(item)
                texts.append(q)
    table = weighted_item_rows(
        "query2item", item_ids, [{"query": q} for q in texts], [tokens[i] for i in item_ids],
        templates, weight, seed, user_ids=users,
    )
    summary = {"source": resolved, "review_queries": n_reviews, "metadata_queries": len(texts) - n_reviews}
    return table, summary

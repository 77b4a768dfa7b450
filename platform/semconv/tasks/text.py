"""Text alignment: item codes <-> title and item codes <-> description, both directions.

One row per item and direction. Descriptions that carry no text (empty, or only punctuation
such as ".") are skipped; long ones are cut to ``max_words`` words so a row fits the
fine-tuning sequence length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from semconv.codes import item_tokens
from semconv.tasks.rows import Rows
from semconv.tasks.sampling import repeat_counts
from semconv.tasks.templates import render, template_choice

_HAS_WORD = re.compile(r"\w")


def clean_text(text: str | None, max_words: int) -> str:
    """Whitespace-normalised text cut to ``max_words`` words; "" when it has no word at all."""
    if not text or not _HAS_WORD.search(text):
        return ""
    return " ".join(text.split()[:max_words])


def weighted_item_rows(
    task: str,
    item_ids: Sequence[int],
    prompt_fields: Sequence[dict[str, object]],
    labels: Sequence[str],
    templates: Sequence[str],
    weight: float,
    seed: int,
    user_ids: Sequence[int | None] | None = None,
    keys: Sequence[int] | None = None,
) -> pa.Table:
    """Rows of one item-level task with weights applied: base row ``i`` appears
    ``repeat_counts(...)[i]`` times, each copy with the next paraphrase."""
    n = len(labels)
    keys_np = np.asarray(keys if keys is not None else range(n), dtype=np.int64)
    repeats = repeat_counts(n, weight, seed, task)
    start = template_choice(seed, task, keys_np, 0, len(templates))
    out = Rows()
    for i in range(n):
        for r in range(int(repeats[i])):
            prompt = render(templates[(start[i] + r) % len(templates)], **prompt_fields[i])
            out.add(task, prompt, labels[i], "train", None if user_ids is None else user_ids[i], item_ids[i])
    return out.table()


def text_rows(
    items: pa.Table,
    codes: np.ndarray,
    templates: Mapping[str, Sequence[str]],
    weights: Mapping[str, float],
    seed: int,
    max_words: int,
) -> dict[str, pa.Table]:
    """Task name -> rows, for the four text-alignment tasks."""
    ids = items.column("item_id").to_pylist()
    tokens = [item_tokens(codes[i]) for i in ids]
    titles = [clean_text(t, max_words) for t in items.column("title").to_pylist()]
    descs = [clean_text(d, max_words) for d in items.column("description").to_pylist()]
    out = {}
    for field, text in (("title", titles), ("description", descs)):
        keep = [i for i, t in enumerate(text) if t]
        kept_ids = [ids[i] for i in keep]
        out[f"item2{field}"] = weighted_item_rows(
            f"item2{field}", kept_ids, [{"item": tokens[i]} for i in keep], [text[i] for i in keep],
            templates[f"item2{field}"], weights.get(f"item2{field}", 1.0), seed, keys=kept_ids,
        )
        out[f"{field}2item"] = weighted_item_rows(
            f"{field}2item", kept_ids, [{field: text[i]} for i in keep], [tokens[i] for i in keep],
            templates[f"{field}2item"], weights.get(f"{field}2item", 1.0), seed, keys=kept_ids,
        )
    return out

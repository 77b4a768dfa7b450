"""TS-Align: token-level alignment of each single code token with its item cluster's keywords.

Item-level tasks teach whole code tuples; this task teaches what one token means on its own,
both ways: token -> the shared keywords of the items carrying it (``token2keywords``) and
keywords -> token (``keywords2token``). Keywords come from ``keywords.code_keywords``, the same
lists SA-Init writes to ``sft/sa_init.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

from semconv.codes import token_code
from semconv.tasks.text import weighted_item_rows


def ts_align_rows(
    keywords: Mapping[str, Sequence[str]],
    templates: Mapping[str, Sequence[str]],
    weights: Mapping[str, float],
    seed: int,
) -> dict[str, pa.Table]:
    tokens = sorted((t for t, kw in keywords.items() if kw), key=token_code)
    keys = [level * 1_000_000 + code for level, code in map(token_code, tokens)]
    levels = [token_code(t)[0] + 1 for t in tokens]
    joined = [", ".join(keywords[t]) for t in tokens]
    none = [None] * len(tokens)
    return {
        "token2keywords": weighted_item_rows(
            "token2keywords", none, [{"token": t, "level": l} for t, l in zip(tokens, levels)],
            joined, templates["token2keywords"], weights.get("token2keywords", 1.0), seed, keys=keys,
        ),
        "keywords2token": weighted_item_rows(
            "keywords2token", none, [{"keywords": k, "level": l} for k, l in zip(joined, levels)],
            tokens, templates["keywords2token"], weights.get("keywords2token", 1.0), seed, keys=keys,
        ),
    }

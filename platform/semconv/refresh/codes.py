"""Codes for new items from the saved codebook, unique against every existing code.

The rule (that of cold start, :meth:`CodebookTokenizer.tokenize_unique`): a new item takes the
nearest-code tuple of its behaviour embedding when no item holds it; when an existing item (or a
new item earlier in the delta file) already holds it, the new item takes the nearest *free* tuple
found by beam search over the residual levels. Existing items never change codes: the fine-tuned
LLM and every cached list know them. The codebook is not retrained.
"""

from __future__ import annotations

import numpy as np

from semconv.tokenize.cold_start import CodebookTokenizer
from semconv.tokenize.codebook import ResidualCodebook


def load_tokenizer(codebook_dir, item_ids: np.ndarray, codes: np.ndarray) -> CodebookTokenizer:
    return CodebookTokenizer(ResidualCodebook.from_pretrained(codebook_dir), (item_ids, codes))


def assign_new_codes(tokenizer: CodebookTokenizer, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes (m, L), collides_with (m,))`` for new items in delta order (see module doc)."""
    if len(embeddings) == 0:
        return np.zeros((0, tokenizer.levels), np.int64), np.zeros(0, np.int64)
    return tokenizer.tokenize_unique(np.asarray(embeddings, np.float32))

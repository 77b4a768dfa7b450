"""Cold start: codes for new items from a saved codebook, without retraining.

``CodebookTokenizer.from_pretrained(dir)`` loads the codebook and builds its faiss indexes once;
calling it on a batch of behaviour embeddings returns each item's nearest-code tuple, computed by
the same function as batch assignment, so an existing item gets exactly its batch codes
*before* collision resolution (assignment is batch-size independent, see ``assign``).

Collisions with existing items: the raw codes of a new item may equal an existing item's
tuple. Existing codes never change (the fine-tuned LLM and the precache know them), so with the
code table loaded (``item_codes=``), :meth:`CodebookTokenizer.tokenize_unique` returns, for each
new item, ``collides_with`` (the existing item id that holds its raw tuple, or -1) and a unique
tuple: its raw tuple when free, otherwise the nearest free tuple by the same beam search as the
batch fallback (earlier rows of the same call count as taken). ``texts`` are accepted so callers
can pass what they have; assignment uses the behaviour embedding only (text enters through
training), so they are only checked for length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semconv.codes import read_item_codes
from semconv.tokenize.assign import assign_codes, level_indexes
from semconv.tokenize.codebook import ResidualCodebook
from semconv.tokenize.collisions import nearest_free_tuple
from semconv.tokenize.inputs import TokenizeInputError, check_matrix


class CodebookTokenizer:
    """A loaded codebook that tokenizes batches of items (load once, call many times)."""

    def __init__(
        self, codebook: ResidualCodebook, code_table: tuple[np.ndarray, np.ndarray] | None = None,
        use_gpu: bool = False,
    ):
        self.codebook = codebook.eval()
        self.books = codebook.codebook_vectors()
        self.dim = codebook.config.dim
        self.levels = codebook.config.levels
        self.use_gpu = use_gpu
        self._indexes = level_indexes(self.books, use_gpu)
        self._owner: dict[tuple[int, ...], int] = {}
        if code_table is not None:
            ids, codes = code_table
            if codes.shape[1] != self.levels:
                raise ValueError(f"code table has {codes.shape[1]} levels, codebook has {self.levels}")
            self._owner = {tuple(int(c) for c in row): int(i) for i, row in zip(ids, codes)}

    @classmethod
    def from_pretrained(
        cls, codebook_dir: str | Path, item_codes: str | Path | None = None, use_gpu: bool = False
    ) -> CodebookTokenizer:
        """Load ``codebook/`` (and optionally the ``item_codes/`` table for collision checks)."""
        table = read_item_codes(item_codes) if item_codes is not None else None
        return cls(ResidualCodebook.from_pretrained(codebook_dir), table, use_gpu)

    def _check(self, embeddings: np.ndarray, texts: Sequence[str] | None) -> np.ndarray:
        x = check_matrix("embeddings", embeddings, dim=self.dim)
        if texts is not None and len(texts) != len(x):
            raise TokenizeInputError(f"texts: {len(texts)} entries for {len(x)} embeddings")
        return x

    def __call__(self, embeddings: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """Raw (pre-resolution) codes ``(n, L)`` int64 of each item's behaviour embedding."""
        x = self._check(embeddings, texts)
        if len(x) == 0:
            return np.zeros((0, self.levels), dtype=np.int64)
        codes, _ = assign_codes(self.codebook.embed(x), self.books, self.use_gpu, self._indexes)
        return codes

    def collides_with(self, codes: np.ndarray) -> np.ndarray:
        """The existing item id holding each tuple, or -1 (needs the code table)."""
        return np.array([self._owner.get(tuple(int(c) for c in row), -1) for row in codes], np.int64)

    def tokenize_unique(
        self, embeddings: np.ndarray, texts: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, collides_with)``: codes unique against the code table and within the batch."""
        raw = self(embeddings, texts)
        clash = self.collides_with(raw)
        taken = set(self._owner)
        out = raw.copy()
        z = self.codebook.embed(self._check(embeddings, texts)) if len(raw) else None
        for i, row in enumerate(raw):
            t = tuple(int(c) for c in row)
            if t in taken:
                t = nearest_free_tuple(z[i], self.books, taken)
                out[i] = t
            taken.add(t)
        return out, clash

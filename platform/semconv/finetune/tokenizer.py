"""Code tokens in the LLM vocabulary: the L x K new tokens of Alignment Tokenization.

Each code token (``<a_12>``) must be exactly one id, or an item would cost a variable number of
decoding steps and the constrained beam search could not walk the code trie level by level.
Adding is idempotent: a tokenizer saved with the tokens and loaded again gets no duplicates.
"""

from __future__ import annotations

from typing import Any

from semconv.codes import all_code_tokens


class CodeTokenError(ValueError):
    """A code token that the tokenizer does not map to exactly one id."""


def add_code_tokens(tokenizer: Any, levels: int, codes_per_level: int) -> list[int]:
    """Add every code token once (idempotent) and return their ids, level-major.

    The tokens are added as special tokens (``special=True`` in ``AddedToken`` semantics) so the
    BPE never splits them and ``decode(..., skip_special_tokens=False)`` gives them back verbatim.
    """
    tokens = all_code_tokens(levels, codes_per_level)
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    check_code_tokens(tokenizer, tokens, ids)
    return list(ids)


def check_code_tokens(tokenizer: Any, tokens: list[str], ids: list[int]) -> None:
    """Every code token encodes to its own single id (no merges with neighbours)."""
    if len(set(ids)) != len(ids):
        raise CodeTokenError("code tokens share ids: the tokenizer's vocabulary is inconsistent")
    sample = "".join(tokens[:: max(1, len(tokens) // 8)])
    got = tokenizer(sample, add_special_tokens=False)["input_ids"]
    want = [ids[i] for i in range(0, len(tokens), max(1, len(tokens) // 8))]
    if got != want:
        raise CodeTokenError(f"code tokens are not single ids: {sample!r} encodes to {got}")

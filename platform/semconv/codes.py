"""Item code tokens: the L x K new vocabulary entries (``<a_12>``, ``<b_7>``, ...).

Level ``l`` uses the letter ``chr(ord('a') + l)``, so an item with codes ``(12, 7, 201, 3)`` is
written ``<a_12><b_7><c_201><d_3>``. Tasks, fine-tuning, inference and serving all go through
these helpers so the spelling lives in one place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_LEVELS = 26
_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def code_token(level: int, code: int) -> str:
    """The token string of ``code`` at ``level`` (0-based)."""
    if not 0 <= level < MAX_LEVELS:
        raise ValueError(f"level must be in [0, {MAX_LEVELS}), got {level}")
    if code < 0:
        raise ValueError(f"code must be >= 0, got {code}")
    return f"<{chr(ord('a') + level)}_{int(code)}>"


def all_code_tokens(levels: int, codes_per_level: int) -> list[str]:
    """Every code token, level-major: ``<a_0>..<a_{K-1}>, <b_0>, ...``."""
    return [code_token(l, c) for l in range(levels) for c in range(codes_per_level)]


def item_tokens(codes: Sequence[int]) -> str:
    """The concatenated tokens of one item's code tuple."""
    return "".join(code_token(l, int(c)) for l, c in enumerate(codes))


def code_tokens_in(text: str) -> set[tuple[int, int]]:
    """``(level, code)`` of every code token spelled anywhere in ``text`` (one regex scan)."""
    return {(ord(letter) - ord("a"), int(code)) for letter, code in _TOKEN.findall(text)}


def parse_item_tokens(text: str) -> tuple[int, ...]:
    """Inverse of :func:`item_tokens`; raises on anything that is not a well-formed code run."""
    matches = list(_TOKEN.finditer(text))
    if not matches or "".join(m.group(0) for m in matches) != text.strip():
        raise ValueError(f"not an item code string: {text!r}")
    codes = []
    for level, m in enumerate(matches):
        if ord(m.group(1)) - ord("a") != level:
            raise ValueError(f"code token {m.group(0)!r} at position {level} has the wrong level")
        codes.append(int(m.group(2)))
    return tuple(codes)

"""Item code tokens: the L x K new vocabulary entries (``<a_12>``, ``<b_7>``, ...).

Level ``l`` uses the letter ``chr(ord('a') + l)``, so an item with codes ``(12, 7, 201, 3)`` is
written ``<a_12><b_7><c_201><d_3>``. Tasks, fine-tuning, inference and serving all go through
these helpers so the spelling lives in one place; :func:`read_item_codes` is likewise the one
reader of the ``item_codes/`` artifact (``item_id`` + a fixed-size list ``codes`` per item), and
:func:`item_codes_table` the one shape it is written in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from semconv.artifacts import RunDir

MAX_LEVELS = 26
_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def level_letter(level: int) -> str:
    """The letter of a 0-based level in its tokens (``a`` for the first)."""
    if not 0 <= level < MAX_LEVELS:
        raise ValueError(f"level must be in [0, {MAX_LEVELS}), got {level}")
    return chr(ord("a") + level)


def code_token(level: int, code: int) -> str:
    """The token string of ``code`` at ``level`` (0-based)."""
    if code < 0:
        raise ValueError(f"code must be >= 0, got {code}")
    return f"<{level_letter(level)}_{int(code)}>"


def all_code_tokens(levels: int, codes_per_level: int) -> list[str]:
    """Every code token, level-major: ``<a_0>..<a_{K-1}>, <b_0>, ...``."""
    return [code_token(l, c) for l in range(levels) for c in range(codes_per_level)]


def item_tokens(codes: Sequence[int]) -> str:
    """The concatenated tokens of one item's code tuple."""
    return "".join(code_token(l, int(c)) for l, c in enumerate(codes))


def token_code(token: str) -> tuple[int, int]:
    """``(level, code)`` of one code token such as ``<b_7>`` (inverse of :func:`code_token`)."""
    m = _TOKEN.fullmatch(token)
    if m is None:
        raise ValueError(f"not a code token: {token!r}")
    return ord(m.group(1)) - ord("a"), int(m.group(2))


def code_tokens_in(text: str) -> set[tuple[int, int]]:
    """``(level, code)`` of every code token spelled anywhere in ``text`` (one regex scan)."""
    return {(ord(letter) - ord("a"), int(code)) for letter, code in _TOKEN.findall(text)}


def item_codes_table(item_ids: np.ndarray, codes: np.ndarray) -> pa.Table:
    """The ``item_codes/`` table: ``item_id`` int64, ``codes`` fixed_size_list<int16>[L]."""
    codes = np.asarray(codes)
    flat = pa.array(codes.astype(np.int16).ravel())
    return pa.table({"item_id": pa.array(np.asarray(item_ids), pa.int64()),
                     "codes": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1])})


def code_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids (N,), codes (N, L))`` int64 arrays of an ``item_codes/`` table."""
    missing = sorted({"item_id", "codes"} - set(table.column_names))
    if missing:
        raise ValueError(f"item_codes/ lacks column(s) {missing}; it has {table.column_names}")
    ids = table.column("item_id").to_numpy().astype(np.int64)
    col = table.column("codes").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        levels = col.type.list_size
    else:
        lengths = set(pc.list_value_length(col).to_numpy(zero_copy_only=False).tolist())
        if len(lengths) > 1:
            raise ValueError(f"item_codes/: code tuples have different lengths {sorted(lengths)}")
        levels = lengths.pop() if lengths else 0
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
    return ids, flat.reshape(len(ids), levels)


def tuple_keys(codes: np.ndarray) -> np.ndarray:
    """One fixed-width key per row of ``codes`` ``(n, L)``: equal keys <=> equal tuples, sortable
    (byte order, not numeric order) and about 2.5x faster to ``np.unique`` than ``axis=0``."""
    c = np.ascontiguousarray(codes, dtype=np.int64)
    return c.view(np.dtype((np.void, 8 * c.shape[1]))).ravel()


def read_item_codes(source: RunDir | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`code_arrays` of the ``item_codes/`` artifact of a run directory (a ``RunDir``) or
    of a local artifact directory."""
    if not isinstance(source, (str, Path)):
        return code_arrays(source.read_table("item_codes", columns=["item_id", "codes"]))
    files = sorted(Path(source).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{source}: no Parquet files (not an item_codes artifact)")
    return code_arrays(pa.concat_tables(pq.read_table(f, columns=["item_id", "codes"]) for f in files))

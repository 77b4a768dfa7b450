"""The item catalog served next to the precache: ids, titles, source ids and semantic codes.

Held as Arrow/numpy columns sorted by ``item_id`` (no per-item Python objects), so a request for
K items is one ``searchsorted`` and one ``take``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.codes import code_arrays, item_tokens


class CatalogError(ValueError):
    """An items / item_codes / sequences table that cannot be served."""


MAX_NAMED = 20  # an error names at most this many ids


def named_ids(values) -> str:
    """Up to :data:`MAX_NAMED` values for an error message, and how many more."""
    shown = ", ".join(repr(v) for v in values[:MAX_NAMED])
    return shown + (f" and {len(values) - MAX_NAMED} more" if len(values) > MAX_NAMED else "")


def _sorted_unique(ids: np.ndarray, what: str) -> np.ndarray:
    """The order that sorts ``ids``; a :class:`CatalogError` naming every duplicated id."""
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.unique(s[1:][s[1:] == s[:-1]])
    if dup.size:
        named = [v.decode(errors="replace") if isinstance(v, bytes) else v.item() for v in dup]
        raise CatalogError(f"{what}: {len(named)} id(s) appear more than once: {named_ids(named)}; "
                           "make them unique upstream and republish")
    return order


@dataclass(frozen=True, eq=False)
class ItemCatalog:
    item_ids: np.ndarray  # (n,) int64, increasing
    source_ids: pa.Array  # string, aligned with item_ids
    titles: pa.Array  # string, aligned with item_ids
    codes: np.ndarray  # (n, L) int16, -1 where an item has no codes
    by_source: SourceIdIndex  # items/ source_id -> item_id, checked unique at load

    @classmethod
    def from_tables(cls, items: pa.Table, item_codes: pa.Table | None) -> "ItemCatalog":
        for col in ("item_id", "source_id", "title"):
            if col not in items.column_names:
                raise CatalogError(f"items/: missing column {col!r}")
        ids = items.column("item_id").to_numpy().astype(np.int64)
        order = _sorted_unique(ids, "items/ item_id")
        ids = ids[order]
        take = pa.array(order)
        source = pc.fill_null(items.column("source_id").combine_chunks().cast(pa.string()), "").take(take)
        titles = pc.fill_null(items.column("title").combine_chunks().cast(pa.string()), "").take(take)
        levels = 0
        codes = np.full((len(ids), 0), -1, dtype=np.int16)
        if item_codes is not None and item_codes.num_rows:
            try:
                cid, flat = code_arrays(item_codes)
            except ValueError as err:
                raise CatalogError(str(err)) from None
            levels = flat.shape[1]
            _sorted_unique(cid, "item_codes/ item_id")
            pos = np.searchsorted(ids, cid)
            known = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == cid) if len(ids) else np.zeros(len(cid), bool)
            if not known.all():
                raise CatalogError(f"item_codes/: item_id {int(cid[~known][0])} is not in items/")
            codes = np.full((len(ids), levels), -1, dtype=np.int16)
            codes[pos] = flat
        return cls(ids, source, titles, codes, SourceIdIndex.build(source, ids, "items/ source_id"))

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def levels(self) -> int:
        return int(self.codes.shape[1])

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id; -1 for ids not in the catalog."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        ok = pos < self.num_items
        ok[ok] = self.item_ids[pos[ok]] == ids[ok]
        return np.where(ok, pos, -1)

    def describe(self, item_ids: np.ndarray) -> tuple[list[str], list[str]]:
        """(source_ids, titles) of the given items; "" for ids not in the catalog."""
        rows = self.rows(item_ids)
        idx = pa.array(np.maximum(rows, 0)) if self.num_items else None
        if idx is None:
            return [""] * len(rows), [""] * len(rows)
        src = self.source_ids.take(idx).to_pylist()
        tit = self.titles.take(idx).to_pylist()
        missing = np.flatnonzero(rows < 0)
        for i in missing:
            src[i] = tit[i] = ""
        return src, tit

    def item(self, item_id: int) -> dict | None:
        """One item's record for the API, or None when unknown."""
        row = int(self.rows(np.array([item_id]))[0])
        if row < 0:
            return None
        codes = [int(c) for c in self.codes[row]] if self.levels else []
        has_codes = bool(codes) and min(codes) >= 0
        return {
            "item_id": int(item_id),
            "source_id": self.source_ids[row].as_py(),
            "title": self.titles[row].as_py(),
            "codes": codes if has_codes else None,
            "tokens": item_tokens(codes) if has_codes else None,
        }


@dataclass(frozen=True, eq=False)
class SourceIdIndex:
    """The dataset's own string ids (items' ``source_id``, users' ``source_user_id``) -> dense
    ids, as a sorted fixed-width bytes array: one ``searchsorted`` per lookup, no Python dict.

    Built once per version, at load: a duplicated source id is a load error naming it, never a
    request that fails later. Empty (null) source ids are not indexed: nothing can look them up.
    """

    keys: np.ndarray  # dtype S<w>, increasing
    ids: np.ndarray  # (n,) int64 aligned with keys

    @classmethod
    def build(cls, source_ids: pa.Array, ids: np.ndarray, what: str) -> "SourceIdIndex":
        strings = source_ids.to_pylist()
        keep = [i for i, s in enumerate(strings) if s]
        keys = np.array([strings[i].encode() for i in keep], dtype=bytes) if keep else np.zeros(0, "S1")
        order = _sorted_unique(keys, what)
        return cls(keys[order], np.asarray(ids, dtype=np.int64)[keep][order])

    @classmethod
    def from_sequences(cls, sequences: pa.Table) -> "SourceIdIndex":
        """``source_user_id`` -> ``user_id`` of a ``sequences/`` table."""
        for col in ("user_id", "source_user_id"):
            if col not in sequences.column_names:
                raise CatalogError(f"sequences/: missing column {col!r}")
        src = pc.fill_null(sequences.column("source_user_id").combine_chunks().cast(pa.string()), "")
        return cls.build(src, sequences.column("user_id").to_numpy(), "sequences/ source_user_id")

    def lookup(self, source_id: str) -> int | None:
        """The dense id of ``source_id``, or None when it is not indexed."""
        key = source_id.encode()
        if not key or len(key) > self.keys.dtype.itemsize or key.endswith(b"\0") or not self.keys.size:
            return None
        i = int(np.searchsorted(self.keys, np.array(key, dtype=self.keys.dtype)))
        if i < len(self.keys) and self.keys[i] == key:
            return int(self.ids[i])
        return None

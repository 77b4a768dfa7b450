"""The precache as columnar, memory-mapped arrays with a sorted-key index.

The online path of the paper is a key lookup: user -> precached top-K. Holding a Python dict per
user would cost hundreds of bytes per user and minutes to build for millions of users. Instead the
Parquet shards of ``precache/`` are converted once into ``.npy`` files (user ids sorted, items and
scores as padded ``(n, K)`` matrices) in a local cache keyed by the manifest, and every later load
memory-maps them: loading is O(1) in the number of users, pages are shared between replicas on a
node, and a lookup is one ``np.searchsorted``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semconv.artifacts import SUCCESS
from semconv.remote_cache import default_cache_root, private_dir

PAD = -1
_FILES = ("user_ids", "items", "scores", "lengths")
CACHE_FORMAT = 1


class PrecacheError(ValueError):
    """A precache directory that cannot be served (missing manifest, bad shard, duplicate user)."""


def default_cache_dir() -> Path:
    """``<cache root>/serve`` (``$SEMCONV_CACHE_DIR``, the one cache root; never a shared /tmp name)."""
    return default_cache_root() / "serve"


def resolve_precache_dir(path: str | Path) -> Path:
    """Accept a precache directory or the path of its ``_SUCCESS`` manifest."""
    p = Path(path).expanduser()
    if p.name == SUCCESS or p.is_file():
        p = p.parent
    if not (p / SUCCESS).is_file():
        raise PrecacheError(f"{p}: not a complete precache (no {SUCCESS} manifest)")
    return p.resolve()


@dataclass(frozen=True)
class Recommendation:
    items: np.ndarray  # int item ids, best first
    scores: np.ndarray  # float32, same length


@dataclass(frozen=True, eq=False)
class PrecacheStore:
    """One immutable precache version. Swap whole stores, never mutate one."""

    version: str
    user_ids: np.ndarray  # (n,) int64, strictly increasing
    items: np.ndarray  # (n, K) int32/int64, PAD after a row's length
    scores: np.ndarray  # (n, K) float32
    lengths: np.ndarray  # (n,) int32
    manifest: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def k(self) -> int:
        """The cached K: the most items any request may ask for."""
        return int(self.items.shape[1])

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    def row(self, user_id: int) -> int | None:
        """Row index of ``user_id``, or None when the user is not cached."""
        i = int(np.searchsorted(self.user_ids, user_id))
        if i < self.num_users and int(self.user_ids[i]) == user_id:
            return i
        return None

    def lookup(self, user_id: int, k: int) -> Recommendation | None:
        """The user's top-``k`` (fewer when fewer were cached), or None for an unknown user."""
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in [1, {self.k}] (the cached K), got {k}")
        i = self.row(user_id)
        if i is None:
            return None
        n = min(k, int(self.lengths[i]))
        return Recommendation(np.asarray(self.items[i, :n]), np.asarray(self.scores[i, :n]))


def precache_version(precache_dir: str | Path) -> str:
    """A version id: the manifest's ``version`` field, else a hash of the manifest bytes."""
    d = resolve_precache_dir(precache_dir)
    raw = (d / SUCCESS).read_bytes()
    manifest = json.loads(raw)
    if manifest.get("version"):
        return str(manifest["version"])
    return hashlib.sha256(raw).hexdigest()[:16]


_SHARD = re.compile(r"^shard-(\d{5,})\.parquet$")


def _shards(d: Path, manifest: dict | None = None) -> list[Path]:
    """The Parquet shards, checked against the manifest's shard count (``shards``): a precache
    with a missing or extra shard is refused rather than silently serving the fallback."""
    files = sorted(p for p in d.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise PrecacheError(f"{d}: precache has a manifest but no Parquet shards")
    want = (manifest or {}).get("shards")
    if want is not None:
        names = {p.name for p in files}
        if all(_SHARD.match(n) for n in names):  # the precache stage's shard-XXXXX names
            expected = {f"shard-{i:05d}.parquet" for i in range(int(want))}
            if names != expected:
                missing, extra = sorted(expected - names), sorted(names - expected)
                raise PrecacheError(f"{d}: shards do not match the manifest ({want} shards): "
                                    f"missing {missing[:5]}, unexpected {extra[:5]}")
        elif len(files) != int(want):
            raise PrecacheError(f"{d}: {len(files)} Parquet shards, the manifest says {want}")
    return files


def _check_rows(d: Path, manifest: dict, n: int) -> None:
    """The rows found equal the manifest's user count (``users``), when it records one."""
    want = manifest.get("users")
    if want is not None and int(want) != n:
        raise PrecacheError(f"{d}: shards hold {n} users, the manifest says {want}")


def _padded(col: pa.ChunkedArray | pa.Array, k: int, dtype: np.dtype, what: str, shard: Path) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a ``(n, k)`` matrix padded with PAD, plus the row lengths."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise PrecacheError(f"{shard}: column {what!r} has null rows")
    offsets = arr.offsets.to_numpy()
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets).astype(np.int32)
    if lengths.size and int(lengths.max()) > k:
        raise PrecacheError(f"{shard}: column {what!r} has a row of {int(lengths.max())} > K={k} entries")
    flat = arr.flatten()
    if flat.null_count:
        raise PrecacheError(f"{shard}: column {what!r} has null entries inside a list")
    values = flat.to_numpy(zero_copy_only=False)
    if lengths.size and int(lengths.min()) == k:  # every row full: a reshape, no scatter
        return values.astype(dtype, copy=False).reshape(len(arr), k), lengths
    out = np.full((len(arr), k), PAD, dtype=dtype)
    out[np.arange(k)[None, :] < lengths[:, None]] = values
    return out, lengths


def _stat(f: pq.ParquetFile, column: str, field: str):
    """A column chunk statistic over every row group, or None when any chunk lacks it."""
    idx = [i for i in range(f.metadata.num_columns) if f.metadata.row_group(0).column(i).path_in_schema.startswith(column + ".")] if f.metadata.num_row_groups else []
    values = []
    for rg in range(f.metadata.num_row_groups):
        for i in idx:
            st = f.metadata.row_group(rg).column(i).statistics
            if st is None or not st.has_min_max:
                return None
            values.append(getattr(st, field))
    return values


def _k_and_max_item(shards: list[Path], metas: list[pq.ParquetFile], manifest: dict) -> tuple[int, int]:
    """K (the manifest's, else the longest row) and the largest item id, from Parquet
    statistics when they are there, so the items column is read once, not twice."""
    k = int(manifest.get("K") or manifest.get("k") or manifest.get("top_k") or 0)
    max_item = 0
    for p, f in zip(shards, metas):
        lo, hi = _stat(f, "items", "min"), _stat(f, "items", "max")
        if not k or lo is None or hi is None:
            t = f.read(columns=["items"]).column(0).combine_chunks()
            flat = t.flatten().to_numpy(zero_copy_only=False)
            lo, hi = [int(flat.min())] if flat.size else [], [int(flat.max())] if flat.size else []
            if len(t):
                k = max(k, int(np.diff(t.offsets.to_numpy()).max()))
        if lo and min(lo) < 0:
            raise PrecacheError(f"{p}: negative item id in column 'items'")
        max_item = max([max_item, *map(int, hi)])
    return max(k, 1), max_item


def convert_precache(precache_dir: Path, out_dir: Path) -> None:
    """Convert the Parquet shards into sorted ``.npy`` arrays in ``out_dir`` (written atomically)."""
    manifest = json.loads((precache_dir / SUCCESS).read_text())
    shards = _shards(precache_dir, manifest)
    metas = [pq.ParquetFile(p) for p in shards]
    for p, f in zip(shards, metas):
        missing = {"user_id", "items", "scores"} - set(f.schema_arrow.names)
        if missing:
            raise PrecacheError(f"{p}: precache shard lacks column(s) {sorted(missing)}")
    n = sum(f.metadata.num_rows for f in metas)
    _check_rows(precache_dir, manifest, n)
    user_parts = []
    for p, f in zip(shards, metas):
        col = f.read(columns=["user_id"]).column(0)
        if col.null_count:
            raise PrecacheError(f"{p}: column 'user_id' has nulls")
        user_parts.append(col.to_numpy().astype(np.int64))
    user_ids = np.concatenate(user_parts) if user_parts else np.zeros(0, np.int64)
    order = np.argsort(user_ids, kind="stable")
    sorted_ids = user_ids[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        raise PrecacheError(f"{precache_dir}: user_id {int(sorted_ids[dup[0]])} appears in more than one row")
    k, max_item = _k_and_max_item(shards, metas, manifest)
    item_dtype = np.dtype(np.int32 if max_item < 2**31 - 1 else np.int64)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "user_ids.npy", sorted_ids)
        items = np.lib.format.open_memmap(tmp / "items.npy", "w+", item_dtype, (n, k))
        scores = np.lib.format.open_memmap(tmp / "scores.npy", "w+", np.float32, (n, k))
        lengths = np.lib.format.open_memmap(tmp / "lengths.npy", "w+", np.int32, (n,))
        dest = np.empty(n, dtype=np.int64)
        dest[order] = np.arange(n)  # original row -> sorted row
        start = 0
        for p, f in zip(shards, metas):
            t = f.read(columns=["items", "scores"])
            rows = dest[start : start + t.num_rows]
            start += t.num_rows
            it, lens = _padded(t.column("items"), k, item_dtype, "items", p)
            sc, slens = _padded(t.column("scores"), k, np.float32, "scores", p)
            if not np.array_equal(lens, slens):
                raise PrecacheError(f"{p}: 'items' and 'scores' differ in length on some row")
            items[rows] = it
            scores[rows] = np.where(np.isfinite(sc), sc, np.float32(0))  # JSON has no NaN/inf
            lengths[rows] = lens
        for a in (items, scores, lengths):
            a.flush()
        del items, scores, lengths
        (tmp / "cache.json").write_text(json.dumps({"format": CACHE_FORMAT, "source": str(precache_dir), "rows": n, "K": k}))
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process published the same version first: keep theirs
            if not (out_dir / "cache.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prune_cache(cache_root: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recently used cache entries; returns what was removed.

    Safe while other processes serve a removed entry: their memory maps keep the unlinked
    files alive until they unmap them.
    """
    entries = [p for p in cache_root.glob("precache-*") if (p / "cache.json").is_file()]
    entries.sort(key=lambda p: (p / "cache.json").stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return entries[keep:]


def load_precache(precache_dir: str | Path, cache_dir: str | Path | None = None, keep: int = 3) -> PrecacheStore:
    """Load a precache version: convert once into the cache, then memory-map the arrays.

    The cache keeps the ``keep`` most recently loaded versions (so switching back is instant).
    """
    d = resolve_precache_dir(precache_dir)
    raw = (d / SUCCESS).read_bytes()
    manifest = json.loads(raw)
    _shards(d, manifest)  # every load: a shard deleted since the conversion is refused too
    version = precache_version(d)
    key = hashlib.sha256(str(d).encode() + b"\0" + raw).hexdigest()[:24]
    out = private_dir(cache_dir if cache_dir is not None else default_cache_dir()) / f"precache-{key}"
    meta = out / "cache.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("format") != CACHE_FORMAT:
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        convert_precache(d, out)
    arrays = {name: np.load(out / f"{name}.npy", mmap_mode="r") for name in _FILES}
    os.utime(meta)  # most recently used
    prune_cache(out.parent, max(1, keep))
    return PrecacheStore(version=version, manifest=manifest, source=str(d), **arrays)

"""Per-partition steps of the sharded ``prepare`` (:mod:`semconv.data.sharded`): pure Arrow/numpy
functions of one block, so they test without Ray and a task's memory is its block's.

* :func:`lookup` gives each interaction its catalogue id and its user's partition
  (:func:`partition_of`: the same in every process, unlike Python's ``hash`` of a string).
* :func:`user_rows` turns a partition's interactions into one row per user: rows sorted by
  (timestamp, file position) -- timestamps missing last, as the in-memory sort puts them --,
  repeated items dropped keeping the earliest, ``first`` = the user's first file position.
* :func:`scan` and :func:`sequences` read those rows under the k-core's alive items: a user stays
  when ``k`` or more of their items are alive, and keeps only those items.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# 64 odd constants (fixed: partitions must agree across processes and runs)
_WEIGHTS = np.random.default_rng(20240611).integers(1, 2**63, 64, dtype=np.uint64) | np.uint64(1)


def partition_of(keys: pa.Array | pa.ChunkedArray, parts: int, step: int = 1 << 16) -> np.ndarray:
    """A stable partition in ``[0, parts)`` per string: a per-byte weighted sum, then mixed
    (``step`` strings at a time: the per-byte temporaries stay small)."""
    arr = pc.cast(keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys, pa.large_string())
    if len(arr) > step:
        return np.concatenate([partition_of(arr.slice(i, step), parts) for i in range(0, len(arr), step)])
    if len(arr) == 0:
        return np.zeros(0, np.int64)
    offs = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    b = np.append(data[offs[0]:offs[-1]], np.uint8(0)).astype(np.uint64)  # a pad: reduceat at the end
    lens = np.diff(offs)
    starts = offs[:-1] - offs[0]
    at = np.arange(len(b) - 1, dtype=np.int64) - np.repeat(starts, lens)
    with np.errstate(over="ignore"):
        h = np.add.reduceat(np.append(b[:-1] * _WEIGHTS[at % 64], np.uint64(0)), starts)
        h = np.where(lens > 0, h, 0) ^ (lens.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        h ^= h >> np.uint64(31)  # splitmix64 finaliser
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
    return (h % np.uint64(parts)).astype(np.int64)


def lookup(t: pa.Table, keys: pa.Array, parts: int, columns: list[str]) -> tuple[pa.Table, pa.Table]:
    """A block of validated interactions -> ``(rows for the shuffle, rows naming unknown items)``.

    The first has ``user``, ``item`` (int32 catalogue id: the place of its key in ``keys``),
    ``pos``, the optional ``columns`` the whole input has (a piece without one gets nulls, or
    empty reviews, as a whole-file read would) and ``part`` (:func:`partition_of` the user)."""
    idx = pc.index_in(t.column("item"), value_set=keys)
    known = pc.is_valid(idx)
    unknown = t.filter(pc.invert(known)).select(["pos", "row", "item"])
    if unknown.num_rows:
        t, idx = t.filter(known), idx.filter(known)
    out = {"user": t.column("user"), "item": pc.cast(idx, pa.int32()), "pos": t.column("pos")}
    if "timestamp" in columns:
        out["timestamp"] = t.column("timestamp") if "timestamp" in t.column_names else pa.nulls(t.num_rows, pa.int64())
    if "review" in columns:
        out["review"] = t.column("review") if "review" in t.column_names else pa.array([""] * t.num_rows, pa.string())
    out["part"] = pa.array(partition_of(t.column("user"), parts))
    return pa.table(out), unknown


def _lists(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def user_rows(t: pa.Table) -> pa.Table:
    """One row per user of a partition (every row of each of its users): ``first`` (int64),
    ``user``, ``items`` (list<int32> catalogue ids, chronological, each once), ``timestamps`` /
    ``reviews`` (when the input has them, aligned with ``items``), ``dups`` (rows dropped)."""
    t = t.combine_chunks()
    enc = pc.dictionary_encode(t.column("user")).chunk(0) if t.num_rows else None
    if enc is None:
        return _empty_users(t)
    u = enc.indices.to_numpy().astype(np.int64)
    keys = pa.table({"u": u, "pos": t.column("pos")})
    sort = [("u", "ascending")]
    if "timestamp" in t.column_names:
        keys = keys.append_column("ts", t.column("timestamp"))
        sort.append(("ts", "ascending"))
    order = pc.sort_indices(keys, sort_keys=sort + [("pos", "ascending")]).to_numpy()  # nulls last
    u_s, pos_s = u[order], t.column("pos").to_numpy()[order]
    item_s = t.column("item").to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, u_s[1:] != u_s[:-1]])  # group g holds user g (all present)
    first = np.minimum.reduceat(pos_s, starts)
    width = np.int64(int(item_s.max()) + 1)
    _, keep = np.unique(u_s * width + item_s, return_index=True)  # first of each (user, item)
    keep = np.sort(keep)
    n_users = len(enc.dictionary)
    kept = np.bincount(u_s[keep], minlength=n_users)
    offsets = np.r_[0, np.cumsum(kept)]
    cols = {"first": pa.array(first, pa.int64()), "user": enc.dictionary.cast(pa.string()),
            "items": _lists(offsets, pa.array(item_s[keep], pa.int32()))}
    take = pa.array(order[keep])
    if "timestamp" in t.column_names:
        cols["timestamps"] = _lists(offsets, t.column("timestamp").take(take).combine_chunks().cast(pa.int64()))
    if "review" in t.column_names:
        cols["reviews"] = _lists(offsets, t.column("review").take(take).combine_chunks().cast(pa.string()))
    cols["dups"] = pa.array(np.diff(np.r_[starts, len(u_s)]) - kept, pa.int64())
    return pa.table(cols)


def _empty_users(t: pa.Table) -> pa.Table:
    cols = {"first": pa.array([], pa.int64()), "user": pa.array([], pa.string()),
            "items": pa.array([], pa.list_(pa.int32()))}
    if "timestamp" in t.column_names:
        cols["timestamps"] = pa.array([], pa.list_(pa.int64()))
    if "review" in t.column_names:
        cols["reviews"] = pa.array([], pa.list_(pa.string()))
    cols["dups"] = pa.array([], pa.int64())
    return pa.table(cols)


def _alive(users: pa.Table, alive: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(flat items, users kept, edges kept, kept users' history lengths)`` under the alive items."""
    items = users.column("items").combine_chunks()
    offsets = items.offsets.to_numpy().astype(np.int64)
    flat = items.values.to_numpy()[offsets[0]:offsets[-1]]
    sizes = np.diff(offsets)
    on = alive[flat]
    degree = np.add.reduceat(on.astype(np.int64), offsets[:-1] - offsets[0]) if len(flat) else sizes
    degree = np.where(sizes > 0, degree, 0)  # reduceat gives an empty list its next item
    user_on = degree >= k if k else np.ones(len(sizes), bool)
    return flat, user_on, on & np.repeat(user_on, sizes), degree[user_on]


def scan(users: pa.Table, alive_items: np.ndarray, k: int) -> pa.Table:
    """One row of aggregates for a block of user rows under the alive items: the kept edges'
    ``items`` with their ``counts`` (item degrees), the kept users' ``firsts`` and history
    ``lens``, and the ``dups`` that :func:`user_rows` dropped."""
    flat, user_on, edge_on, lens = _alive(users, alive_items, k)
    items, counts = np.unique(flat[edge_on], return_counts=True)
    return pa.table({
        "items": pa.array([items.astype(np.int32)], pa.list_(pa.int32())),
        "counts": pa.array([counts.astype(np.int64)], pa.list_(pa.int64())),
        "firsts": pa.array([users.column("first").to_numpy()[user_on]], pa.list_(pa.int64())),
        "lens": pa.array([lens], pa.list_(pa.int64())),
        "dups": pa.array([int(pc.sum(users.column("dups")).as_py() or 0)], pa.int64()),
    })


def sequences(users: pa.Table, alive_items: np.ndarray, k: int, firsts: np.ndarray) -> pa.Table:
    """``sequences/`` rows of the kept users of a block (any order): ``user_id`` = rank of the
    user's first position among all kept users' (``firsts``, sorted), history of kept items."""
    flat, user_on, edge_on, lens = _alive(users, alive_items, k)
    offsets = np.r_[0, np.cumsum(lens)]
    keep = pa.array(np.flatnonzero(edge_on))
    cols = {"user_id": pa.array(np.searchsorted(firsts, users.column("first").to_numpy()[user_on]), pa.int64()),
            "source_user_id": users.column("user").filter(pa.array(user_on)).combine_chunks().cast(pa.string()),
            "history": _lists(offsets, pa.array(flat[edge_on], pa.int64()))}
    for name in ("timestamps", "reviews"):
        if name in users.column_names:
            values = pc.list_flatten(users.column(name).combine_chunks())
            cols[name] = _lists(offsets, values.take(keep))
    return pa.table(cols)

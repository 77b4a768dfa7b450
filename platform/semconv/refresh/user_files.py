"""Tables keyed by ``user_id`` (``sequences/``, ``splits/``), read and rewritten file by file.

A refresh touches a few users of a table that may hold millions. So it never loads the table:
each Parquet file's user-id range comes from its footer statistics, only the files whose range
can hold a delta user are opened (and inside them only the row groups whose statistics can),
and the next version is written file by file: a file holding no replaced user is carried over
as the same bytes (a hard link locally), a file holding some is rewritten with those rows
replaced, and rows of users no file holds (users new to the run) go to one new file at the end.
Memory is one file plus the delta users' rows, whatever the table's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from semconv.artifacts import RunDir, link_or_copy
from semconv.refresh.delta import KnownUsers


@dataclass(frozen=True)
class UserFiles:
    """An artifact's Parquet files with each file's ``[lo, hi]`` user-id range (empty: lo > hi)."""

    fs: pafs.FileSystem
    paths: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    rows: np.ndarray

    @property
    def num_users(self) -> int:
        return int(self.rows.sum())

    @property
    def max_user(self) -> int:
        """The largest user id held, -1 when empty."""
        full = self.rows > 0
        return int(self.hi[full].max()) if full.any() else -1

    def holding(self, users: np.ndarray) -> list[int]:
        """Indices of the files whose range contains at least one of ``users`` (sorted)."""
        users = np.sort(np.asarray(users, np.int64))
        if not len(users):
            return []
        first = np.searchsorted(users, self.lo, side="left")
        return [i for i in range(len(self.paths))
                if first[i] < len(users) and users[first[i]] <= self.hi[i]]


def _user_id_column(meta: pq.FileMetaData, path: str) -> int:
    """The Parquet leaf index of ``user_id`` (not its Arrow field index: a list column before it
    would shift one against the other)."""
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "user_id" not in paths:
        raise ValueError(f"{path}: no 'user_id' column")
    return paths.index("user_id")


def _range(meta: pq.FileMetaData, path: str, fs: pafs.FileSystem) -> tuple[int, int]:
    """``(min, max)`` of ``user_id`` from the row groups' statistics; the column itself when a
    writer left them out."""
    col = _user_id_column(meta, path)
    lo, hi = None, None
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if rg.num_rows == 0:
            continue
        stats = rg.column(col).statistics
        if stats is None or not stats.has_min_max:
            ids = pq.read_table(path, columns=["user_id"], filesystem=fs)["user_id"]
            mm = pc.min_max(ids).as_py()
            return int(mm["min"]), int(mm["max"])
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return (0, -1) if lo is None else (int(lo), int(hi))


def user_files(run: RunDir, name: str) -> UserFiles:
    """The artifact ``name`` of ``run`` as :class:`UserFiles` (only footers are read), in the
    order of their users."""
    paths = run.parquet_files(name)
    lo, hi, rows = [], [], []
    for p in paths:
        meta = pq.ParquetFile(p, filesystem=run.fs).metadata
        a, b = _range(meta, p, run.fs)
        lo.append(a), hi.append(b), rows.append(meta.num_rows)
    order = np.argsort(np.asarray(lo, np.int64), kind="stable")
    return UserFiles(run.fs, tuple(paths[i] for i in order), np.asarray(lo, np.int64)[order],
                     np.asarray(hi, np.int64)[order], np.asarray(rows, np.int64)[order])


def read_users(files: UserFiles, users: np.ndarray, columns: list[str] | None = None) -> pa.Table:
    """The rows of ``users`` (sorted by ``user_id``), reading only the files and row groups whose
    statistics can hold them; ``columns`` must include ``user_id``."""
    users = np.unique(np.asarray(users, np.int64))
    value_set = pa.array(users, pa.int64())
    parts = []
    for i in files.holding(users):
        f = pq.ParquetFile(files.paths[i], filesystem=files.fs)
        col = _user_id_column(f.metadata, files.paths[i])
        for g in range(f.num_row_groups):
            stats = f.metadata.row_group(g).column(col).statistics
            if stats is not None and stats.has_min_max:
                k = np.searchsorted(users, stats.min)
                if k == len(users) or users[k] > stats.max:
                    continue  # no delta user in this row group's range: not read
            t = f.read_row_group(g, columns=columns)
            parts.append(t.filter(pc.is_in(t.column("user_id"), value_set=value_set)))
    if not parts:
        if not files.paths:
            raise ValueError("the table has no files")
        schema = pq.read_schema(files.paths[0], filesystem=files.fs)
        return (pa.schema([schema.field(c) for c in columns]) if columns else schema).empty_table()
    return pa.concat_tables(parts).sort_by("user_id")


def scan(files: UserFiles, columns: list[str], batch_size: int = 65_536) -> Iterable[pa.RecordBatch]:
    """Every row, ``columns`` only, one batch at a time (for lookups no id range narrows)."""
    for path in files.paths:
        yield from pq.ParquetFile(path, filesystem=files.fs).iter_batches(columns=columns, batch_size=batch_size)


def write_replaced(files: UserFiles, rows: pa.Table, out_dir: Path) -> dict:
    """Write into local ``out_dir`` the table with ``rows`` (sorted by ``user_id``) replacing the
    rows of the same users; users no file holds go to a new last file (kept in user order when,
    as with dense ids, they are new users after every held one). Files are named
    ``part-00000.parquet``... in user order. Returns what was carried over, rewritten and added."""
    ids = rows.column("user_id").to_numpy()
    value_set = pa.array(ids, pa.int64())
    placed = np.zeros(len(ids), bool)
    carried = rewritten = 0
    local = pafs.LocalFileSystem()
    holding = set(files.holding(ids))
    for i, path in enumerate(files.paths):
        dst = out_dir / f"part-{i:05d}.parquet"
        if i not in holding:
            link_or_copy(files.fs, path, dst)
            carried += 1
            continue
        old = pq.read_table(path, filesystem=files.fs)
        inside = np.flatnonzero(np.isin(ids, old.column("user_id").to_numpy()))
        placed[inside] = True
        keep = old.filter(pc.invert(pc.is_in(old.column("user_id"), value_set=value_set)))
        new = pa.concat_tables([keep, rows.take(pa.array(inside, pa.int64())).cast(old.schema)])
        pq.write_table(new.sort_by("user_id"), dst, filesystem=local)
        rewritten += 1
    added = rows.filter(pa.array(~placed))
    if added.num_rows:
        if files.paths:
            added = added.cast(pq.read_schema(files.paths[0], filesystem=files.fs))
        pq.write_table(added, out_dir / f"part-{len(files.paths):05d}.parquet", filesystem=local)
    return {"files_carried_over": carried, "files_rewritten": rewritten, "files_added": int(added.num_rows > 0),
            "rows": files.num_users + int(added.num_rows)}


def known_users(files: UserFiles) -> KnownUsers:
    """:class:`KnownUsers` over ``sequences/`` files: a lookup streams the two id columns and
    keeps only the rows of the source ids asked for (no id range narrows a source id)."""

    def lookup(wanted: pa.Array) -> pa.Table:
        wanted = wanted.cast(pa.string())
        parts = [b.filter(pc.is_in(b.column("source_user_id"), value_set=wanted))
                 for b in scan(files, ["user_id", "source_user_id"])]  # one batch held at a time
        parts = [pa.Table.from_batches([b]) for b in parts if b.num_rows]
        schema = pa.schema([("user_id", pa.int64()), ("source_user_id", pa.string())])
        return pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()

    return KnownUsers(lookup, files.max_user + 1)

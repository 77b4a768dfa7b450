"""Sharded reads: raw files cut into pieces that tasks read on their own (``prepare`` at scale).

A :class:`Piece` is a run of a Parquet file's row groups, or a byte range of a CSV / JSON Lines
file cut on line boundaries (a line belongs to the piece holding its first byte; records end at
``\\n``, so a quoted CSV field holds no newline: Arrow's CSV default, as in the whole-file reader).
A piece knows the file's row number of its first record, so every error names the file's own
row exactly as :mod:`semconv.data.readers` does: Parquet from the row counts in the footer, text
from a first pass that counts each piece's lines (:func:`count_rows`, one extra read, in
parallel). Rows are numbered as the whole-file readers number them: Parquet by record, CSV by
non-empty line (Arrow's numbering; the header is row 1), JSON Lines by line.

A piece reads in bounded memory: Parquet in record batches, text as one range of about
``block_bytes``. ``pos = file index << 40 | row`` orders every record as the files do: it finds
a user's first appearance and orders equal timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.json as pjson
import pyarrow.parquet as pq

from semconv.artifacts import filesystem, join_uri
from semconv.data.readers import (ROW, DataError, ReadReport, _read_jsonl_lines, _with_rows, csv_header,
                                  parse_csv)

POS_SHIFT = 40  # pos = file index << 40 | row: 10^12 rows per file
BATCH_ROWS = 1 << 20  # Parquet record batch (one block) read at a time


@dataclass(frozen=True)
class Piece:
    uri: str  # the file (a local path or a URI with its ?query kept)
    kind: str  # "parquet" | "csv" | "jsonl"
    file: int  # index of the file in the source's sorted listing
    start: int  # first row group (Parquet) or byte (text)
    stop: int  # end, exclusive
    row_base: int = 0  # rows of the file before this piece
    header: list[str] = field(default_factory=list)  # CSV column names

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(s: str) -> Piece:
        return Piece(**json.loads(s))


def kind_of(uri: str, is_dir: bool) -> str:
    """The reader for ``uri`` by extension, as :func:`semconv.data.readers.read_table` picks it."""
    base = uri.split("?", 1)[0]
    if is_dir or base.endswith(".parquet") or base.rstrip("/").endswith("parquet"):
        return "parquet"
    if base.endswith(".csv"):
        return "csv"
    if base.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise DataError(f"{uri}: unknown file type; use .parquet, .csv, .jsonl (JSON Lines)")


def list_files(uri: str) -> tuple[list[tuple[str, int]], str]:
    """``([(file uri, bytes)], kind)``: the file, or a Parquet folder's data files in path order
    (names starting with ``_`` or ``.`` skipped, as Arrow datasets skip them)."""
    fs, path, _ = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: file not found")
    if info.type != pafs.FileType.Directory:
        return [(uri, info.size)], kind_of(uri, False)
    found = sorted((f.path, f.size) for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if f.type == pafs.FileType.File
                   and not any(p.startswith(("_", ".")) for p in f.path[len(path):].split("/") if p))
    return [(join_uri(uri, p[len(path):].lstrip("/")), size) for p, size in found], "parquet"


def plan(uri: str, block_bytes: int) -> list[Piece]:
    """The pieces of ``uri`` (a file, or a folder of Parquet files) of about ``block_bytes`` each;
    text pieces still need their ``row_base`` (:func:`with_row_bases`)."""
    files, kind = list_files(uri)
    pieces: list[Piece] = []
    for i, (file_uri, size) in enumerate(files):
        if kind == "parquet":
            fs, path, _ = filesystem(file_uri)
            try:
                meta = pq.ParquetFile(path, filesystem=fs).metadata
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f"{file_uri}: not readable as Parquet ({err})") from None
            start, acc, rows_before, base = 0, 0, 0, 0
            for g in range(meta.num_row_groups):
                acc += meta.row_group(g).total_byte_size
                rows_before += meta.row_group(g).num_rows
                if acc >= block_bytes or g == meta.num_row_groups - 1:
                    pieces.append(Piece(file_uri, kind, i, start, g + 1, base))
                    start, acc, base = g + 1, 0, rows_before
            if meta.num_row_groups == 0:
                pieces.append(Piece(file_uri, kind, i, 0, 0))
        else:
            header = csv_header(file_uri) if kind == "csv" else []
            n = max(1, -(-size // block_bytes))
            step = -(-size // n) if size else 0
            pieces += [Piece(file_uri, kind, i, j * step, min(size, (j + 1) * step), 0, header) for j in range(n)]
    return pieces


def piece_bytes(piece: Piece) -> bytes:
    """The bytes of the lines that start in ``[piece.start, piece.stop)`` (a line starts at byte 0
    or after a ``\\n``), the last one read on to its ``\\n``."""
    fs, path, _ = filesystem(piece.uri)
    with fs.open_input_file(path) as f:
        size = f.size()
        stop = min(piece.stop, size)
        if piece.start >= stop:
            return b""
        lo = max(piece.start - 1, 0)
        buf = f.read_at(stop - lo, lo)
        if piece.start > 0:  # the line running over start-1 belongs to the piece before
            cut = buf.find(b"\n")
            if cut < 0:
                return b""
            buf = buf[cut + 1:]
        if not buf:
            return b""
        tail, at = [], stop
        while not (tail[-1] if tail else buf).endswith(b"\n") and at < size:
            more = f.read_at(min(1 << 16, size - at), at)
            nl = more.find(b"\n")
            tail.append(more if nl < 0 else more[:nl + 1])
            at += len(more)
            if nl >= 0:
                break
        return buf + b"".join(tail)


def count_rows(piece: Piece) -> int:
    """Rows of a text piece as the readers number them: CSV non-empty lines, JSON Lines lines."""
    buf = piece_bytes(piece)
    lines = buf.count(b"\n") + (1 if buf and not buf.endswith(b"\n") else 0)
    if piece.kind != "csv" or not lines:
        return lines
    a = np.frombuffer(buf, np.uint8)
    ends = np.flatnonzero(a == 10)
    if len(ends) < lines:
        ends = np.append(ends, len(a))
    starts = np.r_[0, ends[:-1] + 1]
    length = ends - starts
    cr = length == 1
    cr[cr] = a[starts[cr]] == 13  # "\r\n": empty too
    return int(lines - np.count_nonzero((length == 0) | cr))


def with_row_bases(pieces: list[Piece], counts: list[int]) -> list[Piece]:
    """Text pieces with ``row_base`` from the per-piece row counts (:func:`count_rows`)."""
    out, before = [], {}
    for p, n in zip(pieces, counts):
        base = before.get(p.file, 0)
        out.append(Piece(p.uri, p.kind, p.file, p.start, p.stop, base, p.header))
        before[p.file] = base + n
    return out


def read_piece(piece: Piece, on_bad_rows: str, report: ReadReport) -> Iterator[pa.Table]:
    """The piece's records as read (the file's columns) plus ``row``, in blocks."""
    if piece.kind == "parquet":
        fs, path, _ = filesystem(piece.uri)
        f = pq.ParquetFile(path, filesystem=fs)
        if piece.stop <= piece.start:
            yield _with_rows(f.schema_arrow.empty_table(), np.zeros(0, np.int64))
            return
        row = piece.row_base
        for batch in f.iter_batches(batch_size=BATCH_ROWS, row_groups=list(range(piece.start, piece.stop))):
            yield _with_rows(pa.Table.from_batches([batch]), np.arange(row + 1, row + batch.num_rows + 1))
            row += batch.num_rows
        return
    buf = piece_bytes(piece)
    if piece.kind == "csv":
        if not buf:
            yield pa.table({**{c: pa.array([], pa.string()) for c in piece.header}, ROW: pa.array([], pa.int64())})
            return
        yield parse_csv(pa.BufferReader(buf), piece.uri, piece.header, 1 if piece.start == 0 else 0,
                        piece.row_base, on_bad_rows, report)
        return
    table = _jsonl_piece(buf, piece, on_bad_rows, report)
    if table.num_columns > 1:  # a piece of blank or bad lines has no columns to validate
        yield table


def _jsonl_piece(buf: bytes, piece: Piece, on_bad_rows: str, report: ReadReport) -> pa.Table:
    """Arrow's JSON reader when the piece parses as one table and has no blank line (so record
    ``i`` is line ``i``), else the readers' line-by-line pass, which numbers lines itself."""
    lines = buf.count(b"\n") + (1 if buf and not buf.endswith(b"\n") else 0)
    if buf:
        try:
            table = pjson.read_json(pa.BufferReader(buf))
            if table.num_rows == lines:
                return _with_rows(table, np.arange(piece.row_base + 1, piece.row_base + lines + 1))
        except pa.ArrowInvalid:
            pass
    return _read_jsonl_lines(piece.uri, on_bad_rows, report, raw=pa.BufferReader(buf),
                             first_line=piece.row_base + 1)


def with_pos(table: pa.Table, file: int) -> pa.Table:
    """``pos`` (module docstring) from the file index and the ``row`` column."""
    rows = table.column(ROW).to_numpy()
    return table.append_column("pos", pa.array((np.int64(file) << POS_SHIFT) | rows.astype(np.int64)))


def raw_bytes(uri: str) -> int:
    """Bytes on disk of a file or a Parquet folder."""
    return sum(size for _, size in list_files(uri)[0])

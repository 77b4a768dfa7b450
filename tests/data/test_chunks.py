"""Sharded reads: pieces cover every line once, and number rows as the whole-file readers do."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semconv.data import chunks
from semconv.data.readers import DataError, ReadReport, canonical_interactions, read_interactions


def _pieces(path, block_bytes: int) -> list[chunks.Piece]:
    pieces = chunks.plan(str(path), block_bytes)
    if pieces[0].kind == "parquet":
        return pieces
    return chunks.with_row_bases(pieces, [chunks.count_rows(p) for p in pieces])


def _read(path, block_bytes: int, on_bad_rows: str = "error") -> tuple[pa.Table, ReadReport]:
    report = ReadReport()
    parts = [canonical_interactions(t, p.uri, on_bad_rows, report)
             for p in _pieces(path, block_bytes) for t in chunks.read_piece(p, on_bad_rows, report)]
    return pa.concat_tables(parts, promote_options="permissive"), report


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 1000, 10**6])
def test_pieces_hold_every_line_once(tmp_path, block_bytes):
    rng = np.random.default_rng(block_bytes)
    lines = [b"x" * int(n) for n in rng.integers(0, 40, 200)]
    p = tmp_path / "t.jsonl"
    p.write_bytes(b"\n".join(lines))  # no newline at the end
    pieces = chunks.plan(str(p), block_bytes)
    assert b"".join(chunks.piece_bytes(q) for q in pieces) == p.read_bytes()
    assert sum(chunks.count_rows(q) for q in pieces) == len(lines)


@pytest.mark.parametrize("block_bytes", [5, 40, 10**6])
def test_csv_pieces_number_rows_as_the_whole_file(tmp_path, block_bytes):
    p = tmp_path / "inter.csv"  # a BOM, CRLF, blank lines and a short row
    body = "\ufeffuser_id,item_id,timestamp\r\n" + "".join(
        f"u{i},i{i % 7},{i}\r\n" + ("\r\n" if i % 5 == 0 else "") + ("\n" if i % 9 == 0 else "") for i in range(60))
    p.write_bytes((body + "u9,i1\nu10,i2,3\n").encode())
    want = read_interactions(str(p), "skip", whole := ReadReport())
    got, report = _read(p, block_bytes, "skip")
    assert got.equals(want) and report.skipped == whole.skipped == {"unparseable": 1}
    with pytest.raises(DataError, match=r"inter\.csv: row 62: expected 3 fields, found 2"):
        read_interactions(str(p))
    with pytest.raises(DataError, match=r"inter\.csv: row 62: expected 3 fields, found 2"):
        _read(p, block_bytes)


@pytest.mark.parametrize("block_bytes", [9, 100, 10**6])
def test_jsonl_pieces_number_lines_and_fall_back_per_piece(tmp_path, block_bytes):
    p = tmp_path / "inter.jsonl"
    recs = [{"user_id": f"u{i}", "item_id": i if i % 13 else f"i{i}", "timestamp": i} for i in range(50)]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n\n" + '{"user_id": "u9", "item_id": \n')
    got, report = _read(p, block_bytes, "skip")
    assert got.column("user").to_pylist() == [f"u{i}" for i in range(50)]
    assert got.column("item").to_pylist() == [str(i) if i % 13 else f"i{i}" for i in range(50)]
    assert got.column("row").to_pylist() == list(range(1, 51)) and report.skipped == {"unparseable": 1}
    with pytest.raises(DataError, match=r"inter\.jsonl: row 53: unparseable JSON"):
        _read(p, block_bytes)


def test_parquet_pieces_are_row_groups_with_file_rows(tmp_path):
    d = tmp_path / "inter"
    d.mkdir()
    for name, lo in (("b.parquet", 100), ("a.parquet", 0), ("_ignored.parquet", 0)):
        pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(lo, lo + 30)], "item_id": ["i"] * 30}),
                       d / name, row_group_size=8)
    pieces = _pieces(d, 1)
    assert [(p.uri.rsplit("/", 1)[1], p.start, p.row_base) for p in pieces[:5]] == [
        ("a.parquet", 0, 0), ("a.parquet", 1, 8), ("a.parquet", 2, 16), ("a.parquet", 3, 24), ("b.parquet", 0, 0)]
    got, _ = _read(d, 1)
    assert got.column("user").to_pylist() == [f"u{i}" for i in list(range(30)) + list(range(100, 130))]
    assert got.column("row").to_pylist() == list(range(1, 31)) * 2

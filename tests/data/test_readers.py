"""The generic readers: columnar, text ids kept as text, a BOM and U+2028 read correctly."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semconv.data.readers import DataError, ReadReport, read_interactions, read_items


def test_csv_with_a_utf8_bom_reads_its_first_column(tmp_path):
    p = tmp_path / "inter.csv"
    p.write_bytes("\ufeffuser_id,item_id,timestamp\nu1,007,5\nu2,i2,\n".encode())
    t = read_interactions(str(p))
    assert t["user"].to_pylist() == ["u1", "u2"] and t["item"].to_pylist() == ["007", "i2"]
    assert t["timestamp"].to_pylist() == [5, None] and t["row"].to_pylist() == [2, 3]


def test_jsonl_keeps_a_u2028_inside_a_string_as_text(tmp_path):
    p = tmp_path / "items.jsonl"
    rows = [{"item_id": "a", "title": "line\u2028separator", "description": "para\u2029graph"},
            {"item_id": "b", "title": "B"}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    t, _ = read_items(str(p))
    assert t["item"].to_pylist() == ["a", "b"] and t["title"][0].as_py() == "line\u2028separator"
    assert t["description"].to_pylist() == ["para\u2029graph", ""]


def test_the_fallback_pass_also_splits_only_at_newlines(tmp_path):
    p = tmp_path / "inter.jsonl"  # ids as numbers and strings: Arrow cannot read it as one table
    p.write_text(json.dumps({"user_id": 1, "item_id": "x\u2028y"}, ensure_ascii=False) + "\n"
                 + json.dumps({"user_id": "u2", "item_id": 7, "timestamp": 3.9}) + "\n")
    t = read_interactions(str(p))
    assert t.to_pylist() == [{"user": "1", "item": "x\u2028y", "row": 1, "timestamp": None},
                             {"user": "u2", "item": "7", "row": 2, "timestamp": 3}]


def test_parquet_is_read_columnar_with_integer_ids_as_text(tmp_path):
    p = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"user_id": pa.array([10, 11], pa.int64()), "item_id": ["a", "b"],
                             "rating": [4.5, None]}), p)
    t = read_interactions(str(p))
    assert t["user"].type == pa.string() and t["user"].to_pylist() == ["10", "11"]
    assert t["rating"].to_pylist() == [4.5, None] and t["row"].to_pylist() == [1, 2]


def test_bad_values_name_the_row_or_are_skipped_and_counted(tmp_path):
    p = tmp_path / "inter.csv"
    p.write_text("user_id,item_id,timestamp\nu1,a,1\n,b,2\nu3,c,soon\nu4,d\n")
    with pytest.raises(DataError, match=r"inter\.csv: row 5: expected 3 fields, found 2 \(set prepare\.on_bad_rows=skip"):
        read_interactions(str(p))
    p.write_text("user_id,item_id,timestamp\nu1,a,1\n,b,2\nu3,c,soon\n")
    with pytest.raises(DataError, match=r"inter\.csv: row 3: field 'user_id' is empty"):
        read_interactions(str(p))
    p.write_text("user_id,item_id,timestamp\nu1,a,1\nu2,b,2\nu3,c,soon\n")
    with pytest.raises(DataError, match=r"inter\.csv: row 4: field 'timestamp' or 'rating' is not a number"):
        read_interactions(str(p))
    p.write_text("user_id,item_id,timestamp\nu1,a,1e3\n,b,2\nu3,c,soon\nu4,d\nu5,e,-2.5\n")
    report = ReadReport()
    t = read_interactions(str(p), "skip", report)
    assert t["user"].to_pylist() == ["u1", "u5"] and t["row"].to_pylist() == [2, 6]
    assert t["timestamp"].to_pylist() == [1000, -2]
    assert report.skipped == {"unparseable": 2, "missing_field": 1}

"""Readers for raw recommendation data: LC-Rec JSON, and generic Parquet / CSV / JSON Lines.

Both return two Arrow tables in one canonical shape, so everything downstream is format-free:
- interactions: ``user`` (string), ``item`` (string), ``row`` (int64, 1-based source row for error
  messages and a stable tie-break), optional ``timestamp`` (int64), ``rating`` (float64),
  ``review`` (string);
- items: ``item`` (string), ``title``, ``description``, ``brand``, ``categories`` (strings).

Files are local paths or any ``pyarrow.fs`` URI. Generic files stay columnar end to end: Parquet
goes through Ray Data (``ray.data.read_parquet``: sharded, parallel) when Ray is running, else
``pyarrow.parquet``; CSV through ``pyarrow.csv`` (every column read as text, so ``007`` stays an
id; a UTF-8 byte-order mark is skipped; a row with the wrong field count is reported by its line);
JSON Lines through ``pyarrow.json`` (records end at ``\n`` only, so a U+2028 inside a string is
text, not a line break). Validation is vectorised (Arrow compute); no row becomes a Python
object. Only a JSON Lines file that Arrow cannot read as one table (an unparseable line, an id
that is a number in one row and a string in another) takes a streaming line-by-line pass that
names the bad line, or skips and counts it when ``on_bad_rows="skip"``. LC-Rec files are single
JSON objects and are parsed whole.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.json as pjson
import pyarrow.parquet as pq

from semconv.artifacts import filesystem

TEXT_FIELDS = ("title", "description", "brand", "categories")


class DataError(ValueError):
    """Bad input data; the message names the file, row and field."""


@dataclass
class ReadReport:
    """What a reader skipped (only with ``on_bad_rows="skip"``), and the setting an error names
    as the way to skip such rows (the stage reading: ``prepare`` or ``refresh``)."""

    skipped: dict[str, int] = field(default_factory=dict)
    setting: str = "prepare.on_bad_rows"

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def _open_text(uri: str) -> str:
    fs, path, _ = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{uri}: file not found") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{uri}: not UTF-8 text ({err})") from None


def has_text(s: str) -> bool:
    """Whether a title or description says anything (an item needs one to get text-aligned codes)."""
    return bool(s.strip().strip(".").strip())


def bad_row(uri: str, row: int, msg: str, on_bad_rows: str, report: ReadReport, reason: str) -> None:
    """Raise a :class:`DataError` naming the file and row, or (``on_bad_rows="skip"``) count it."""
    if on_bad_rows == "skip":
        report.skip(reason)
        return
    raise DataError(f"{uri}: row {row}: {msg} (set {report.setting}=skip to skip such rows)")


# ---- LC-Rec JSON ----------------------------------------------------------------------------
def read_lcrec(dataset_dir: str, name: str | None = None) -> tuple[pa.Table, pa.Table]:
    """Read ``<name>.inter.json`` (``{user: [item, ...]}``, oldest first) and ``<name>.item.json``."""
    name = name or Path(dataset_dir.rstrip("/")).name
    inter_uri = f"{dataset_dir.rstrip('/')}/{name}.inter.json"
    item_uri = f"{dataset_dir.rstrip('/')}/{name}.item.json"
    inter = _load_json_object(inter_uri)
    meta = _load_json_object(item_uri)
    users, items, rows = [], [], []
    row = 0
    for user, seq in inter.items():
        row += 1
        if not isinstance(seq, list):
            raise DataError(f"{inter_uri}: user {user!r}: history must be a list, got {type(seq).__name__}")
        for pos, item in enumerate(seq):
            if not isinstance(item, (int, str)) or isinstance(item, bool):
                raise DataError(f"{inter_uri}: user {user!r}: position {pos}: item id {item!r} is not an int or string")
            users.append(str(user))
            items.append(str(item))
            rows.append(row)
    interactions = pa.table({"user": pa.array(users, pa.string()), "item": pa.array(items, pa.string()),
                             "row": pa.array(rows, pa.int64())})
    cols: dict[str, list[str]] = {"item": [], **{f: [] for f in TEXT_FIELDS}}
    for key, rec in meta.items():
        if not isinstance(rec, dict):
            raise DataError(f"{item_uri}: item {key!r}: expected an object, got {type(rec).__name__}")
        if "title" not in rec:
            raise DataError(f"{item_uri}: item {key!r}: missing field 'title'")
        cols["item"].append(str(key))
        for f in TEXT_FIELDS:
            value = rec.get(f, "")
            if not isinstance(value, str):
                raise DataError(f"{item_uri}: item {key!r}: field {f!r} must be a string, got {type(value).__name__}")
            cols[f].append(value)
    return interactions, pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def _load_json_object(uri: str) -> dict[str, Any]:
    text = _open_text(uri)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{uri}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{uri}: top level must be a JSON object, got {type(obj).__name__}")
    return obj


# ---- generic tables -------------------------------------------------------------------------
ROW = "row"  # 1-based source row: the line in CSV (header = 1) and JSON Lines, the record in Parquet
CHUNK_LINES = 65536  # lines per chunk on the JSON Lines fallback pass


def _stream(uri: str):
    fs, path, _ = filesystem(uri)
    try:
        return fs.open_input_stream(path)
    except FileNotFoundError:
        raise DataError(f"{uri}: file not found") from None


def _with_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    return table.append_column(ROW, pa.array(rows, pa.int64()))


def csv_header(uri: str) -> list[str]:
    """The column names on a CSV file's first line (a UTF-8 byte-order mark skipped)."""
    with _stream(uri) as f:
        head = f.read(1 << 16).decode("utf-8", errors="replace").lstrip("\ufeff")
    if not head.strip():
        raise DataError(f"{uri}: empty file (no header row)")
    return next(csv.reader(io.StringIO(head.splitlines()[0])))


def parse_csv(source: Any, uri: str, header: list[str], skip_rows: int, row_base: int, on_bad_rows: str,
              report: ReadReport) -> pa.Table:
    """CSV records of ``source`` (a stream or buffer: a whole file, ``skip_rows=1`` for its header,
    or a piece of one) as text columns plus ``row``: ``row_base`` + the record's number among
    the non-empty lines of ``source`` (Arrow's numbering, also of the rows it reports bad)."""
    bad: list[tuple[int, int, int]] = []

    def invalid(row) -> str:  # an exception raised here would be swallowed: collect, raise after
        bad.append((row_base + row.number, row.expected_columns, row.actual_columns))
        return "skip"

    try:
        table = pcsv.read_csv(
            source, read_options=pcsv.ReadOptions(use_threads=False, column_names=header, skip_rows=skip_rows),
            parse_options=pcsv.ParseOptions(invalid_row_handler=invalid),  # row numbers of bad rows
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                strings_can_be_null=False))
    except pa.ArrowInvalid as err:
        raise DataError(f"{uri}: not readable as CSV ({err})") from None
    for number, expected, actual in bad[:1]:
        bad_row(uri, number, f"expected {expected} fields, found {actual}", on_bad_rows, report, "unparseable")
        report.skip("unparseable", len(bad) - 1)
    rows = np.arange(row_base + skip_rows + 1, row_base + skip_rows + table.num_rows + len(bad) + 1)
    return _with_rows(table, rows[~np.isin(rows, [b[0] for b in bad])] if bad else rows)


def _read_csv(uri: str, on_bad_rows: str, report: ReadReport) -> pa.Table:
    header = csv_header(uri)
    with _stream(uri) as f:
        return parse_csv(f, uri, header, 1, 0, on_bad_rows, report)


def _scalar_text(v: Any) -> Any:
    """JSON scalars as text (ids and numbers alike, as CSV reads them); lists kept (embeddings)."""
    if v is None or isinstance(v, (list, dict)):
        return v
    return json.dumps(v) if isinstance(v, bool) else str(v)


def _column(values: list) -> pa.Array:
    """Arrow's inferred column, or the values' JSON text when they mix types (a list of a string
    and a number): the caller's validation then names the row."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                        pa.string())


def _read_jsonl_lines(uri: str, on_bad_rows: str, report: ReadReport, raw: Any = None,
                      first_line: int = 1) -> pa.Table:
    """The fallback pass: one line at a time (split at ``\n`` only), chunked into Arrow tables;
    ``raw``: a stream of a piece of the file whose first line is line ``first_line``."""
    parts, recs, rows = [], [], []

    def flush():
        if recs:
            keys = list(dict.fromkeys(k for r in recs for k in r))  # every row's fields, not the first's
            parts.append(_with_rows(pa.table({k: _column([r.get(k) for r in recs]) for k in keys}),
                                    np.asarray(rows)))
            recs.clear()
            rows.clear()

    with raw if raw is not None else _stream(uri) as raw:
        text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline="\n")
        try:
            for n, line in enumerate(text, start=first_line):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                except ValueError as err:
                    bad_row(uri, n, f"unparseable JSON line ({err})", on_bad_rows, report, "unparseable")
                    continue
                recs.append({k: _scalar_text(v) for k, v in rec.items()})
                rows.append(n)
                if len(recs) >= CHUNK_LINES:
                    flush()
        except UnicodeDecodeError as err:
            raise DataError(f"{uri}: not UTF-8 text ({err})") from None
    flush()
    if not parts:
        return pa.table({ROW: pa.array([], pa.int64())})
    return pa.concat_tables(parts, promote_options="permissive")


def _read_jsonl(uri: str, on_bad_rows: str, report: ReadReport) -> pa.Table:
    try:
        with _stream(uri) as f:
            table = pjson.read_json(f)
    except pa.ArrowInvalid:
        return _read_jsonl_lines(uri, on_bad_rows, report)
    return _with_rows(table, np.arange(1, table.num_rows + 1))


def read_table(uri: str, on_bad_rows: str, report: ReadReport) -> pa.Table:
    """The file's columns as read, plus ``row`` (see :data:`ROW`)."""
    if uri.endswith(".parquet") or uri.rstrip("/").endswith("parquet") or _is_dir(uri):
        table = _read_parquet(uri)
        return _with_rows(table, np.arange(1, table.num_rows + 1))
    if uri.endswith(".csv"):
        return _read_csv(uri, on_bad_rows, report)
    if uri.endswith((".jsonl", ".json", ".ndjson")):
        return _read_jsonl(uri, on_bad_rows, report)
    raise DataError(f"{uri}: unknown file type; use .parquet, .csv, .jsonl (JSON Lines)")


def _is_dir(uri: str) -> bool:
    fs, path, _ = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _read_parquet(uri: str) -> pa.Table:
    import ray

    if ray.is_initialized():
        return pa.concat_tables([ray.get(r) for r in ray.data.read_parquet(uri).to_arrow_refs()])
    fs, path, _ = filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def _require(uri: str, columns: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{uri}: missing required column(s) {missing}; found {sorted(c for c in columns if c != ROW)}")


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as strings (ids written as numbers become their text)."""
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), pa.string())])
    return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else pc.cast(col, pa.string())


def _drop(table: pa.Table, bad: pa.ChunkedArray | pa.Array, uri: str, msg: str, on_bad_rows: str,
          report: ReadReport, reason: str) -> pa.Table:
    """Rows where ``bad`` is true: an error naming the first one's row, or dropped and counted."""
    bad = pc.fill_null(bad, True)
    n = int(pc.sum(bad).as_py() or 0)
    if not n:
        return table
    first = int(pc.index(bad, True).as_py())
    bad_row(uri, int(table.column(ROW)[first].as_py()), msg, on_bad_rows, report, reason)
    report.skip(reason, n - 1)
    return table.filter(pc.invert(bad))


NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _numbers(table: pa.Table, name: str, uri: str, on_bad_rows: str, report: ReadReport) -> pa.Table:
    """``name`` as float64 (null when empty); a value that is not a number is a bad row."""
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
        return table.set_column(table.column_names.index(name), name, pc.cast(col, pa.float64()))
    col = _text(col)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)
    bad = pc.and_(pc.invert(empty), pc.invert(pc.fill_null(pc.match_substring_regex(col, NUMBER), True)))
    table = _drop(table, bad, uri, "field 'timestamp' or 'rating' is not a number", on_bad_rows, report, "unparseable")
    col = pc.if_else(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(_text(table.column(name))), ""), True),
                     pa.scalar(None, pa.string()), pc.utf8_trim_whitespace(_text(table.column(name))))
    return table.set_column(table.column_names.index(name), name, pc.cast(col, pa.float64()))


def _empty(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(col, ""), True)


def read_interactions(uri: str, on_bad_rows: str = "error", report: ReadReport | None = None) -> pa.Table:
    """Interactions (``user_id``, ``item_id``, optional ``timestamp``/``rating``/``review``) in the
    canonical shape (module docstring), validated column-wise."""
    report = report if report is not None else ReadReport()
    return canonical_interactions(read_table(uri, on_bad_rows, report), uri, on_bad_rows, report)


def canonical_interactions(t: pa.Table, uri: str, on_bad_rows: str, report: ReadReport) -> pa.Table:
    """Read columns (all of a file, or a piece of one) validated into the canonical shape."""
    _require(uri, t.column_names, ("user_id", "item_id"))
    t = t.set_column(t.column_names.index("user_id"), "user_id", _text(t.column("user_id")))
    t = t.set_column(t.column_names.index("item_id"), "item_id", _text(t.column("item_id")))
    for f in ("user_id", "item_id"):
        t = _drop(t, _empty(t.column(f)), uri, f"field {f!r} is empty", on_bad_rows, report, "missing_field")
    optional = [c for c in ("timestamp", "rating", "review") if c in t.column_names]
    for c in ("timestamp", "rating"):
        if c in optional:
            t = _numbers(t, c, uri, on_bad_rows, report)
    out = {"user": t.column("user_id"), "item": t.column("item_id"), "row": t.column(ROW)}
    if "timestamp" in optional:
        out["timestamp"] = pc.cast(pc.trunc(t.column("timestamp")), pa.int64())
    if "rating" in optional:
        out["rating"] = t.column("rating")
    if "review" in optional:
        out["review"] = pc.fill_null(_text(t.column("review")), "")
    return pa.table(out)


def read_items(uri: str, on_bad_rows: str = "error", report: ReadReport | None = None,
               keep_raw: tuple[str, ...] = ()) -> tuple[pa.Table, dict[str, pa.ChunkedArray]]:
    """Item metadata (``item_id``, ``title``, optional text fields) in the canonical shape plus
    ``row``, and the columns in ``keep_raw`` as read, aligned with the kept rows (e.g. a
    refresh's ``embedding``, validated by its caller)."""
    report = report if report is not None else ReadReport()
    return canonical_items(read_table(uri, on_bad_rows, report), uri, on_bad_rows, report, keep_raw)


def canonical_items(t: pa.Table, uri: str, on_bad_rows: str, report: ReadReport,
                    keep_raw: tuple[str, ...] = ()) -> tuple[pa.Table, dict[str, pa.ChunkedArray]]:
    """Read columns (all of a file, or a piece of one) validated into the canonical shape."""
    _require(uri, t.column_names, ("item_id", "title"))
    t = t.set_column(t.column_names.index("item_id"), "item_id", _text(t.column("item_id")))
    t = _drop(t, _empty(t.column("item_id")), uri, "field 'item_id' is empty", on_bad_rows, report, "missing_field")
    out = {"item": t.column("item_id")}
    for f in TEXT_FIELDS:
        out[f] = pc.fill_null(_text(t.column(f)), "") if f in t.column_names else pa.chunked_array(
            [pa.array([""] * t.num_rows, pa.string())])
    out["row"] = t.column(ROW)
    return pa.table(out), {c: t.column(c) for c in keep_raw if c in t.column_names}


def read_generic(
    interactions_uri: str, items_uri: str, on_bad_rows: str = "error"
) -> tuple[pa.Table, pa.Table, ReadReport]:
    """Read interactions (user_id, item_id, optional timestamp/rating/review) and item metadata."""
    report = ReadReport()
    interactions = read_interactions(interactions_uri, on_bad_rows, report)
    items = read_items(items_uri, on_bad_rows, report)[0].drop_columns(["row"])
    return interactions, items, report

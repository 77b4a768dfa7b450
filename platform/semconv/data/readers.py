"""Readers for raw recommendation data: LC-Rec JSON, and generic Parquet / CSV / JSON Lines.

Both return two Arrow tables in one canonical shape, so everything downstream is format-free:
- interactions: ``user`` (string), ``item`` (string), ``row`` (int64, 1-based source row for error
  messages and a stable tie-break), optional ``timestamp`` (int64), ``rating`` (float64),
  ``review`` (string);
- items: ``item`` (string), ``title``, ``description``, ``brand``, ``categories`` (strings).

Files are local paths or any ``pyarrow.fs`` URI. Parquet goes through Ray Data
(``ray.data.read_parquet``: sharded, parallel, the industrial-scale path) when Ray is running;
text formats are parsed line by line so a bad line is reported by its number, or skipped and
counted when ``on_bad_rows="skip"``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

INTERACTION_COLUMNS = {"user_id": "user", "item_id": "item", "timestamp": "timestamp",
                       "rating": "rating", "review": "review"}
ITEM_COLUMNS = ("item_id", "title", "description", "brand", "categories")
TEXT_FIELDS = ("title", "description", "brand", "categories")


class DataError(ValueError):
    """Bad input data; the message names the file, row and field."""


@dataclass
class ReadReport:
    """What a reader skipped (only with ``on_bad_rows="skip"``)."""

    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


def _open_text(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).resolve())
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{uri}: file not found") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{uri}: not UTF-8 text ({err})") from None


def _bad(uri: str, row: int, msg: str, on_bad_rows: str, report: ReadReport, reason: str) -> None:
    if on_bad_rows == "skip":
        report.skip(reason)
        return
    raise DataError(f"{uri}: row {row}: {msg} (set prepare.on_bad_rows=skip to skip such rows)")


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
def _records(uri: str, on_bad_rows: str, report: ReadReport) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(row_number, record)]) from a CSV or JSON Lines file."""
    text = _open_text(uri)
    out: list[tuple[int, dict]] = []
    if uri.endswith((".jsonl", ".json", ".ndjson")):
        columns: set[str] = set()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as err:
                _bad(uri, n, f"unparseable JSON line ({err})", on_bad_rows, report, "unparseable")
                continue
            columns |= rec.keys()
            out.append((n, rec))
        return sorted(columns), out
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{uri}: empty file (no header row)") from None
    for n, values in enumerate(reader, start=2):
        if not values:
            continue
        if len(values) != len(header):
            _bad(uri, n, f"expected {len(header)} fields, found {len(values)}", on_bad_rows, report, "unparseable")
            continue
        out.append((n, dict(zip(header, values))))
    return header, out


def read_rows(uri: str, on_bad_rows: str, report: ReadReport) -> tuple[list[str], list[tuple[int, dict]]]:
    if uri.endswith(".parquet") or uri.rstrip("/").endswith("parquet") or _is_dir(uri):
        table = _read_parquet(uri)
        rows = table.to_pylist()
        return table.column_names, list(enumerate(rows, start=1))
    if uri.endswith((".csv", ".jsonl", ".json", ".ndjson")):
        return _records(uri, on_bad_rows, report)
    raise DataError(f"{uri}: unknown file type; use .parquet, .csv, .jsonl (JSON Lines)")


def _is_dir(uri: str) -> bool:
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs.get_file_info(path).type == pafs.FileType.Directory
    return Path(uri.removeprefix("file://")).is_dir()


def _read_parquet(uri: str) -> pa.Table:
    import ray

    if ray.is_initialized():
        return pa.concat_tables([ray.get(r) for r in ray.data.read_parquet(uri).to_arrow_refs()])
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return pq.read_table(path, filesystem=fs)
    return pq.read_table(uri.removeprefix("file://"))


def _require(uri: str, columns: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{uri}: missing required column(s) {missing}; found {sorted(columns)}")


def read_interactions(uri: str, on_bad_rows: str = "error", report: ReadReport | None = None) -> pa.Table:
    """Interactions (``user_id``, ``item_id``, optional ``timestamp``/``rating``/``review``) in the
    canonical shape (module docstring)."""
    report = report if report is not None else ReadReport()
    cols, recs = read_rows(uri, on_bad_rows, report)
    _require(uri, cols, ("user_id", "item_id"))
    data: dict[str, list] = {"user": [], "item": [], "row": []}
    optional = [c for c in ("timestamp", "rating", "review") if c in cols]
    for c in optional:
        data[c] = []
    for n, rec in recs:
        user, item = rec.get("user_id"), rec.get("item_id")
        if user in (None, "") or item in (None, ""):
            field_ = "user_id" if user in (None, "") else "item_id"
            _bad(uri, n, f"field {field_!r} is empty", on_bad_rows, report, "missing_field")
            continue
        try:
            ts = int(float(rec["timestamp"])) if "timestamp" in optional and rec.get("timestamp") not in (None, "") else None
            rating = float(rec["rating"]) if "rating" in optional and rec.get("rating") not in (None, "") else None
        except (TypeError, ValueError):
            _bad(uri, n, "field 'timestamp' or 'rating' is not a number", on_bad_rows, report, "unparseable")
            continue
        data["user"].append(str(user))
        data["item"].append(str(item))
        data["row"].append(n)
        if "timestamp" in optional:
            data["timestamp"].append(ts)
        if "rating" in optional:
            data["rating"].append(rating)
        if "review" in optional:
            data["review"].append("" if rec.get("review") is None else str(rec["review"]))
    types = {"user": pa.string(), "item": pa.string(), "row": pa.int64(), "timestamp": pa.int64(),
             "rating": pa.float64(), "review": pa.string()}
    return pa.table({k: pa.array(v, types[k]) for k, v in data.items()})


def read_items(uri: str, on_bad_rows: str = "error", report: ReadReport | None = None,
               keep_raw: tuple[str, ...] = ()) -> tuple[pa.Table, dict[str, list]]:
    """Item metadata (``item_id``, ``title``, optional text fields) in the canonical shape plus
    ``row``, and the values of the columns in ``keep_raw`` as read, one per kept row (e.g. a
    refresh's ``embedding``, validated by its caller)."""
    report = report if report is not None else ReadReport()
    icols, irecs = read_rows(uri, on_bad_rows, report)
    _require(uri, icols, ("item_id", "title"))
    idata: dict[str, list] = {"item": [], **{f: [] for f in TEXT_FIELDS}, "row": []}
    raw = {c: [] for c in keep_raw if c in icols}
    for n, rec in irecs:
        if rec.get("item_id") in (None, ""):
            _bad(uri, n, "field 'item_id' is empty", on_bad_rows, report, "missing_field")
            continue
        idata["item"].append(str(rec["item_id"]))
        for f in TEXT_FIELDS:
            v = rec.get(f)
            idata[f].append("" if v is None else str(v))
        idata["row"].append(n)
        for c in raw:
            raw[c].append(rec.get(c))
    out = {k: pa.array(v, pa.int64() if k == "row" else pa.string()) for k, v in idata.items()}
    return pa.table(out), raw


def read_generic(
    interactions_uri: str, items_uri: str, on_bad_rows: str = "error"
) -> tuple[pa.Table, pa.Table, ReadReport]:
    """Read interactions (user_id, item_id, optional timestamp/rating/review) and item metadata."""
    report = ReadReport()
    interactions = read_interactions(interactions_uri, on_bad_rows, report)
    items = read_items(items_uri, on_bad_rows, report)[0].drop_columns(["row"])
    return interactions, items, report

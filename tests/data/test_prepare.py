"""prepare: readers, cleaning, dense ids, leave-last-out splits, resume and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semconv.artifacts import RunDir
from semconv.config import load_config
from semconv.data import prepare as prep
from semconv.data.readers import DataError
from semconv.protocol import split_rows

from ..test_protocol import _tuples, rows_by_hand

DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "Scientific"

INTER = [  # user, item, timestamp, review  (deliberately out of time order in the file)
    ("u1", "i2", 20, "great"), ("u1", "i1", 10, ""), ("u1", "i3", 30, "ok"), ("u1", "i4", 40, "meh"),
    ("u2", "i3", 5, ""), ("u2", "i1", 6, ""), ("u2", "i2", 7, "nice"),
    ("u3", "i4", 1, ""), ("u3", "i2", 2, ""),
]
ITEMS = [("i1", "Glove.", "Nitrile glove."), ("i2", "Tape.", ""), ("i3", "Pump.", "A pump."),
         ("i4", "Meter.", ".")]


def write_generic(tmp: Path, fmt: str, inter=INTER, items=ITEMS) -> tuple[str, str]:
    irows = [{"user_id": u, "item_id": i, "timestamp": t, "review": r} for u, i, t, r in inter]
    mrows = [{"item_id": i, "title": t, "description": d} for i, t, d in items]
    paths = []
    for name, rows in (("inter", irows), ("items", mrows)):
        p = tmp / f"{name}.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), p)
        elif fmt == "csv":
            with open(p, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        else:
            p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        paths.append(str(p))
    return paths[0], paths[1]


def generic_cfg(tmp: Path, inter: str, items: str, *extra: str):
    return load_config(None, [f"run_dir={tmp / 'run'}", "prepare.format=generic",
                              f"prepare.interactions={inter}", f"prepare.items={items}", *extra])


def test_demo_dataset_stats(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", f"prepare.dataset={DEMO_DATA}"])
    prep.run_prepare(cfg)
    run = RunDir(tmp_path)
    stats = run.manifest("sequences")["stats"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (8317, 4344, 58492)
    assert stats["avg_history_len"] == pytest.approx(7.0328, abs=1e-4)
    items = run.read_table("items")
    assert items.column("item_id").to_pylist() == list(range(4344))
    assert items.column("source_id").to_pylist()[:3] == ["0", "1", "2"]
    seqs = run.read_table("sequences")
    assert seqs.column("history")[1].as_py() == [9, 10, 11, 12, 6]  # SOURCE.md: user 1
    counts = run.manifest("splits")["rows_per_split"]
    assert counts == {"train": 58492 - 3 * 8317, "valid": 8317, "test": 8317}
    bounds = run.read_table("splits")  # one row per user: where the held-out targets are
    assert bounds.num_rows == 8317 and bounds.column("user_id").equals(seqs.column("user_id"))
    rows = split_rows(seqs, bounds, 20)  # the paper's rows, exactly the per-user loop's
    assert _tuples(rows) == rows_by_hand(seqs, 20) and rows.num_rows == sum(counts.values())


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_generic_readers_agree(tmp_path, fmt):
    inter, items = write_generic(tmp_path, fmt)
    prep.run_prepare(generic_cfg(tmp_path, inter, items))
    run = RunDir(tmp_path / "run")
    seqs = run.read_table("sequences").to_pylist()
    # dense item ids follow the catalogue order i1..i4 -> 0..3; histories sorted by timestamp
    assert [(s["source_user_id"], s["history"]) for s in seqs] == [
        ("u1", [0, 1, 2, 3]), ("u2", [2, 0, 1]), ("u3", [3, 1])]
    assert seqs[0]["reviews"] == ["", "great", "ok", "meh"]
    assert seqs[0]["timestamps"] == [10, 20, 30, 40]


def test_generic_parquet_through_ray_data(tmp_path, ray_local):
    inter, items = write_generic(tmp_path, "parquet")
    prep.run_prepare(generic_cfg(tmp_path, f"file://{inter}", items))
    assert RunDir(tmp_path / "run").manifest("sequences")["stats"]["interactions"] == len(INTER)


def test_k_core_is_iterative():
    t = pa.table({"user": ["a", "a", "b", "b", "c"], "item": ["x", "y", "x", "y", "x"]})
    # c has 1 interaction -> dropped; then x has 2, y has 2: stable at k=2
    out = prep.k_core(t, 2)
    assert sorted(zip(out.column("user").to_pylist(), out.column("item").to_pylist())) == [
        ("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]


def test_duplicate_interactions_keep_earliest(tmp_path):
    inter, items = write_generic(tmp_path, "jsonl", inter=INTER + [("u3", "i4", 99, "")])
    prep.run_prepare(generic_cfg(tmp_path, inter, items))
    run = RunDir(tmp_path / "run")
    assert run.read_table("sequences").column("history")[2].as_py() == [3, 1]
    assert run.manifest("sequences")["skipped"] == {"duplicate_interaction": 1}


def test_rerun_is_noop_and_partial_redoes_only_missing(tmp_path):
    inter, items = write_generic(tmp_path, "csv")
    cfg = generic_cfg(tmp_path, inter, items)
    prep.run_prepare(cfg)
    run = RunDir(tmp_path / "run")
    before = {n: run.manifest(n)["created_at"] + str(Path(run.path(n), "_SUCCESS").stat().st_mtime_ns)
              for n in ("items", "sequences", "splits")}
    prep.run_prepare(cfg)
    assert before == {n: run.manifest(n)["created_at"] + str(Path(run.path(n), "_SUCCESS").stat().st_mtime_ns)
                      for n in before}
    import shutil
    shutil.rmtree(run.path("splits"))
    Path(inter).unlink()  # raw data gone: splits must come from sequences/
    prep.run_prepare(cfg)
    assert run.is_complete("splits")
    assert str(Path(run.path("items"), "_SUCCESS").stat().st_mtime_ns) in before["items"]


def test_failed_run_leaves_complete_output_untouched(tmp_path, monkeypatch):
    inter, items = write_generic(tmp_path, "csv")
    cfg = generic_cfg(tmp_path, inter, items)
    prep.run_prepare(cfg)
    run = RunDir(tmp_path / "run")
    old = run.read_table("splits")
    import shutil
    shutil.copytree(run.path("splits"), tmp_path / "keep")
    shutil.rmtree(run.path("splits"))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("semconv.artifacts.pq.write_table", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prep.run_prepare(cfg)
    assert not Path(run.path("splits")).exists()
    assert not [p for p in Path(run.root).iterdir() if ".tmp-" in p.name]  # no debris
    assert run.read_table("items").num_rows == 4  # untouched
    monkeypatch.undo()
    prep.run_prepare(cfg)
    assert run.read_table("splits").equals(old)


# ---- bad input ----------------------------------------------------------------------------
def test_missing_column_names_file_and_column(tmp_path):
    _, items = write_generic(tmp_path, "csv")
    p = tmp_path / "inter.csv"
    p.write_text("user_id,timestamp\nu1,3\n")
    with pytest.raises(DataError, match=r"inter\.csv: missing required column\(s\) \['item_id'\]"):
        prep.run_prepare(generic_cfg(tmp_path, str(p), items))


def test_unparseable_line_names_row_or_is_skipped_and_counted(tmp_path):
    inter, items = write_generic(tmp_path, "jsonl")
    with open(inter, "a") as f:
        f.write('{"user_id": "u9", "item_id": \n')
    with pytest.raises(DataError, match=r"inter\.jsonl: row 10: unparseable JSON"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items))
    prep.run_prepare(generic_cfg(tmp_path, inter, items, "prepare.on_bad_rows=skip"))
    assert RunDir(tmp_path / "run").manifest("sequences")["skipped"] == {"unparseable": 1}


def test_csv_row_with_wrong_field_count(tmp_path):
    inter, items = write_generic(tmp_path, "csv")
    with open(inter, "a") as f:
        f.write("u9,i1\n")
    with pytest.raises(DataError, match=r"inter\.csv: row 11: expected 4 fields, found 2"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items))


def test_duplicate_item_ids(tmp_path):
    inter, items = write_generic(tmp_path, "jsonl", items=ITEMS + [("i2", "Other.", "")])
    with pytest.raises(DataError, match=r"items\.jsonl: row 5: duplicate item_id 'i2' \(first at row 2\)"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items))


def test_unknown_items_error_or_skip(tmp_path):
    inter, items = write_generic(tmp_path, "csv", inter=INTER + [("u1", "zz", 50, "")])
    with pytest.raises(DataError, match=r"row 11: field 'item_id' names unknown item 'zz'"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items))
    prep.run_prepare(generic_cfg(tmp_path, inter, items, "prepare.on_bad_rows=skip"))
    run = RunDir(tmp_path / "run")
    assert run.manifest("sequences")["skipped"] == {"unknown_item": 1}
    assert run.manifest("sequences")["stats"]["interactions"] == len(INTER)


def test_item_without_text(tmp_path):
    inter, items = write_generic(tmp_path, "jsonl", items=ITEMS[:3] + [("i4", " . ", "")])
    with pytest.raises(DataError, match=r"row 4: item 'i4' has no text"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items))


def test_empty_dataset(tmp_path):
    inter, items = write_generic(tmp_path, "csv")
    Path(inter).write_text("user_id,item_id\n")
    with pytest.raises(DataError, match="no interactions"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items))


def test_lcrec_missing_title_and_bad_json(tmp_path):
    d = tmp_path / "Toy"
    d.mkdir()
    (d / "Toy.inter.json").write_text(json.dumps({"0": [0, 1]}))
    (d / "Toy.item.json").write_text(json.dumps({"0": {"title": "A."}, "1": {"description": "b"}}))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"prepare.dataset={d}"])
    with pytest.raises(DataError, match=r"Toy\.item\.json: item '1': missing field 'title'"):
        prep.run_prepare(cfg)
    (d / "Toy.item.json").write_text('{"0": {"title": ')
    with pytest.raises(DataError, match=r"Toy\.item\.json: not valid JSON at line 1"):
        prep.run_prepare(cfg)


def test_generic_without_paths_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "prepare.format=generic"])
    with pytest.raises(DataError, match="needs prepare.interactions and prepare.items"):
        prep.run_prepare(cfg)

"""The sharded ``prepare``: its steps, composed without Ray, give the in-memory path's tables; the
Ray Data stage gives them too (``slow``: a few Ray Data passes, about a minute on 2 busy cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semconv.artifacts import RunDir
from semconv.config import load_config
from semconv.data import prepare as prep
from semconv.data import users as U
from semconv.data.config import PrepareConfig
from semconv.data.readers import DataError, ReadReport, has_text
from semconv.data.sharded import k_core

from .test_prepare import DEMO_DATA, INTER, ITEMS, generic_cfg, write_generic


# ---- the steps, without Ray -------------------------------------------------------------------
def test_partition_of_is_the_same_in_every_process_and_spreads_users():
    keys = pa.array([f"user{i}" for i in range(20_000)] + ["", "é"])
    here = U.partition_of(keys, 7)
    code = ("import sys, pyarrow as pa; sys.path.insert(0, 'platform'); from semconv.data.users import "
            "partition_of; print(partition_of(pa.array([f'user{i}' for i in range(20_000)] + ['', 'é']), 7).tolist())")
    there = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert here.tolist() == there  # Python's own str hash would differ per process
    assert U.partition_of(pa.chunked_array([keys[:5], keys[5:]]), 7).tolist() == here.tolist()
    assert U.partition_of(keys.slice(3), 7).tolist() == here[3:].tolist()
    counts = np.bincount(here, minlength=7)
    assert counts.min() > 0.9 * counts.mean()


def test_user_rows_sort_by_time_then_file_order_and_keep_the_earliest_repeat():
    t = pa.table({"user": ["b", "a", "b", "a", "b", "b"], "item": pa.array([1, 0, 2, 0, 1, 3], pa.int32()),
                  "pos": pa.array([5, 6, 7, 8, 9, 10], pa.int64()),
                  "timestamp": pa.array([30, 9, 10, None, 10, None], pa.int64())})
    rows = {r["user"]: r for r in U.user_rows(t).to_pylist()}
    # b: 10@7, 10@9 (repeat of item 1: the earlier one, ts 10 @ pos 9, wins over ts 30), 30@5, None
    assert rows["b"]["items"] == [2, 1, 3] and rows["b"]["timestamps"] == [10, 10, None]
    assert rows["b"]["first"] == 5 and rows["b"]["dups"] == 1
    assert rows["a"]["items"] == [0] and rows["a"]["first"] == 6 and rows["a"]["dups"] == 1


def _local_sharded(inter: pa.Table, items: pa.Table, parts: int, k: int, skip: bool) -> pa.Table:
    """The driver's steps of semconv.data.sharded with lists of blocks in place of Ray Data."""
    from types import SimpleNamespace

    from semconv.data.sharded import catalogue

    inter = inter.append_column("pos", pa.array(np.arange(inter.num_rows, dtype=np.int64)))
    rows = np.arange(1, items.num_rows + 1)
    keys = items.append_column("row", pa.array(rows)).append_column("pos", pa.array(rows))
    keys = keys.append_column("text", pa.array([has_text(a) or has_text(b) for a, b in zip(
        items.column("title").to_pylist(), items.column("description").to_pylist())]))
    keep = catalogue(SimpleNamespace(files=["items"]), keys, skip, ReadReport())
    kept = keys.column("item").filter(pa.array(keep)).combine_chunks()
    cols = [c for c in ("timestamp", "review") if c in inter.column_names]
    looked = pa.concat_tables([U.lookup(inter.slice(i, 5), kept, parts, cols)[0] for i in range(0, inter.num_rows, 5)])
    part = looked.column("part").to_numpy()
    users = [U.user_rows(looked.filter(pa.array(part == p)).drop_columns(["part"])) for p in range(parts)]
    alive, firsts, _, _ = k_core(lambda a: [U.scan(u, a, k) for u in users], len(kept), k)
    return pa.concat_tables([U.sequences(u, alive, k, firsts) for u in users]).sort_by("user_id")


@pytest.mark.parametrize("k,parts", [(0, 1), (0, 5), (2, 3), (3, 7)])
def test_steps_give_the_in_memory_sequences(k, parts):
    rng = np.random.default_rng(k * 10 + parts)
    n = 600
    items = pa.table({"item": [f"i{j}" for j in range(40)], "title": ["T"] * 39 + [" . "],
                      "description": [""] * 40, "brand": [""] * 40, "categories": [""] * 40})
    ts = rng.integers(0, 30, n).astype(object)  # few distinct times: many ties
    ts[rng.random(n) < 0.1] = None
    inter = pa.table({"user": [f"u{j}" for j in rng.integers(0, 60, n)],
                      "item": [f"i{j}" for j in rng.integers(0, 42, n)],  # i40, i41: unknown
                      "row": pa.array(np.arange(1, n + 1)), "timestamp": pa.array(list(ts), pa.int64()),
                      "review": [f"r{j}" for j in range(n)]})
    cfg = PrepareConfig(format="generic", k_core=k, on_bad_rows="skip")
    mem_inter, mem_items = prep.clean(inter, items, cfg, ReadReport(), "inter", "items")
    want = prep.build_tables(mem_inter, mem_items)[1]
    got = _local_sharded(inter, items, parts, k, skip=True)
    assert got.num_rows == want.num_rows > 0
    assert got.equals(want)


def test_k_core_stops_when_no_item_changes():
    # u0, u1 hold items 0 and 1; u2 holds 1 and 2: at k=2 item 2 falls, then u2, then nothing
    users = pa.table({"first": pa.array([0, 1, 2], pa.int64()), "user": ["u0", "u1", "u2"],
                      "items": pa.array([[0, 1], [0, 1], [1, 2]], pa.list_(pa.int32())),
                      "dups": pa.array([0, 0, 1], pa.int64())})
    passes = []

    def scan(alive):
        passes.append(alive.copy())
        return [U.scan(users.slice(0, 2), alive, 2), U.scan(users.slice(2), alive, 2)]

    alive, firsts, lens, dups = k_core(scan, 3, 2)
    assert alive.tolist() == [True, True, False] and firsts.tolist() == [0, 1] and lens.tolist() == [2, 2]
    assert len(passes) == 2 and dups == 1


# ---- the Ray Data stage -----------------------------------------------------------------------
def _tables(run_dir) -> dict[str, pa.Table]:
    run = RunDir(run_dir)
    return {n: run.read_table(n) for n in ("items", "sequences", "splits")}


@pytest.mark.slow
def test_demo_dataset_is_the_same_on_ray_data(tmp_path, ray_local):
    for path in ("off", "on"):
        prep.run_prepare(load_config(None, [f"run_dir={tmp_path / path}", f"prepare.dataset={DEMO_DATA}",
                                            f"prepare.ray_data={path}", "prepare.num_shards=3"]))
    mem, ray_ = _tables(tmp_path / "off"), _tables(tmp_path / "on")
    for name in mem:
        assert mem[name].schema == ray_[name].schema and mem[name].equals(ray_[name]), name
    assert len(list((tmp_path / "on" / "sequences").glob("*.parquet"))) == 3
    m1, m2 = RunDir(tmp_path / "off").manifest("sequences"), RunDir(tmp_path / "on").manifest("sequences")
    assert (m1["stats"], m1["skipped"], m1["rows"], m1["schema"]) == (m2["stats"], m2["skipped"], m2["rows"], m2["schema"])


MESSY_INTER = INTER + [("u4", "i1", 3, ""), ("u1", "i2", 5, "again"),  # a repeat, kept at its earlier time
                       ("u4", "zz", 4, ""), ("u5", "i3", None, ""), ("u5", "i1", 1, "x")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_generic_files_in_pieces_are_the_same_on_ray_data(tmp_path, ray_local, fmt):
    items = ITEMS + [("i5", ".", "")]
    inter, items = write_generic(tmp_path, fmt, inter=MESSY_INTER * 3, items=items)
    if fmt == "parquet":  # row groups of 4: pieces of a few rows
        pq.write_table(pq.read_table(inter), inter, row_group_size=4)
    for path in ("off", "on"):
        prep.run_prepare(generic_cfg(tmp_path / path, inter, items, f"prepare.ray_data={path}",
                                     "prepare.on_bad_rows=skip", "prepare.num_blocks=5", "prepare.k_core=2"))
    mem, ray_ = _tables(tmp_path / "off" / "run"), _tables(tmp_path / "on" / "run")
    for name in mem:
        assert mem[name].equals(ray_[name]), name
    assert mem["sequences"].num_rows > 0
    skipped = [RunDir(tmp_path / p / "run").manifest("sequences")["skipped"] for p in ("off", "on")]
    assert skipped[0] == skipped[1] and skipped[1]["unknown_item"] == 3


@pytest.mark.slow
def test_errors_name_the_first_bad_row_of_the_file(tmp_path, ray_local):
    rows = INTER * 40
    inter, items = write_generic(tmp_path, "csv", inter=rows + [("u9", "zz", 1, "")] + rows + [("u9", "yy", 1, "")])
    with pytest.raises(DataError, match=r"inter\.csv: row 362: field 'item_id' names unknown item 'zz' \(2 such"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items, "prepare.ray_data=on", "prepare.num_blocks=6"))
    with open(inter, "a") as f:  # a bad row in the last piece, and one in an earlier piece
        f.write("u9,i1\n")
    text = open(inter).read().splitlines()
    text[100] = "u9"
    open(inter, "w").write("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"inter\.csv: row 101: expected 4 fields, found 1"):
        prep.run_prepare(generic_cfg(tmp_path, inter, items, "prepare.ray_data=on", "prepare.num_blocks=6"))


@pytest.mark.slow
def test_raw_files_and_run_dir_on_s3(tmp_path, ray_local, s3_server):
    import pyarrow.fs as pafs

    inter, items = write_generic(tmp_path, "jsonl", inter=MESSY_INTER * 3)
    uris = []
    for local in (inter, items):
        uri = s3_server(f"raw/{local.rsplit('/', 1)[1]}")
        fs, path = pafs.FileSystem.from_uri(uri)
        pafs.copy_files(local, path, destination_filesystem=fs)
        uris.append(uri)
    prep.run_prepare(generic_cfg(tmp_path / "off", inter, items, "prepare.ray_data=off", "prepare.on_bad_rows=skip"))
    cfg = load_config(None, [f"run_dir={s3_server('runs/sharded')}", "prepare.format=generic",
                             f"prepare.interactions={uris[0]}", f"prepare.items={uris[1]}", "prepare.ray_data=on",
                             "prepare.on_bad_rows=skip", "prepare.num_blocks=4"])
    prep.run_prepare(cfg)
    mem, ray_ = _tables(tmp_path / "off" / "run"), _tables(cfg.run_dir)
    for name in mem:
        assert mem[name].equals(ray_[name]), name

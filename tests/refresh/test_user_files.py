"""User tables read and rewritten file by file: a refresh opens only the files holding its users."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semconv.artifacts import RunDir
from semconv.protocol import split_bounds
from semconv.refresh.histories import extend_sequences
from semconv.refresh.user_files import known_users, read_users, user_files, write_replaced

USERS = 40


def _sequences() -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"user_id": pa.array(np.arange(USERS), pa.int64()),
                     "source_user_id": [f"u{u}" for u in range(USERS)],
                     "history": pa.array([rng.choice(50, rng.integers(1, 6), replace=False).tolist()
                                          for _ in range(USERS)], pa.list_(pa.int64()))})


@pytest.fixture
def run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_table("sequences", _sequences(), num_shards=4)  # users 0-9, 10-19, 20-29, 30-39
    run.write_table("splits", split_bounds(_sequences()), num_shards=4)
    return run


def test_ranges_come_from_the_footers_and_only_holding_files_are_opened(run):
    files = user_files(run, "sequences")
    assert files.lo.tolist() == [0, 10, 20, 30] and files.hi.tolist() == [9, 19, 29, 39]
    assert files.num_users == USERS and files.max_user == USERS - 1
    assert files.holding(np.array([12, 15, 31])) == [1, 3] and files.holding(np.array([40])) == []
    got = read_users(files, np.array([31, 12, 15, 99]))
    want = _sequences().take(pa.array([12, 15, 31]))
    assert got.equals(want)
    assert read_users(files, np.array([99]), ["user_id", "history"]).num_rows == 0


def test_row_groups_whose_range_holds_no_user_are_skipped(tmp_path):
    path = tmp_path / "part-00000.parquet"
    pq.write_table(_sequences(), path, row_group_size=10)  # 4 row groups in one file
    run = RunDir(tmp_path)
    with run.writing("sequences") as tmp:
        os.replace(path, tmp / path.name)
    files = user_files(run, "sequences")
    opened = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, *a, **kw):
        opened.append(i)
        return real(self, i, *a, **kw)

    pq.ParquetFile.read_row_group = spy
    try:
        got = read_users(files, np.array([3, 25]))
    finally:
        pq.ParquetFile.read_row_group = real
    assert got["user_id"].to_pylist() == [3, 25] and opened == [0, 2]


def test_known_users_finds_source_ids_and_the_next_free_id(run):
    known = known_users(user_files(run, "sequences"))
    rows = known.lookup(pa.array(["u7", "nobody", "u33"]))
    assert sorted(zip(rows["source_user_id"].to_pylist(), rows["user_id"].to_pylist())) == [("u33", 33), ("u7", 7)]
    assert known.next_id == USERS


def test_replaced_rows_rewrite_only_their_files_and_new_users_go_last(run, tmp_path):
    files = user_files(run, "sequences")
    new_users = pa.table({"user_id": pa.array([USERS], pa.int64()), "source_user_id": ["new"]})
    delta_users, delta_items = np.array([12, 12, 15, USERS]), np.array([49, 48, 47, 1])
    old = read_users(files, delta_users)
    rows, touched, _ = extend_sequences(old, delta_users, delta_items, None, new_users)
    out = tmp_path / "out"
    out.mkdir()
    report = write_replaced(files, rows, out)
    assert report == {"files_carried_over": 3, "files_rewritten": 1, "files_added": 1, "rows": USERS + 1}
    for i in (0, 2, 3):  # the same bytes: hard links of the base's files
        assert os.stat(out / f"part-{i:05d}.parquet").st_ino == os.stat(files.paths[i]).st_ino
    got = pa.concat_tables([pq.read_table(out / f"part-{i:05d}.parquet") for i in range(5)])
    want, _, _ = extend_sequences(_sequences(), delta_users, delta_items, None, new_users)
    assert got.equals(want)  # the whole table, as if every row had been rebuilt
    splits_out = tmp_path / "splits"
    splits_out.mkdir()
    write_replaced(user_files(run, "splits"), split_bounds(rows), splits_out)
    got = pa.concat_tables([pq.read_table(p) for p in sorted(splits_out.iterdir())])
    assert got.equals(split_bounds(want)) and set(touched.tolist()) == {12, 15, USERS}


def test_ranges_use_the_parquet_leaf_of_user_id_when_a_struct_column_comes_first(tmp_path):
    t = pa.table({"meta": pa.array([{"a": i, "b": -i} for i in range(USERS)]),
                  "user_id": pa.array(np.arange(USERS) + 100, pa.int64())})
    run = RunDir(tmp_path)
    with run.writing("sequences") as tmp:
        pq.write_table(t, tmp / "part-00000.parquet", row_group_size=10)
    files = user_files(run, "sequences")
    assert files.lo.tolist() == [100] and files.hi.tolist() == [100 + USERS - 1]
    assert read_users(files, np.array([105, 131]))["user_id"].to_pylist() == [105, 131]

"""run_tasks: inputs from a run directory -> sft/ with a manifest; resume; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from semconv.artifacts import ArtifactError, RunDir
from semconv.config import PipelineConfig
from semconv.prompts import HISTORY_HEADER, PREAMBLE
from semconv.tasks.build import build_sft
from semconv.tasks.config import TasksConfig
from semconv.tasks.inputs import TaskInputError, load_inputs
from semconv.tasks.rows import SFT_SCHEMA
from semconv.tasks.stage import run_tasks


def config(path: Path, **tasks) -> PipelineConfig:
    return PipelineConfig(run_dir=str(path), tasks=tasks)


def test_run_tasks_writes_sft_with_counts_and_then_skips(tmp_path, toy):
    toy.write_run(tmp_path, toy.make_tables(reviews=True))
    out = run_tasks(config(tmp_path, sa_init=True, ts_align=True))
    run = RunDir(tmp_path)
    assert out == {"sft": run.path("sft")} and run.is_complete("sft")
    table = run.read_table("sft")
    assert table.schema.equals(SFT_SCHEMA)
    tasks = table["task"].to_pylist()
    assert all(p.startswith(HISTORY_HEADER if t == "history" else PREAMBLE)
               for t, p in zip(tasks, table["prompt"].to_pylist()))
    manifest = run.manifest("sft")
    counts = manifest["rows_per_task"]
    assert counts == {  # history: one train row per user (each holds all its train targets) + 3 valid
        "history": 3 + 3, "sequential": 0, "negative": 12, "item2title": 6, "title2item": 6,
        "item2description": 4, "description2item": 4, "query2item": 6,
        "token2keywords": 8, "keywords2token": 8,
    }
    assert manifest["rows"] == table.num_rows == sum(counts.values())
    assert manifest["rows_per_task_split"]["history"] == {"train": 3, "valid": 3}
    assert set(table["split"].to_pylist()) == {"train", "valid"}
    sa_init = json.loads((Path(run.path("sft")) / "sa_init.json").read_text())
    assert set(sa_init) == {"<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>", "<b_2>", "<c_0>", "<c_1>"}

    files = {p: p.stat().st_mtime_ns for p in Path(run.path("sft")).iterdir()}
    assert run_tasks(config(tmp_path, sa_init=True, ts_align=True)) == out
    assert {p: p.stat().st_mtime_ns for p in Path(run.path("sft")).iterdir()} == files


def test_rows_are_written_as_built_in_shards_of_bounded_size(tmp_path, toy):
    toy.write_run(tmp_path, toy.make_tables())
    run_tasks(config(tmp_path, rows_per_shard=7))
    run = RunDir(tmp_path)
    sft = Path(run.path("sft"))
    assert not (sft / "sa_init.json").exists() and run.manifest("sft")["sa_init"] is None
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in sorted(sft.glob("part-*.parquet"))]
    assert len(sizes) > 2 and all(n == 7 for n in sizes[:-1]) and 0 < sizes[-1] <= 7
    # the same rows in the same order as the table built in one piece
    whole = build_sft(load_inputs(run), TasksConfig(), 0).table
    assert run.read_table("sft").equals(whole) and run.manifest("sft")["rows"] == whole.num_rows == sum(sizes)


def test_switching_tasks_off_removes_their_rows(tmp_path, toy):
    toy.write_run(tmp_path, toy.make_tables())
    run_tasks(config(tmp_path, negative=False, text=False))
    tasks = set(RunDir(tmp_path).read_table("sft")["task"].to_pylist())
    assert tasks == {"history", "query2item"}


def test_the_prompt_objective_writes_per_target_sequential_rows(tmp_path, toy):
    toy.write_run(tmp_path, toy.make_tables())
    run_tasks(config(tmp_path, sequential_objective="prompt", negative=False, text=False, query=False))
    counts = RunDir(tmp_path).manifest("sft")["rows_per_task_split"]
    assert counts["sequential"] == {"train": 4, "valid": 3} and counts["history"] == {"train": 0, "valid": 0}


def test_missing_input_artifact_is_named(tmp_path, toy):
    tables = toy.make_tables()
    del tables["item_codes"]
    toy.write_run(tmp_path, tables)
    with pytest.raises(ArtifactError, match="'item_codes' is missing"):
        run_tasks(config(tmp_path))


def test_item_codes_missing_items_is_a_clear_error(tmp_path, toy):
    codes = dict(toy.codes)
    del codes[5]
    toy.write_run(tmp_path, toy.make_tables(codes=codes))
    with pytest.raises(TaskInputError, match=r"item_codes/ lacks codes for 1 of 6 items \(e.g. item_id \[5\]\)"):
        run_tasks(config(tmp_path))
    assert not RunDir(tmp_path).is_complete("sft")
    assert not list(tmp_path.glob("sft*"))  # nothing half-written


def test_history_referencing_an_unknown_item_is_a_clear_error(tmp_path, toy):
    tables = toy.make_tables()
    seq = tables["sequences"]
    histories = seq["history"].to_pylist()
    histories[1] = histories[1] + [9]
    tables["sequences"] = seq.set_column(2, "history", pa.array(histories, pa.list_(pa.int64())))
    toy.write_run(tmp_path, tables)
    with pytest.raises(TaskInputError, match=r"sequences/ row 1 \(user_id 1\): history references item_id 9"):
        run_tasks(config(tmp_path))


def test_split_bounds_that_do_not_fit_a_history_are_a_clear_error(tmp_path, toy):
    tables = toy.make_tables()
    splits = tables["splits"]
    tests = splits["test"].to_pylist()
    tests[1] = 9  # user 1 has 5 items
    tables["splits"] = splits.set_column(2, "test", pa.array(tests, pa.int32()))
    toy.write_run(tmp_path, tables)
    with pytest.raises(TaskInputError, match=r"splits/ user_id 1: valid 3 / test 9 do not fit their history of 5"):
        run_tasks(config(tmp_path))


def test_shared_codes_and_misaligned_reviews_are_errors(tmp_path, toy):
    codes = dict(toy.codes)
    codes[5] = codes[4]
    toy.write_run(tmp_path / "a", toy.make_tables(codes=codes))
    with pytest.raises(TaskInputError, match="shared by several items"):
        run_tasks(config(tmp_path / "a"))
    tables = toy.make_tables(reviews=True)
    seq = tables["sequences"]
    reviews = seq["reviews"].to_pylist()
    reviews[2] = reviews[2][:-1]
    tables["sequences"] = seq.set_column(3, "reviews", pa.array(reviews, pa.list_(pa.string())))
    toy.write_run(tmp_path / "b", tables)
    with pytest.raises(TaskInputError, match=r"sequences/ row 2 \(user_id 2\): reviews has a different length"):
        run_tasks(config(tmp_path / "b"))


def test_a_user_with_every_item_cannot_get_negatives(tmp_path, toy):
    tables = toy.make_tables()
    seq = tables["sequences"]
    histories = seq["history"].to_pylist()
    histories[0] = [0, 1, 2, 3, 4, 5]  # user 0 interacted with the whole catalogue
    tables["sequences"] = seq.set_column(2, "history", pa.array(histories, pa.list_(pa.int64())))
    toy.write_run(tmp_path, tables)
    with pytest.raises(ValueError, match="user 0 has interacted with all 6 items"):
        run_tasks(config(tmp_path))
    run_tasks(config(tmp_path, negative=False))
    t = RunDir(tmp_path).read_table("sft")
    assert not pc.any(pc.equal(t["task"], "negative")).as_py()

"""History-level sequential rows: windows, row shape, weights, and the stage's objective switch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from semconv.codes import item_tokens
from semconv.prompts import HISTORY_HEADER, history_prompt
from semconv.tasks.history import heldout_history_rows, history_rows, history_windows, train_histories


@pytest.mark.parametrize("length", [0, 1, 2, 5, 21, 22, 41, 60])
def test_windows_make_every_item_after_the_first_a_target_once(length):
    max_len = 20
    windows = history_windows(length, max_len)
    targets = [t for s, e in windows for t in range(s + 1, e)]
    assert sorted(targets) == list(range(1, length))
    assert all(e - s <= max_len + 1 for s, e in windows)


def test_train_histories_hold_out_the_valid_and_test_items():
    assert train_histories([[1, 2, 3, 4, 5], [7, 8, 9], [4, 5]]) == [[1, 2, 3], [7], [4, 5]]


CODES = np.array([[i % 4, i // 4 % 4, 0, i // 16] for i in range(64)])


def test_a_history_row_is_header_first_item_then_every_later_item():
    table = history_rows([7], [[3, 1, 4, 1, 5]], CODES, max_len=20)
    row = table.to_pylist()[0]
    assert row["task"] == "history" and row["split"] == "train" and row["user_id"] == 7
    assert row["prompt"] == HISTORY_HEADER + item_tokens(CODES[3])
    assert row["label"] == "".join(item_tokens(CODES[i]) for i in [1, 4, 1, 5])
    # the whole row is the inference prompt of the full history
    assert row["prompt"] + row["label"] == history_prompt(CODES[[3, 1, 4, 1, 5]].tolist())


def test_long_histories_are_windowed_and_repeats_copy_rows():
    hist = list(range(30))
    table = history_rows([1, 2], [hist, [5]], CODES, max_len=10, repeats=np.array([2, 3]))
    # 30 items, windows of <= 11: 3 windows; user 2 has a single item (no target): none
    assert table.num_rows == 2 * len(history_windows(30, 10)) == 6
    assert set(table.column("user_id").to_pylist()) == {1}


def test_heldout_rows_are_the_inference_prompt_of_the_valid_history():
    valid = pa.table({"user_id": [3], "history": [[2, 9]], "target": [11]})
    row = heldout_history_rows(valid, CODES).to_pylist()[0]
    assert row["prompt"] == history_prompt(CODES[[2, 9]].tolist())
    assert row["label"] == item_tokens(CODES[11]) and row["split"] == "valid"


def test_ray_data_path_gives_the_same_history_rows_as_the_local_path(tables, ray_local):
    from semconv.tasks.build import build_sft
    from semconv.tasks.config import TasksConfig
    from semconv.tasks.inputs import validate_inputs

    inputs = validate_inputs(**tables)
    only = dict(negative=False, text=False, query=False, weights={"history": 2.0})
    local = build_sft(inputs, TasksConfig(ray_data="off", batch_size=2, **only), 0)
    on_ray = build_sft(inputs, TasksConfig(ray_data="on", batch_size=1, **only), 0)
    assert (local.summary["ray_data"], on_ray.summary["ray_data"]) == (False, True)
    assert local.summary["rows_per_task"]["history"] == {"train": 3 * 2, "valid": 3}
    assert on_ray.table.equals(local.table)

"""Text alignment: codes <-> title and codes <-> description, both directions."""

from __future__ import annotations

import pyarrow.compute as pc

from semconv.prompts import wrap
from semconv.tasks.build import build_sft
from semconv.tasks.config import TasksConfig
from semconv.tasks.inputs import validate_inputs
from semconv.tasks.text import clean_text

ONE_TEMPLATE = {
    "item2title": ["Title of {item}?"], "title2item": ["Item titled {title}?"],
    "item2description": ["Describe {item}."], "description2item": ["Item described as {description}?"],
}
TEXT_ONLY = dict(sequential=False, negative=False, query=False, templates=ONE_TEMPLATE)


def task_rows(table, task):
    return [(r["prompt"], r["label"], r["item_id"], r["user_id"])
            for r in table.filter(pc.equal(table["task"], task)).to_pylist()]


def test_titles_map_both_ways(tables, toy):
    t = build_sft(validate_inputs(**tables), TasksConfig(**TEXT_ONLY), 0).table
    assert task_rows(t, "item2title")[:2] == [
        (wrap("Title of <a_0><b_0><c_0>?"), "Digital Lab Thermometer", 0, None),
        (wrap("Title of <a_0><b_1><c_0>?"), "Glass Lab Bottle", 1, None),
    ]
    assert task_rows(t, "title2item")[3] == (wrap("Item titled Steel Torque Wrench?"), "<a_1><b_0><c_1>", 3, None)
    assert [r[2] for r in task_rows(t, "title2item")] == list(range(6))


def test_empty_descriptions_are_skipped(tables):
    t = build_sft(validate_inputs(**tables), TasksConfig(**TEXT_ONLY), 0).table
    # Item 1's description is "." and item 2's is "": neither gives a row.
    assert [r[2] for r in task_rows(t, "item2description")] == [0, 3, 4, 5]
    assert [r[2] for r in task_rows(t, "description2item")] == [0, 3, 4, 5]
    assert task_rows(t, "description2item")[2] == (
        wrap("Item described as Hard start kit for compressors.?"), "<a_2><b_1><c_0>", 4, None)
    assert task_rows(t, "item2description")[0][1] == "Reads the temperature of liquids fast."


def test_long_texts_are_cut_to_max_words(tables):
    t = build_sft(validate_inputs(**tables), TasksConfig(max_text_words=3, **TEXT_ONLY), 0).table
    assert task_rows(t, "item2description")[0][1] == "Reads the temperature"
    assert clean_text("  a\n b   c d ", 3) == "a b c"
    assert clean_text(" . ", 3) == "" and clean_text(None, 3) == ""


def test_text_switch_and_weights(tables):
    inputs = validate_inputs(**tables)
    off = build_sft(inputs, TasksConfig(sequential=False, negative=False, query=False, text=False), 0).table
    assert off.num_rows == 0
    cfg = TasksConfig(weights={"item2title": 1.5, "description2item": 0.0}, **TEXT_ONLY)
    t = build_sft(inputs, cfg, 0).table
    counts = {task: len(task_rows(t, task)) for task in ONE_TEMPLATE}
    assert counts == {"item2title": 9, "title2item": 6, "item2description": 4, "description2item": 0}

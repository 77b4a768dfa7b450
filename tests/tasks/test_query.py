"""Query alignment: review text when the data has it, item metadata otherwise."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from semconv.prompts import wrap
from semconv.tasks.build import build_sft
from semconv.tasks.config import TasksConfig
from semconv.tasks.inputs import TaskInputError, validate_inputs
from semconv.tasks.query import category_leaf, metadata_queries

QUERY_ONLY = dict(sequential=False, negative=False, text=False,
                  templates={"query2item": ["Find: {query}"]})


def queries(tables, **cfg):
    res = build_sft(validate_inputs(**tables), TasksConfig(**QUERY_ONLY, **cfg), 0)
    t = res.table
    assert set(t["task"].to_pylist()) <= {"query2item"}
    return [(r["prompt"], r["label"], r["user_id"], r["item_id"]) for r in t.to_pylist()], res.summary


def test_reviews_become_queries_for_the_reviewed_item_except_held_out_ones(review_tables):
    got, summary = queries(review_tables, query_source="reviews")
    # Empty and "." reviews give nothing; each user's last two reviews are valid/test items.
    assert got == [
        (wrap("Find: accurate thermometer"), "<a_0><b_0><c_0>", 0, 0),
        (wrap("Find: kit works"), "<a_2><b_1><c_0>", 1, 4),
        (wrap("Find: sticky tape"), "<a_2><b_2><c_1>", 1, 5),
    ]
    assert summary["query"] == {"source": "reviews", "review_queries": 3, "metadata_queries": 0}


def test_auto_with_reviews_adds_metadata_queries_for_uncovered_items(review_tables):
    got, summary = queries(review_tables, query_source="auto")
    assert [g[3] for g in got] == [0, 4, 5, 1, 2, 3]
    assert [g[2] for g in got] == [0, 1, 1, None, None, None]
    assert summary["query"]["source"] == "reviews+metadata"


def test_without_reviews_queries_come_from_metadata(tables):
    got, summary = queries(tables)  # auto
    assert summary["query"] == {"source": "metadata", "review_queries": 0, "metadata_queries": 6}
    by_item = {g[3]: g[0] for g in got}
    # Category leaf + brand + the title's rarest words (brand and leaf words, singular or
    # plural, left out).
    assert by_item[3] == wrap("Find: wrenches from Acme with steel, torque")  # "wrench" ~ leaf
    assert by_item[2] == wrap("Find: gloves with nitrile, safety")  # no brand
    assert by_item[1] == wrap("Find: bottles from Pyrex with glass, lab")
    assert all(g[2] is None for g in got)


def test_query_keywords_controls_title_words(tables):
    qs = metadata_queries(tables["items"], n_keywords=1)
    # "thermometer" repeats the leaf; "lab" is in two titles, "digital" in one: the rarest stays.
    assert qs[0] == "thermometers from Acme with digital"


def test_reviews_source_without_reviews_column_is_an_error(tables):
    with pytest.raises(TaskInputError, match="no 'reviews' column"):
        queries(tables, query_source="reviews")


def test_category_leaf():
    assert category_leaf("Industrial & Scientific,Lab,Bottles") == "Bottles"
    assert category_leaf("A > B > Leaf") == "Leaf"
    assert category_leaf("") == "" and category_leaf(None) == ""


def test_query_switch_off(review_tables):
    t = build_sft(validate_inputs(**review_tables), TasksConfig(query=False), 0).table
    assert t.num_rows > 0 and not pc.any(pc.equal(t["task"], "query2item")).as_py()

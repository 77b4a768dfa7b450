"""Sequential alignment and negative-behaviour prompts on the hand-made catalogue."""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from semconv.codes import item_tokens
from semconv.prompts import PREAMBLE, sequential_prompt, wrap
from semconv.protocol import split_bounds
from semconv.tasks.build import build_sft
from semconv.tasks.config import TasksConfig
from semconv.tasks.inputs import validate_inputs
from semconv.tasks.sampling import NegativeSamplingError, repeat_counts, sample_negatives
from semconv.tasks.templates import DEFAULT_TEMPLATES

# These tests are about the paper's per-prompt sequential rows (tests/tasks/test_history.py covers
# the default history-level objective).
BEHAVIOUR_ONLY = dict(text=False, query=False, sequential_objective="prompt")


def build(tables, seed=0, **cfg):
    return build_sft(validate_inputs(**tables), TasksConfig(**{"sequential_objective": "prompt", **cfg}), seed).table


def rows(table: pa.Table, task: str, split: str = "train") -> list[dict]:
    mask = pc.and_(pc.equal(table["task"], task), pc.equal(table["split"], split))
    return table.filter(mask).to_pylist()


def test_sequential_rows_list_history_codes_and_label_the_target(tables):
    t = build(tables, negative=False, templates={"sequential": ["History {history}."]}, **BEHAVIOUR_ONLY)
    got = [(r["user_id"], r["prompt"], r["label"], r["item_id"]) for r in rows(t, "sequential")]
    assert got == [
        (0, wrap("History <a_0><b_0><c_0>."), "<a_0><b_1><c_0>", 1),
        (1, wrap("History <a_1><b_0><c_1>."), "<a_2><b_1><c_0>", 4),
        (1, wrap("History <a_1><b_0><c_1>, <a_2><b_1><c_0>."), "<a_2><b_2><c_1>", 5),
        (2, wrap("History <a_2><b_2><c_1>."), "<a_2><b_1><c_0>", 4),
    ]
    assert set(t["task"].to_pylist()) == {"sequential"}


def test_valid_rows_use_the_inference_prompt_and_every_user(tables, toy):
    CODES = toy.codes
    t = build(tables, negative=False, **BEHAVIOUR_ONLY)
    valid = rows(t, "sequential", "valid")
    expected = {0: ([0, 1], 2), 1: ([3, 4, 5], 0), 2: ([5, 4], 1)}
    assert sorted(r["user_id"] for r in valid) == [0, 1, 2]
    for r in valid:
        history, target = expected[r["user_id"]]
        assert r["prompt"] == sequential_prompt([CODES[i] for i in history])
        assert r["label"] == item_tokens(CODES[target])
    # Train prompts are paraphrases from the config, all inside the shared preamble.
    paraphrases = {
        sequential_prompt([CODES[0]], t) for t in DEFAULT_TEMPLATES["sequential"]
    }
    u0 = [r for r in rows(t, "sequential") if r["user_id"] == 0]
    assert len(u0) == 1 and u0[0]["prompt"] in paraphrases


def test_every_train_prompt_is_a_paraphrase_spelled_like_the_inference_prompt(tables, toy):
    t = build(tables, negative=False, **BEHAVIOUR_ONLY)
    train = {(s[1], s[3]): s[2] for s in toy.splits if s[0] == "train"}
    seq = rows(t, "sequential")
    assert len(seq) == len(train) == 4
    for r in seq:
        history = train[(r["user_id"], r["item_id"])]
        codes = [toy.codes[i] for i in history]
        assert r["prompt"] in {sequential_prompt(codes, p) for p in DEFAULT_TEMPLATES["sequential"]}


def test_max_valid_rows_keeps_a_seeded_subset(tables):
    t = build(tables, negative=False, max_valid_rows=2, **BEHAVIOUR_ONLY)
    assert len(rows(t, "sequential", "valid")) == 2


@pytest.mark.parametrize("ratio", [1, 3, 5])
def test_negatives_avoid_the_users_items_and_keep_the_ratio_exactly(tables, toy, ratio):
    CODES, HISTORIES = toy.codes, toy.histories
    t = build(tables, negative_ratio=ratio, templates={"negative": ["Unlikely after {history}?"]},
              **BEHAVIOUR_ONLY)
    negatives = rows(t, "negative")
    positives = rows(t, "sequential")
    assert len(negatives) == ratio * len(positives) == ratio * 4
    per_positive = Counter(
        (r["user_id"], re.search(r"Unlikely after (.*)\?", r["prompt"]).group(1)) for r in negatives
    )
    assert sorted(per_positive.values()) == [ratio] * 4
    for r in negatives:
        assert r["item_id"] not in HISTORIES[r["user_id"]]  # full history: train, valid and test items
        assert r["label"] == item_tokens(CODES[r["item_id"]])
        assert r["prompt"].startswith(PREAMBLE)


def test_negatives_are_distinct_when_the_catalogue_allows_and_deterministic(toy):
    rng = np.random.default_rng(5)
    n_items, n_users = 60, 12
    codes = {i: (i // 10, i % 10) for i in range(n_items)}
    base = toy.make_tables(codes=codes)
    histories = [rng.choice(n_items, size=6, replace=False).tolist() for _ in range(n_users)]
    train_rows = [("train", u, h[:j], h[j]) for u, h in enumerate(histories) for j in range(1, 4)]
    items = base["items"].take(pa.array(np.arange(n_items) % 6)).set_column(
        0, "item_id", pa.array(range(n_items), pa.int64()))
    tables = {
        "items": items, "item_codes": base["item_codes"],
        "sequences": pa.table({"user_id": pa.array(range(n_users), pa.int64()),
                               "history": pa.array(histories, pa.list_(pa.int64()))}),
    }
    tables["splits"] = split_bounds(tables["sequences"])  # whose train rows are train_rows
    a = build(tables, seed=1, templates={"negative": ["Unlikely after {history}?"]}, **BEHAVIOUR_ONLY)
    negatives = rows(a, "negative")
    assert len(negatives) == 3 * len(train_rows)
    groups: dict = {}
    for r in negatives:
        groups.setdefault((r["user_id"], r["prompt"]), []).append(r["item_id"])
        assert r["item_id"] not in histories[r["user_id"]]
    assert all(len(v) == len(set(v)) == 3 for v in groups.values())
    again = build(tables, seed=1, templates={"negative": ["Unlikely after {history}?"]}, **BEHAVIOUR_ONLY)
    assert again.equals(a)
    other = build(tables, seed=2, templates={"negative": ["Unlikely after {history}?"]}, **BEHAVIOUR_ONLY)
    assert rows(other, "negative") != negatives


def test_negative_ratio_zero_or_switch_off_removes_negatives(tables):
    for cfg in (dict(negative=False), dict(negative_ratio=0), dict(weights={"negative": 0})):
        t = build(tables, **cfg, **BEHAVIOUR_ONLY)
        assert "negative" not in t["task"].to_pylist()
        assert len(rows(t, "sequential")) == 4


def test_weights_repeat_rows_with_different_paraphrases(tables):
    t = build(tables, weights={"sequential": 2.0, "negative": 0.5}, **BEHAVIOUR_ONLY)
    seq = rows(t, "sequential")
    assert len(seq) == 8  # round(2.0 * 4)
    by_base = Counter((r["user_id"], r["label"]) for r in seq)
    assert set(by_base.values()) == {2}
    for key in by_base:
        prompts = {r["prompt"] for r in seq if (r["user_id"], r["label"]) == key}
        assert len(prompts) == 2  # the copy uses the next paraphrase
    assert len(rows(t, "negative")) == 3 * 2  # ratio 3 x round(0.5 * 4) positives
    assert len(rows(t, "sequential", "valid")) == 3  # held-out rows are never weighted


@pytest.mark.parametrize("n,weight", [(10, 0.0), (10, 0.35), (10, 1.0), (7, 2.5), (3, 1.7), (0, 2.0)])
def test_repeat_counts_total_is_round_weight_times_n(n, weight):
    counts = repeat_counts(n, weight, seed=0, task="x")
    assert counts.sum() == round(weight * n)
    assert counts.min(initial=int(weight)) >= int(weight) and counts.max(initial=0) <= int(weight) + 1


def test_sample_negatives_errors_when_the_user_has_every_item():
    with pytest.raises(NegativeSamplingError, match="user 7 has interacted with all 3 items"):
        sample_negatives(random.Random(0), 3, [0, 1, 2], 2, user_id=7)
    # With fewer candidates than k, it still returns k (with replacement) and only candidates.
    assert sample_negatives(random.Random(0), 4, [0, 1, 2], 3, user_id=7) == [3, 3, 3]
    got = sample_negatives(random.Random(0), 1000, range(10), 50, user_id=7)
    assert len(set(got)) == 50 and min(got) >= 10


def test_ray_data_path_gives_the_same_rows_as_the_local_path(tables, ray_local):
    inputs = validate_inputs(**tables)
    local = build_sft(inputs, TasksConfig(ray_data="off", batch_size=2, **BEHAVIOUR_ONLY), 0)
    on_ray = build_sft(inputs, TasksConfig(ray_data="on", batch_size=1, **BEHAVIOUR_ONLY), 0)
    assert (local.summary["ray_data"], on_ray.summary["ray_data"]) == (False, True)
    assert on_ray.table.num_rows == 4 + 12 + 3
    assert on_ray.table.equals(local.table)


def test_train_rows_a_weight_never_draws_are_never_derived(tables):
    from semconv.tasks.build import behaviour_input

    inputs = validate_inputs(**tables)
    cfg = TasksConfig(sequential_objective="history", weights={"negative": 0.5})
    batch = behaviour_input(inputs, cfg, seed=0)
    n = inputs.num_train_rows()
    drawn = np.flatnonzero(repeat_counts(n, 0.5, 0, "negative"))
    assert batch["row"].to_pylist() == drawn.tolist() and batch.num_rows == round(0.5 * n) < n
    train = inputs.rows("train").take(pa.array(drawn))  # each kept row is the protocol's row
    assert batch["target"].equals(train["target"]) and batch["history"].equals(train["history"])

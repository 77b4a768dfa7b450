"""TS-Rec options: SA-Init keywords per code token and the TS-Align token-level task."""

from __future__ import annotations

import pyarrow.compute as pc

from semconv.prompts import PREAMBLE
from semconv.tasks.build import build_sft
from semconv.tasks.config import TasksConfig
from semconv.tasks.inputs import validate_inputs
from semconv.tasks.keywords import STOPWORDS, words

TOKEN_ONLY = dict(sequential=False, negative=False, text=False, query=False)
TOKENS = {"<a_0>": [0, 1], "<a_1>": [2, 3], "<a_2>": [4, 5], "<b_0>": [0, 2, 3], "<b_1>": [1, 4],
          "<b_2>": [5], "<c_0>": [0, 1, 2, 4], "<c_1>": [3, 5]}  # token -> items carrying it


def item_words(toy, item):
    title, description, _, _ = toy.items[item]
    return set(words(title)) | set(words(description))


def test_sa_init_keywords_come_from_the_items_sharing_the_code(tables, toy):
    res = build_sft(validate_inputs(**tables), TasksConfig(sa_init=True, keywords_per_token=3, **TOKEN_ONLY), 0)
    sa = res.sa_init
    assert set(sa) == set(TOKENS)
    for token, members in TOKENS.items():
        allowed = set().union(*(item_words(toy, i) for i in members))
        assert sa[token] and len(sa[token]) <= 3
        assert set(sa[token]) <= allowed, token
        assert not set(sa[token]) & STOPWORDS
    # "lab" is in both items of <a_0> and in no other item: it is <a_0>'s best keyword.
    assert sa["<a_0>"][0] == "lab"
    assert "lab" not in sa["<a_1>"] + sa["<a_2>"]
    # One-item token: its keywords are that item's words.
    assert set(sa["<b_2>"]) <= item_words(toy, 5)
    assert res.table.num_rows == 0  # sa_init alone adds no rows


def test_words_drop_stopwords_short_words_and_numbers():
    assert words("The 1000 Count of Steel Staples, 1/2-Inch for use in labs") == [
        "count", "steel", "staples", "inch", "labs"]


def test_ts_align_rows_align_single_tokens_with_their_keywords(tables):
    cfg = TasksConfig(ts_align=True, keywords_per_token=2, **TOKEN_ONLY)
    res = build_sft(validate_inputs(**tables), cfg, 0)
    assert res.sa_init is None  # SA-Init off: no sa_init.json, but TS-Align still has keywords
    keywords = build_sft(validate_inputs(**tables), TasksConfig(sa_init=True, keywords_per_token=2, **TOKEN_ONLY), 0).sa_init
    t = res.table
    fwd = t.filter(pc.equal(t["task"], "token2keywords")).to_pylist()
    back = t.filter(pc.equal(t["task"], "keywords2token")).to_pylist()
    assert len(fwd) == len(back) == len(TOKENS)
    for r in fwd:
        token = next(tok for tok in TOKENS if tok in r["prompt"])
        assert r["label"] == ", ".join(keywords[token])
        assert r["prompt"].startswith(PREAMBLE) and r["item_id"] is None and r["user_id"] is None
    for r in back:
        assert r["label"] in TOKENS
        assert ", ".join(keywords[r["label"]]) in r["prompt"]
        level = ord(r["label"][1]) - ord("a") + 1
        assert f"level-{level}" in r["prompt"]


def test_ts_align_off_by_default_and_weights_apply(tables):
    inputs = validate_inputs(**tables)
    assert build_sft(inputs, TasksConfig(**TOKEN_ONLY), 0).table.num_rows == 0
    t = build_sft(inputs, TasksConfig(ts_align=True, weights={"keywords2token": 0.5}, **TOKEN_ONLY), 0).table
    assert pc.sum(pc.equal(t["task"], "token2keywords")).as_py() == 8
    assert pc.sum(pc.equal(t["task"], "keywords2token")).as_py() == 4

"""The loss is taken on the label (+ EOS) only; rows are packed in a resumable, disjoint plan."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from semconv.finetune.data import IGNORE_INDEX, SftDataError, encode_example, eval_sample, split_examples
from semconv.finetune.packing import EncodedRows, PackPlan, collate_packs, encode_rows, epoch_packs, pack_rows
from semconv.finetune.step import label_count
from semconv.finetune.tokenizer import add_code_tokens

from .conftest import K, LEVELS, sft_table


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    t = AutoTokenizer.from_pretrained(tiny_lm_dir)
    add_code_tokens(t, LEVELS, K)
    return t


def test_prompt_is_masked_and_eos_ends_the_label(tok):
    ids, labels = encode_example(tok, "predict the next item:", "<a_1><b_2><c_3><d_0>", max_len=64)
    n_prompt = len(tok("predict the next item:", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(labels[n_prompt:-1]) == "<a_1><b_2><c_3><d_0>"
    assert labels[-1] == tok.eos_token_id


def test_truncation_keeps_the_label_and_the_latest_prompt_tokens(tok):
    prompt = "relay " * 100 + "capacitor"
    ids, labels = encode_example(tok, prompt, "<a_1><b_2>", max_len=16)
    assert len(ids) == 16
    assert labels[-3:] == tok("<a_1><b_2>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids[:-3][-1] == tok(prompt, add_special_tokens=False)["input_ids"][-1]
    long_label = "glove " * 40
    ids, labels = encode_example(tok, "x", long_label, max_len=16)
    assert sum(l != IGNORE_INDEX for l in labels) == 8 and tok.eos_token_id not in labels


def test_only_the_codes_and_eos_of_each_row_are_scored(tok):
    examples = split_examples(sft_table(4, 0), "train")
    rows = encode_rows(tok, examples, 128)
    batch = collate_packs(rows, [[0, 1], [2, 3]], 256, tok.pad_token_id)
    assert label_count(batch) == 4 * 5  # 4 code tokens + EOS per row; prompts and padding are not
    assert rows.label_tokens() == 4 * 5



def test_rows_stay_columnar_and_encode_in_chunks_as_they_would_at_once(tok, monkeypatch):
    from semconv.finetune import packing

    table = pa.table({"task": ["history", "negative", "history", "title2item", "negative"],
                      "prompt": ["<a_1> <b_2>", "is <a_0> liked?", "<a_2>", "glove kit", "x"],
                      "label": ["<c_1><d_0>", "yes", "<c_0>", "<a_1><b_1><c_1><d_1>", "no"],
                      "split": ["train", "train", "valid", "train", "train"]})
    examples = split_examples(table, "train")
    assert isinstance(examples.prompts, pa.Array) and len(examples) == 4  # no Python strings yet
    assert examples.texts(0, 2) == (["<a_1> <b_2>", "is <a_0> liked?"], ["<c_1><d_0>", "yes"], [False, True])
    at_once = encode_rows(tok, examples, 64)
    monkeypatch.setattr(packing, "ENCODE_CHUNK", 3)  # chunks of 3 and 1
    chunked = encode_rows(tok, examples, 64)
    assert all(a.dtype == np.int32 for a in chunked.ids)
    assert [a.tolist() for a in chunked.ids] == [a.tolist() for a in at_once.ids]
    assert [a.tolist() for a in chunked.labels] == [a.tolist() for a in at_once.labels]
    assert chunked.labels[0][-1] != tok.eos_token_id and chunked.labels[1][-1] == tok.eos_token_id  # history: no EOS

def test_collate_packs_masks_each_row_to_itself_and_restarts_positions():
    rows = EncodedRows([np.array([5, 6, 7]), np.array([8, 9]), np.array([4])],
                       [np.array([-100, 6, 7]), np.array([-100, 9]), np.array([4])])
    batch = collate_packs(rows, [[0, 1], [2]], 8, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]  # width: the longest pack
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [4, -100, -100, -100, -100]]
    mask = batch["attention_mask"][0, 0].int()
    assert mask.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    # a label right after a row boundary is not predicted from the row before it
    assert label_count(batch) == 3
    with pytest.raises(SftDataError, match="pack_len=4"):
        collate_packs(rows, [[0, 1]], 4, pad_id=0)


def test_packs_keep_the_order_fill_up_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, size=300)
    packs = pack_rows(lengths, list(range(300)), 256)
    assert sorted(i for p in packs for i in p) == list(range(300))
    assert all(lengths[p].sum() <= 256 for p in packs)
    assert [p[0] for p in packs] == sorted(p[0] for p in packs)  # each pack starts with the oldest row left
    fill = lengths.sum() / (256 * len(packs))
    assert fill > 0.9, fill
    with pytest.raises(SftDataError, match="does not fit finetune.pack_len=64"):
        pack_rows(np.array([10, 65]), [0, 1], 64)


def test_pack_plan_is_disjoint_across_workers_and_reproducible():
    lengths = np.full(40, 10)  # 4 rows a pack of 40: 10 packs an epoch
    plan = PackPlan(lengths, 40, seed=3)
    assert plan.per_epoch == 10 and plan.tokens_per_epoch == 400
    step = [plan.micro_batch(0, a, 2, r, 2, per_micro=2) for a in range(2) for r in range(2)]
    flat = [i for micro in step for pack in micro for i in pack]
    assert len(flat) == len(set(flat)) == 32
    again = PackPlan(lengths, 40, seed=3)
    assert again.micro_batch(7, 1, 2, 1, 2, 2) == plan.micro_batch(7, 1, 2, 1, 2, 2)
    # epoch 2 is a different order of the same rows
    assert sorted(i for k in range(10, 20) for i in plan[k]) == list(range(40))
    assert [plan[k] for k in range(10)] != [plan[k] for k in range(10, 20)]
    assert epoch_packs(lengths, 40, 3, 1) == [plan[k] for k in range(10, 20)]


def test_eval_sample_is_fixed_and_bounded():
    examples = split_examples(sft_table(0, 30), "valid")
    assert eval_sample(len(examples), 10, seed=0) == eval_sample(len(examples), 10, seed=0)
    assert len(set(eval_sample(len(examples), 10, seed=0))) == 10
    assert len(eval_sample(len(examples), 100, seed=0)) == 30


def test_bad_sft_tables_are_named():
    with pytest.raises(SftDataError, match="label"):
        split_examples(pa.table({"prompt": ["a"], "split": ["train"]}), "train")
    with pytest.raises(SftDataError, match="row 1"):
        split_examples(pa.table({"prompt": ["a", "b"], "label": ["x", ""], "split": ["train"] * 2}), "train")
    with pytest.raises(SftDataError, match="no training rows"):
        PackPlan(np.array([], dtype=np.int64), 64, 0)

"""The loss is taken on the label (+ EOS) only; batches follow a resumable, disjoint plan."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from semconv.finetune.data import (
    IGNORE_INDEX, BatchPlan, SftDataError, collate, encode_batch, encode_example, epoch_batches,
    eval_sample, split_examples,
)
from semconv.finetune.model import build_finetune_model
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


def test_loss_ignores_prompt_tokens(tiny_lm_dir, tok):
    model, tok2, _ = build_finetune_model(tiny_lm_dir, LEVELS, K)
    examples = split_examples(sft_table(4, 0), "train")
    batch = encode_batch(tok2, examples, range(4), 128)
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    manual = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(out.loss, manual, atol=1e-5)
    # 4 code tokens + EOS per row are scored, nothing else (padding included).
    assert int(keep.sum()) == 4 * 5
    # Changing a prompt token's label entry to a real id changes the loss: the mask is what hides it.
    leaked = batch["labels"].clone()
    leaked[:, 1] = batch["input_ids"][:, 1]
    with torch.no_grad():
        assert not torch.allclose(model(**{**batch, "labels": leaked}).loss, out.loss)


def test_collate_pads_right_and_masks_padding():
    batch = collate([([5, 6, 7], [-100, 6, 7]), ([5], [5])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_epoch_covers_every_row_once_and_buckets_by_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, size=103)
    batches = epoch_batches(lengths, batch_size=8, seed=1, epoch=0, bucket=True, window=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = epoch_batches(lengths, batch_size=8, seed=1, epoch=0, bucket=False)
    assert spread < np.mean([np.ptp(lengths[b]) for b in plain]) / 2


def test_batch_plan_is_disjoint_across_workers_and_reproducible():
    lengths = np.arange(40)
    plan = BatchPlan(lengths, batch_size=4, seed=3)
    step_rows = [plan.micro_batch(0, a, 2, r, 2).tolist() for a in range(2) for r in range(2)]
    flat = [i for rows in step_rows for i in rows]
    assert len(flat) == len(set(flat)) == 16
    again = BatchPlan(lengths, batch_size=4, seed=3)
    assert [again.micro_batch(7, 1, 2, 1, 2).tolist()] == [plan.micro_batch(7, 1, 2, 1, 2).tolist()]
    # Epoch 2 is a different order of the same rows.
    assert sorted(np.concatenate([plan[k] for k in range(10, 20)]).tolist()) == list(range(40))
    assert [plan[k].tolist() for k in range(10)] != [plan[k].tolist() for k in range(10, 20)]


def test_eval_sample_is_fixed_and_bounded():
    examples = split_examples(sft_table(0, 30), "valid")
    assert eval_sample(examples, 10, seed=0) == eval_sample(examples, 10, seed=0)
    assert len(set(eval_sample(examples, 10, seed=0))) == 10
    assert len(eval_sample(examples, 100, seed=0)) == 30


def test_bad_sft_tables_are_named():
    with pytest.raises(SftDataError, match="label"):
        split_examples(pa.table({"prompt": ["a"], "split": ["train"]}), "train")
    with pytest.raises(SftDataError, match="row 1"):
        split_examples(pa.table({"prompt": ["a", "b"], "label": ["x", ""], "split": ["train"] * 2}), "train")
    with pytest.raises(SftDataError, match="no training rows"):
        BatchPlan(np.array([], dtype=np.int64), 4, 0)

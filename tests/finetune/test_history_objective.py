"""The history-level objective: one causal pass equals every per-prefix row, loss only on code
tokens, the inference prompt is the training prefix, and a planted rule is learned from it."""

from __future__ import annotations

import numpy as np
import torch

from semconv.codes import all_code_tokens, item_tokens
from semconv.decoding import Decoding
from semconv.finetune.data import IGNORE_INDEX, SftExamples, encode_example
from semconv.finetune.lm import PackedLM
from semconv.finetune.model import build_finetune_model
from semconv.finetune.packing import collate_packs, encode_rows
from semconv.inference.ranker import GenerativeRanker
from semconv.prompts import HISTORY_HEADER
from semconv.tasks.history import history_rows
from ..conftest import build_tiny_lm

from .conftest import K, LEVELS, N_ITEMS, item_codes, next_item, planted_histories, train_planted

CODES = np.array([item_codes(i) for i in range(N_ITEMS)])
HISTORY = [3, 14, 1, 6, 9]


def _history_row(history=HISTORY):
    row = history_rows([0], [history], CODES, max_len=20).to_pylist()[0]
    return row["prompt"], row["label"]


def _summed_loss(model, tok, pairs, eos):
    """The fine-tune's summed label loss (the whole vocabulary's softmax) of rows packed together."""
    rows = encode_rows(tok, SftExamples([p for p, _ in pairs], [l for _, l in pairs], [eos] * len(pairs)), 256)
    code_ids = tok.convert_tokens_to_ids(all_code_tokens(LEVELS, K))
    with torch.no_grad():
        lm = PackedLM(model, code_ids, LEVELS, "vocabulary")
        return float(lm(**collate_packs(rows, [list(range(len(rows)))], 256, tok.pad_token_id)))


def test_history_row_loss_equals_the_sum_of_its_per_prefix_rows(tiny_lm_dir, one_thread):
    torch.manual_seed(0)
    model, tok, _ = build_finetune_model(tiny_lm_dir, LEVELS, K)
    with torch.no_grad():  # non-trivial code rows, so every target has its own loss
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    whole = _summed_loss(model, tok, [_history_row()], eos=False)
    prefixes = [(HISTORY_HEADER + "".join(item_tokens(CODES[h]) for h in HISTORY[:j]), item_tokens(CODES[HISTORY[j]]))
                for j in range(1, len(HISTORY))]
    parts = sum(_summed_loss(model, tok, [pair], eos=False) for pair in prefixes)
    assert abs(whole - parts) < 1e-3 * max(1.0, abs(parts)), (whole, parts)
    # a target that could see its future would change when the future changes: it does not
    changed = _summed_loss(model, tok, [_history_row(HISTORY[:-1] + [0])], eos=False)
    last = _summed_loss(model, tok, [prefixes[-1]], eos=False)
    other_last = _summed_loss(model, tok, [(prefixes[-1][0], item_tokens(CODES[0]))], eos=False)
    assert abs((changed - other_last) - (whole - last)) < 1e-3 * max(1.0, abs(whole))


def test_loss_falls_only_on_code_tokens_after_the_first_item(tiny_lm_dir):
    from transformers import AutoTokenizer

    from semconv.finetune.tokenizer import add_code_tokens

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    code_ids = set(add_code_tokens(tok, LEVELS, K))
    prompt, label = _history_row()
    ids, labels = encode_example(tok, prompt, label, 256, eos=False)
    learned = [i for i in labels if i != IGNORE_INDEX]
    assert learned and all(i in code_ids for i in learned)
    assert len(learned) == LEVELS * (len(HISTORY) - 1)  # every item but the first, no EOS
    first = tok(HISTORY_HEADER + item_tokens(CODES[HISTORY[0]]), add_special_tokens=False)["input_ids"]
    assert labels[: len(first)] == [IGNORE_INDEX] * len(first)


def test_the_inference_prompt_of_a_history_is_its_training_prefix(tiny_lm_dir):
    model, tok, _ = build_finetune_model(tiny_lm_dir, LEVELS, K)
    ranker = GenerativeRanker(model, tok, CODES, num_beams=4, top_k=2, decoding=Decoding("history"))
    ids, labels = encode_example(tok, *_history_row(), 256, eos=False)
    for j in range(1, len(HISTORY)):
        (prompt,) = ranker.encode([HISTORY[:j]])
        assert prompt == ids[: len(prompt)]
        assert labels[len(prompt) : len(prompt) + LEVELS] == ids[len(prompt) : len(prompt) + LEVELS]


def test_the_history_objective_learns_a_planted_next_item_rule(tmp_path, one_thread):
    base = build_tiny_lm(tmp_path / "lm", hidden=96, layers=2)
    histories = planted_histories(128, seed=0)
    table = history_rows(list(range(len(histories))), histories, CODES, max_len=20)
    train = SftExamples(table["prompt"].to_pylist(), table["label"].to_pylist(), [False] * table.num_rows)
    trained = train_planted(base, train, steps=150, pack_len=64, batch_size=8)  # ~2 rows a pack
    losses = trained.history["train_loss"]
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) / 3
    ranker = GenerativeRanker(trained.model.merge_and_unload(), trained.tokenizer, CODES, num_beams=4, top_k=1, decoding=Decoding("history"))
    starts = [[i, next_item(i)] for i in range(N_ITEMS)]
    items, _ = ranker.rank(starts)
    hits = sum(int(items[i, 0]) == next_item(h[-1]) for i, h in enumerate(starts))
    assert hits / len(starts) >= 0.9, f"next-item accuracy {hits}/{len(starts)}"

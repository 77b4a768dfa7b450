"""LoRA + code-token rows on a frozen random Llama learn a planted next-item rule."""

from __future__ import annotations

import numpy as np
import torch

from semconv.finetune.data import IGNORE_INDEX, encode_example, split_examples
from semconv.inference.beam_search import constrained_beam_search
from semconv.inference.ranker import code_token_table, pad_prompts
from semconv.inference.trie import CodeTrie
from ..conftest import build_tiny_lm

from .conftest import (
    K, LEVELS, N_ITEMS, all_planted_histories, item_codes, planted_example, planted_rows, sft_table_of,
    train_planted,
)

# A short context keeps only the latest history (prompts lose their oldest tokens first), which a
# frozen two-layer random model can read within a few hundred LoRA steps; a pretrained LLM reads
# whole prompts (the demo packs rows of up to finetune.pack_len tokens).
MAX_LEN = 24


def decoded_items(model, tok, prompts: list[str]) -> list[int]:
    """The top item after each prompt (cut as training saw it), decoded as the product decodes:
    constrained beam search over the catalogue's code trie, here one beam wide (greedy per level)."""
    ids = []
    for prompt in prompts:
        row, labels = encode_example(tok, prompt, "x", MAX_LEN)
        ids.append([i for i, l in zip(row, labels) if l == IGNORE_INDEX])
    trie = CodeTrie([item_codes(i) for i in range(N_ITEMS)], code_token_table(tok, LEVELS, [K] * LEVELS))
    input_ids, mask = pad_prompts(ids, tok.pad_token_id)
    items, _ = constrained_beam_search(model, input_ids, mask, trie, num_beams=1, top_k=1)
    return items[:, 0].tolist()


def test_training_learns_the_planted_next_item_rule(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one busy thread beats two spinning ones on a shared 2-core host
    try:
        base = build_tiny_lm(tmp_path / "lm", hidden=96, layers=2)
        train = split_examples(sft_table_of(planted_rows(512, seed=0, max_history=1)), "train")
        # rows of MAX_LEN tokens: one row a pack, 16 packs a step; the whole vocabulary's softmax,
        # since greedy decoding below reads it
        trained = train_planted(base, train, steps=400, pack_len=MAX_LEN, code_softmax="vocabulary", batch_size=16)
        losses = trained.history["train_loss"]
        assert np.mean(losses[-20:]) < np.mean(losses[:5]) / 3

        merged, tok = trained.model.merge_and_unload().eval(), trained.tokenizer
        cases = all_planted_histories(max_history=1)  # every item once
        got = decoded_items(merged, tok, [planted_example(h, t)[0] for h, t in cases])
        hits = sum(item == t for item, (_, t) in zip(got, cases))
        assert hits / len(cases) >= 0.9, f"next-item accuracy {hits}/{len(cases)}"
    finally:
        torch.set_num_threads(threads)

"""LoRA + code-token rows on a frozen random Llama learn a planted next-item rule."""

from __future__ import annotations

import numpy as np
import torch

from semconv.codes import parse_item_tokens
from semconv.finetune.data import IGNORE_INDEX, encode_example, split_examples
from ..conftest import build_tiny_lm

from .conftest import (
    K, LEVELS, all_planted_histories, item_codes, planted_example, planted_rows, sft_table_of, train_planted,
)

# A short context keeps only the latest history (prompts lose their oldest tokens first), which a
# frozen two-layer random model can read within a few hundred LoRA steps; a pretrained LLM reads
# whole prompts (the demo packs rows of up to finetune.pack_len tokens).
MAX_LEN = 24


def greedy_codes(model, tok, prompt: str) -> tuple[int, ...] | None:
    """Greedy decoding of one item (L tokens) after the prompt as training saw it."""
    ids, labels = encode_example(tok, prompt, "x", MAX_LEN)
    prompt_ids = torch.tensor([[i for i, l in zip(ids, labels) if l == IGNORE_INDEX]])
    with torch.no_grad():
        out = model.generate(prompt_ids, max_new_tokens=LEVELS, do_sample=False, pad_token_id=tok.pad_token_id)
    try:
        return parse_item_tokens(tok.decode(out[0, prompt_ids.shape[1]:]))
    except ValueError:
        return None


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
        hits = sum(greedy_codes(merged, tok, planted_example(h, t)[0]) == item_codes(t) for h, t in cases)
        assert hits / len(cases) >= 0.9, f"next-item accuracy {hits}/{len(cases)}"
    finally:
        torch.set_num_threads(threads)

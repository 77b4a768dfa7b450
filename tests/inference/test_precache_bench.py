"""The synthetic-scale piece of ``bench/precache.py``: its tiny prompt tokenizer (``bench/common.py``)."""

from __future__ import annotations

import numpy as np

from bench import precache as precache_bench
from bench.common import tiny_tokenizer
from semconv.finetune.tokenizer import add_code_tokens
from semconv.prompts import sequential_prompt


def test_tiny_tokenizer_encodes_prompts_compactly_and_code_tokens_whole(tmp_path):
    tok = tiny_tokenizer()
    assert 256 < len(tok) <= 400
    prompt = sequential_prompt([[3, 1, 4, 1], [5, 9, 2, 6]])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == prompt
    assert len(ids) < len(prompt) / 3  # merges learnt from the template, not byte by byte

    code_ids = add_code_tokens(tok, 4, 16)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert sum(i in set(code_ids) for i in ids) == 8  # each code token is one id
    tok.save_pretrained(tmp_path)  # what the bench hands to the actors


def test_synthetic_users_are_deterministic_per_block():
    a = precache_bench._synthetic_users({"id": np.arange(100, 164)}, num_items=50)
    b = precache_bench._synthetic_users({"id": np.arange(100, 164)}, num_items=50)
    assert a["user_id"].tolist() == list(range(100, 164))
    assert all(np.array_equal(x, y) for x, y in zip(a["history"], b["history"]))
    assert all(5 <= len(h) <= 20 and h.max() < 50 for h in a["history"])

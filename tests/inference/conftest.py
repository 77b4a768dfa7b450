"""Fixtures for the inference tests: a tiny LM with code tokens, item codes, brute-force scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semconv.inference.loading import load_with_random_code_tokens

LEVELS, CODES = 3, 4  # 64 possible code tuples: small enough to score every item by brute force


def random_item_codes(num_items: int, levels: int = LEVELS, codes: int = CODES, seed: int = 0) -> np.ndarray:
    """``num_items`` distinct code tuples drawn from the full ``codes ** levels`` grid."""
    grid = np.stack(np.meshgrid(*[np.arange(codes)] * levels, indexing="ij"), -1).reshape(-1, levels)
    rng = np.random.default_rng(seed)
    return grid[rng.choice(len(grid), size=num_items, replace=False)]


def random_histories(num_users: int, num_items: int, seed: int = 0, lo: int = 2, hi: int = 9) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_items, size=rng.integers(lo, hi)).tolist() for _ in range(num_users)]


@torch.no_grad()
def brute_force_scores(ranker, history: list[int], level_softmax: bool = False) -> np.ndarray:
    """log p(item's code tokens | prompt) for every item, by teacher forcing each full sequence;
    with ``level_softmax`` each level's softmax runs over that level's code tokens only."""
    prompt = ranker.encode([history])[0]
    levels = ranker.item_codes.shape[1]
    code_ids = np.stack([ranker.trie.token_ids[l].numpy()[ranker.item_codes[:, l]] for l in range(levels)], 1)
    seqs = torch.as_tensor(np.concatenate([np.tile(prompt, (len(code_ids), 1)), code_ids], 1))
    logits = ranker.model(seqs).logits.float()
    t = len(prompt)
    rows = torch.arange(len(seqs))
    if not level_softmax:
        logp = logits.log_softmax(-1)
        return sum(logp[rows, t - 1 + l, seqs[:, t + l]] for l in range(levels)).numpy()
    total = 0
    for l in range(levels):
        level_logp = logits[:, t - 1 + l, ranker.trie.token_ids[l]].log_softmax(-1)
        total = total + level_logp[rows, torch.as_tensor(ranker.item_codes[:, l])]
    return total.numpy()


@pytest.fixture(scope="session")
def code_lm(tiny_lm_dir):
    """(model fp32, tokenizer) of the tiny LM with LEVELS x CODES random code-token rows."""
    return load_with_random_code_tokens(str(tiny_lm_dir), LEVELS, CODES, torch.float32, seed=0)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """See ``tests/conftest.py::one_thread``."""

"""Histories in, top-K items out: prompts, length-sorted left-padded batches, beam search.

:class:`GenerativeRanker` holds one loaded model with everything decoding needs (tokenizer, code
trie, the shared-prefix KV), so a Ray actor, a benchmark or a server builds it once and calls
:meth:`GenerativeRanker.rank` per batch. Prompts are the sequential-alignment prompts of
``semconv.prompts`` in the format the model was trained on (``decoding.prompt_format``: ``history``
or ``instruction``), tokenized exactly as in fine-tuning (no special tokens added), and code
scores normalised as in training (``decoding.code_softmax``, see :mod:`semconv.decoding`). The
precache actors, a refresh and online generation build it from one
:class:`~semconv.inference.run_ranker.RankerSpec`, so they answer a history alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from semconv.codes import code_token
from semconv.decoding import Decoding
from semconv.inference.beam_search import SharedPrefix, constrained_beam_search, encode_prefix
from semconv.inference.trie import CodeTrie
from semconv.prompts import inference_prompt, shared_prefix


def code_token_table(tokenizer, levels: int, codes_per_level: Sequence[int]) -> list[list[int]]:
    """``[level][code] -> vocabulary id`` via ``tokenizer.convert_tokens_to_ids``; raises on a
    code token the tokenizer does not know (it was not fine-tuned with these codes)."""
    table = []
    for level in range(levels):
        tokens = [code_token(level, c) for c in range(codes_per_level[level])]
        ids = tokenizer.convert_tokens_to_ids(tokens)
        unk = tokenizer.unk_token_id
        missing = [t for t, i in zip(tokens, ids) if i is None or (unk is not None and i == unk)]
        if missing:
            raise ValueError(
                f"tokenizer has no id for code token {missing[0]!r} ({len(missing)} missing): load the "
                "tokenizer saved with the fine-tuned model/"
            )
        table.append(list(ids))
    return table


def pad_prompts(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists of prompts as ``(input_ids, attention_mask)``, left-padded with ``pad_id`` so
    their last tokens line up (where decoding continues)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


class GenerativeRanker:
    """A loaded recommender LLM + code trie that ranks items for user histories."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        item_codes: np.ndarray,
        num_beams: int = 20,
        top_k: int = 10,
        batch_size: int = 16,
        share_prefix: bool = True,
        item_ids: np.ndarray | None = None,
        decoding: Decoding | None = None,
        max_len: int | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.item_codes = np.asarray(item_codes, dtype=np.int64)
        self.item_ids = np.arange(len(self.item_codes)) if item_ids is None else np.asarray(item_ids)
        self.num_beams, self.top_k, self.batch_size = num_beams, top_k, batch_size
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
        self.max_len = max_len  # prompts keep a history's last max_len items (prepare.max_len)
        levels = self.item_codes.shape[1]
        codes_per_level = [int(self.item_codes[:, l].max()) + 1 for l in range(levels)]
        self.trie = CodeTrie(
            self.item_codes, code_token_table(tokenizer, levels, codes_per_level), item_ids=self.item_ids
        ).to(model.device)
        self._codes_of = dict(zip(self.item_ids.tolist(), range(len(self.item_ids))))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.decoding = decoding or Decoding()
        prefix_text = shared_prefix(self.decoding.prompt_format)
        self.prefix: SharedPrefix | None = None
        if share_prefix:
            ids = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
            self.prefix = encode_prefix(model, ids)

    def prompt(self, history: Sequence[int]) -> str:
        """The inference prompt of a history of item ids (oldest first): its last ``max_len``
        items, as training and the splits cut them."""
        if self.max_len is not None:
            history = list(history)[-self.max_len :]
        try:
            codes = [self.item_codes[self._codes_of[int(i)]] for i in history]
        except KeyError as err:
            raise ValueError(f"history item {err.args[0]} has no codes in item_codes") from None
        return inference_prompt(self.decoding.prompt_format, codes)

    def encode(self, histories: Sequence[Sequence[int]]) -> list[list[int]]:
        prompts = [self.prompt(h) for h in histories]
        return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]

    def rank(
        self,
        histories: Sequence[Sequence[int]],
        exclude_history: bool = False,
        *,
        num_beams: int | None = None,
        top_k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-K items (U, K) int64 and scores (U, K) float32 for each history, best first.

        The one decoding entry point of the precache, online generation and refresh, so they
        answer the same history alike. ``exclude_history`` drops every item of the history given
        (all of it, also items older than the prompt's ``max_len``) inside the search, at every
        trie level, so K items come back whenever K are left (see
        :mod:`semconv.inference.beam_search`). ``num_beams`` / ``top_k``
        override the ranker's for this call; the first k of a top-K are the top-k. Users are
        decoded in batches of ``batch_size`` sorted by prompt length (less padding); results
        come back in input order; slots past the reachable items hold ``-1`` / ``-inf``.
        """
        num_beams = self.num_beams if num_beams is None else num_beams
        top_k = self.top_k if top_k is None else top_k
        ids = self.encode(histories)
        order = np.argsort([len(x) for x in ids], kind="stable")
        items = np.full((len(ids), top_k), -1, dtype=np.int64)
        scores = np.full((len(ids), top_k), -np.inf, dtype=np.float32)
        for start in range(0, len(ids), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [ids[i] for i in idx]
            prefix = self.prefix
            if prefix is not None:
                p = prefix.ids.tolist()
                if all(s[: len(p)] == p for s in batch):
                    batch = [s[len(p) :] for s in batch]
                else:  # this tokenizer merges across the preamble's end: no prefix reuse here
                    prefix = None
            input_ids, mask = pad_prompts(batch, self.pad_id)
            exclude = [histories[i] for i in idx] if exclude_history else None
            it, sc = constrained_beam_search(
                self.model, input_ids, mask, self.trie, num_beams, top_k, exclude, prefix,
                level_softmax=self.decoding.code_softmax == "level",
            )
            items[idx], scores[idx] = it.numpy(), sc.numpy()
        return items, scores
